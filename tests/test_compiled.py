"""The compiled pipelines committed under pipelines/compiled/ (for import from the KFP UI) are
what the command line compiles today, byte for byte. When this fails the DAG or a default
changed: `make compile` rewrites them."""

from __future__ import annotations

from pathlib import Path

import pytest

from p3.kfp import entry

ROOT = Path(__file__).resolve().parents[1]
COMPILED = ROOT / "pipelines" / "compiled"


@pytest.mark.parametrize("task,argv", [
    ("math", []),
    ("apps", []),
])
def test_committed_yaml_is_what_compile_writes(task, argv, tmp_path, capsys):
    name = f"p3_{task}.yaml"
    out = tmp_path / name
    assert entry.main(task, ["--compile", str(out), *argv]) == 0
    committed = COMPILED / name
    assert committed.read_bytes() == out.read_bytes(), f"{committed} is stale: run `make compile`"
