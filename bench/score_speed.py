"""Likelihood difficulty: one batched forward per problem (ours) vs one forward per step
(the paper code's form), side by side in one run on the same model and problems.

    python bench/score_speed.py [--n 128] [--device cpu] [--model DIR] [--levels 1-5]
    python bench/score_speed.py --problems math.parquet   # real solutions (`p3 data prepare`)

Prints the medians over --repeats, the largest difference between the two (must be
< 1e-4), and last the ratio: ``likelihood speedup=X.Xx``. ``--no-reference`` only
measures our path's throughput (e.g. to compare --device cuda with --device cpu).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("P3_PROGRESS", "0")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=128, help="problems scored")
    ap.add_argument("--levels", default="1-5", help="mini-MATH levels")
    ap.add_argument("--problems", default=None,
                    help="a problems table to score instead of mini-MATH (its first --n rows; real MATH "
                         "solutions have more lines per problem than mini-MATH's)")
    ap.add_argument("--model", default=None, help="model dir (default: a fresh tiny model, --hidden/--layers)")
    ap.add_argument("--hidden", type=int, default=128, help="hidden size of the fresh model")
    ap.add_argument("--layers", type=int, default=2, help="layers of the fresh model")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="torch CPU threads for both methods (default: every core; `p3 score` runs a small "
                         "model single-threaded unless P3_TORCH_THREADS says otherwise, which suits a busy machine)")
    ap.add_argument("--no-reference", action="store_true", help="skip the per-step method (throughput only)")
    args = ap.parse_args(argv)
    os.environ["P3_TORCH_THREADS"] = str(args.threads)  # read by p3.backends.opened, for both methods

    import numpy as np

    from p3 import minimath, problems, storage
    from p3.backends import opened
    from p3.score import likelihoods, per_step_likelihood
    from p3.tiny import TinyConfig, build_tiny_model

    if args.problems:
        table = problems.load_problems(args.problems).slice(0, args.n)
    else:
        table = minimath.synth_problems(args.n, args.levels, seed=0, split="train")
    rows = table.to_pylist()
    # Both methods must see every step: the batched path truncates at max_len, the per-step one never does.
    longest = max(len(r["prompt"]) + len(r["solution"]) for r in rows) + 8
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            storage.write_table(table, f"{tmp}/p.parquet")
            model = f"{tmp}/tiny"
            heads = max(1, args.hidden // 64)
            # Positions for the longest scored text (real MATH solutions run to thousands of characters).
            build_tiny_model(TinyConfig(out=model, train_on=f"{tmp}/p.parquet", steps=0, hidden=args.hidden,
                                        layers=args.layers, heads=heads, max_len=max(512, longest)))
        with opened("hf", model, device=args.device, batch_size=args.batch_size,
                    max_len=max(2048, longest)) as backend:
            steps = sum(len([ln for ln in r["solution"].split("\n") if ln.strip()]) for r in rows)
            likelihoods(backend, rows[: args.batch_size], "plain")  # warm-up (allocator, kernels)
            print(f"problems={len(rows)} steps={steps} device={args.device} batch={args.batch_size} "
                  f"threads={_threads()} repeats={args.repeats}")
            # The two methods alternate within each repeat, so a busy machine slows both alike.
            fast_t, ref_t, fast, ref = [], [], None, None
            for _ in range(args.repeats):
                t = time.perf_counter()
                fast = likelihoods(backend, rows, "plain")
                _sync(args.device)
                fast_t.append(time.perf_counter() - t)
                if args.no_reference:
                    continue
                t = time.perf_counter()
                ref = [per_step_likelihood(backend.model, backend.tokenizer, r) for r in rows]
                _sync(args.device)
                ref_t.append(time.perf_counter() - t)
            fast_med = statistics.median(fast_t)
            print(f"batched (1 forward/problem): median {fast_med:.3f}s = {len(rows) / fast_med:.1f} problems/s")
            if args.no_reference:
                print(f"throughput device={args.device} problems/s={len(rows) / fast_med:.1f}")
                return 0
            ref_med = statistics.median(ref_t)
            diff = float(np.max(np.abs(np.array(fast) - np.array(ref))))
            print(f"per-step (1 forward/step):   median {ref_med:.3f}s = {len(rows) / ref_med:.1f} problems/s")
            print(f"max |batched - per-step| = {diff:.2e} ({'OK' if diff < 1e-4 else 'MISMATCH'} at 1e-4)")
            print(f"likelihood speedup={ref_med / fast_med:.1f}x")
            return 0 if diff < 1e-4 else 1


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    sys.exit(main())
