"""Model staging: what the offline (sandboxed) steps load is what the staging step put in
the Hugging Face cache, by the same Hub name, with HF_HUB_OFFLINE=1 and no network.

The cache is written in huggingface_hub's documented layout
(https://huggingface.co/docs/huggingface_hub/guides/manage-cache: hub/models--{org}--{name}/
snapshots/{commit}/…, refs/main holding the commit), which is what snapshot_download leaves;
huggingface_hub and transformers themselves then read it. Each check runs in a subprocess
because huggingface_hub reads HF_HOME and HF_HUB_OFFLINE when it is imported."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
REPO = "p3-test/tiny-policy"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_cache(home: Path, model_dir: str) -> Path:
    """An HF_HOME whose hub cache holds ``model_dir`` as ``REPO`` at ``COMMIT``."""
    repo = home / "hub" / ("models--" + REPO.replace("/", "--"))
    shutil.copytree(model_dir, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return repo / "snapshots" / COMMIT


def run_offline(home: Path, code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src"),
           "P3_PROGRESS": "0"}
    env.pop("HF_HUB_CACHE", None)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_staged_model_loads_offline_by_its_hub_name(tmp_path, tiny_model_dir):
    snapshot = hub_cache(tmp_path / "hf", tiny_model_dir)
    out = run_offline(tmp_path / "hf", (
        "from p3.staging import stage; from p3.backends import load_causal_lm;"
        f"print(stage({REPO!r})); model, tok = load_causal_lm({REPO!r}, device='cpu');"
        "print(type(model).__name__)"))
    assert out.returncode == 0, out.stderr
    staged, model_class = out.stdout.split()
    assert Path(staged).resolve() == snapshot.resolve() and model_class.endswith("ForCausalLM")


def test_offline_without_the_model_fails_and_names_it(tmp_path):
    (tmp_path / "hf").mkdir()
    out = run_offline(tmp_path / "hf", (
        "from p3.backends import load_causal_lm\nfrom p3.staging import stage\n"
        f"try:\n    load_causal_lm({REPO!r}, device='cpu')\n"
        "except FileNotFoundError as e:\n    print('load:', e)\n"
        f"try:\n    stage({REPO!r})\n"
        "except Exception as e:\n    print('stage:', type(e).__name__)\n"))
    assert out.returncode == 0, out.stderr
    load, _, staged = out.stdout.strip().rpartition("\n")
    assert load.startswith("load:") and REPO in load
    assert staged == "stage: LocalEntryNotFoundError"  # offline, not in the cache: no silent success


def test_only_hub_names_are_staged(tmp_path):
    from p3.staging import is_hub_name, stage

    assert is_hub_name("Qwen/Qwen2.5-Math-1.5B") and is_hub_name("gpt2")
    for ref in ("s3://models/qwen", str(tmp_path), "./model", "a/b/c", ""):
        assert not is_hub_name(ref), ref
    # a folder or URI comes back untouched, and nothing is fetched for it
    assert stage(str(tmp_path)) == str(tmp_path) and stage("s3://models/qwen") == "s3://models/qwen"
