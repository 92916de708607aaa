"""The compiled pipelines committed under pipelines/compiled/ (for import from the KFP UI) are
what the command line compiles today, byte for byte. When this fails the DAG or a default
changed: `make compile` rewrites them."""

from __future__ import annotations

from pathlib import Path

import pytest

from p3.kfp import entry

ROOT = Path(__file__).resolve().parents[1]
COMPILED = ROOT / "pipelines" / "compiled"


@pytest.mark.parametrize("task,argv,name", [
    ("math", [], "p3_math.yaml"),
    ("apps", [], "p3_apps.yaml"),
    ("math", ["--epoch-per-run"], "p3_math_per_epoch.yaml"),
    ("apps", ["--epoch-per-run"], "p3_apps_per_epoch.yaml"),
])
def test_committed_yaml_is_what_compile_writes(task, argv, name, tmp_path, capsys):
    out = tmp_path / name
    assert entry.main(task, ["--compile", str(out), *argv]) == 0
    committed = COMPILED / name
    assert committed.read_bytes() == out.read_bytes(), f"{committed} is stale: run `make compile`"
