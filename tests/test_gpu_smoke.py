"""bench/gpu_smoke.sh, the script a GPU machine runs as-is: its CPU mode runs the same check
functions at toy sizes here (all but the two-epoch pipeline, which tests/test_pipelines.py runs
locally), so the GPU run is not the first run of that code."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "gpu_smoke.sh")


def _run(*args):
    env = {**os.environ, "PY": sys.executable}
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, env=env, timeout=600)


def test_the_script_parses_and_refuses_without_a_gpu():
    assert subprocess.run(["bash", "-n", SCRIPT]).returncode == 0
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: run bench/gpu_smoke.sh itself")  # never on the CPU CI
    import glob
    import tempfile

    logs = os.path.join(tempfile.gettempdir(), "p3-gpu-smoke.*")
    before = set(glob.glob(logs))
    proc = _run("--only", "dpp")
    assert proc.returncode == 1 and proc.stdout.strip() == "FAIL gpu no CUDA device visible (use --cpu to test the script on a CPU)"
    assert _run("--cpu", "--only", "nope").returncode == 2
    assert set(glob.glob(logs)) <= before  # its temp log goes with it, failed or not


@pytest.mark.slow
def test_the_checks_run_on_a_cpu_one_line_each():
    proc = _run("--cpu", "--only", "qlora,likelihood,rollout,vllm,dpp")
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert [line.split()[:2] for line in lines] == [["PASS", "qlora"], ["PASS", "likelihood"], ["PASS", "rollout"],
                                                    ["SKIP", "vllm"], ["PASS", "dpp"]], lines
    assert "loss" in lines[0] and "problems/s" in lines[1] and "device=cpu" in lines[4]
