"""The GPU paths in one go, one line per check (run by bench/gpu_smoke.sh; see there).

Checks, in order (each later one uses the model the first one trained):
  qlora       QLoRA (4-bit NF4 base) training of a small Llama built here (no download)
  likelihood  likelihood scoring with the hf backend
  rollout     rollout scoring (sampling + grading) with the hf backend
  vllm        both scoring modes with the vllm backend (when vllm is installed)
  dpp         DPP selection at N=1M, k=100k, d=384 on the GPU
  pipeline    the tiny pipeline, two epochs, through kfp.local

``--cpu`` runs the same checks on the CPU at toy sizes (how the script itself is tested);
``--only a,b`` runs some of them. Each line: ``PASS|FAIL|SKIP <check> <figures> (<s>s)``; the
exit status is 1 when a check failed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKS = ["qlora", "likelihood", "rollout", "vllm", "dpp", "pipeline"]
# per-check time limits (s) on a GPU; the whole script must stay under 10 minutes
LIMITS = {"qlora": 120, "likelihood": 60, "rollout": 90, "vllm": 180, "dpp": 120, "pipeline": 300}


class Skip(Exception):
    """A check that does not apply here (its reason is printed)."""


def _alarm(signum, frame):
    raise TimeoutError("time limit")


def check_qlora(ctx) -> str:
    from p3 import minimath, storage
    from p3.selection import SelectConfig, select
    from p3.tiny import TinyConfig, build_tiny_model
    from p3.train import TrainConfig, train

    problems = os.path.join(ctx.tmp, "problems.parquet")
    storage.write_table(minimath.synth_problems(ctx.n_problems, "1-5", seed=0, split="train"), problems)
    base = os.path.join(ctx.tmp, "base")
    size = dict(hidden=64, layers=2, heads=4) if ctx.cpu else dict(hidden=512, layers=8, heads=8)
    build_tiny_model(TinyConfig(out=base, train_on=problems, steps=0, **size))
    selection = os.path.join(ctx.tmp, "selection.parquet")
    select(SelectConfig(problems=problems, out=selection, strategy="random", budget=64))
    ctx.model = os.path.join(ctx.tmp, "qlora")
    train(TrainConfig(problems=problems, selection=selection, model=base, out=ctx.model, qlora="on",
                      lora="16,32,0.0", lr=3e-3, batch_size=8, max_steps=40, device=ctx.device))
    ctx.problems = problems
    losses = [h["loss"] for h in json.load(open(os.path.join(ctx.model, "trainer_state.json")))["log_history"]
              if "loss" in h]
    if not losses[-1] < losses[0]:
        raise AssertionError(f"loss did not fall: {losses}")
    return f"steps=40 loss {losses[0]:.3f} -> {losses[-1]:.3f} merged={os.path.exists(ctx.model + '/config.json')}"


def _score(ctx, mode: str, backend: str, n: int = 8, **generation) -> str:
    from p3 import contracts
    from p3.generation import GenerationConfig
    from p3.score import ScoreConfig, score

    if ctx.model is None:
        raise Skip("needs the qlora check's model")
    out = os.path.join(ctx.tmp, f"{mode}-{backend}.parquet")
    t = time.perf_counter()
    score(ScoreConfig(problems=ctx.problems, model=ctx.model, out=out, mode=mode, n=n,
                      batch_size=64 if not ctx.cpu else 8,
                      generation=GenerationConfig(backend=backend, device=ctx.device, **generation)))
    took = time.perf_counter() - t
    table = contracts.read(out, contracts.DIFFICULTY)
    values = table.column("difficulty").to_pylist()
    contracts.check_unit_interval(values, out, "difficulty")
    return f"{backend} {mode}: {table.num_rows} problems, {table.num_rows / took:.1f} problems/s"


def check_likelihood(ctx) -> str:
    return _score(ctx, "likelihood", "hf")


def check_rollout(ctx) -> str:
    return _score(ctx, "rollout", "hf", n=4, max_new_tokens=32)


def check_vllm(ctx) -> str:
    import importlib.util

    if ctx.cpu or importlib.util.find_spec("vllm") is None:
        raise Skip("vllm not installed (pip install 'p3-kubeflow[gpu]')" if not ctx.cpu else "GPU only")
    # vLLM refuses a context longer than the model's positions (the small Llama has 512)
    extra = dict(gpu_memory_utilization=0.3, max_len=512)
    return "; ".join([_score(ctx, "likelihood", "vllm", **extra),
                      _score(ctx, "rollout", "vllm", n=4, max_new_tokens=32, **extra)])


def check_dpp(ctx) -> str:
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    from dpp_scale import make_data  # the CPU benchmark's data, so the times compare

    from p3.dpp import dpp_select

    n, k = (5_000, 500) if ctx.cpu else (1_000_000, 100_000)
    X, q = make_data(n, 384)
    t = time.perf_counter()
    r = dpp_select(X, q, k, device=ctx.device)
    took = time.perf_counter() - t
    if len(r.order) != k or len(set(r.order.tolist())) != k:
        raise AssertionError(f"{len(r.order)} picks, {len(set(r.order.tolist()))} distinct, wanted {k}")
    return f"N={n} k={k} d=384 device={r.device} rounds={r.n_rounds} {took:.1f}s"


def check_pipeline(ctx) -> str:
    runs = os.path.join(ctx.tmp, "runs")
    cmd = [sys.executable, os.path.join(ROOT, "pipelines", "p3_math.py"), "--local", "--runs-dir", runs,
           "--name", "smoke", "--epochs", "2", "--set", "synth_n=40", "--set", "test_synth_n=8",
           "--set", "tiny_steps=4", "--set", "budget=8", "--set", "max_steps=2", "--set", "batch_size=4",
           "--set", "max_new_tokens=16", "--set", "embedder=policy", "--set", "qlora=on"]
    # its own process group, so that a time-out also ends the steps kfp.local started
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=ctx.limit("pipeline") - 5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    if proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}: {out.strip().splitlines()[-1:]}")
    summary = json.load(open(os.path.join(runs, "smoke", "run.json")))
    if summary.get("status") != "succeeded" or summary.get("ran_epochs") != [0, 1]:
        raise AssertionError(f"run.json: {summary}")
    return f"2 epochs, status={summary['status']}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", action="store_true", help="run on the CPU at toy sizes (tests the script)")
    ap.add_argument("--only", default=",".join(CHECKS), help="comma list of checks")
    args = ap.parse_args(argv)
    only = args.only.split(",")
    unknown = sorted(set(only) - set(CHECKS))
    if unknown:
        ap.error(f"unknown checks {unknown}; known: {CHECKS}")
    import torch

    if not args.cpu and not torch.cuda.is_available():
        print("FAIL gpu no CUDA device visible (use --cpu to test the script on a CPU)")
        return 1
    ctx = argparse.Namespace(cpu=args.cpu, device="cpu" if args.cpu else "cuda", model=None, problems=None,
                             n_problems=64 if args.cpu else 512,
                             limit=lambda check: LIMITS[check] * (3 if args.cpu else 1))  # a CPU is slower
    if not args.cpu:
        print(f"INFO gpu {torch.cuda.get_device_name(0)} torch={torch.__version__}", flush=True)
    failed = False
    signal.signal(signal.SIGALRM, _alarm)
    with tempfile.TemporaryDirectory(prefix="p3-gpu-smoke-") as ctx.tmp:
        for name in CHECKS:
            if name not in only:
                continue
            t = time.perf_counter()
            signal.alarm(ctx.limit(name))
            try:
                with contextlib.redirect_stdout(io.StringIO()):  # the Trainer prints its loss dicts
                    figures = globals()[f"check_{name}"](ctx)
                line = f"PASS {name} {figures}"
            except Skip as why:
                line = f"SKIP {name} {why}"
            except Exception as exc:  # a failed check is reported and the next one runs
                failed = True
                line = f"FAIL {name} {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            finally:
                signal.alarm(0)
            print(f"{line} ({time.perf_counter() - t:.0f}s)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
