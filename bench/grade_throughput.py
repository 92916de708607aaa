"""Sandbox throughput: trivial program runs per second, isolation on vs off, side by side.

Each arm runs the same trivial stdin/stdout program (``print(int(input()) + 1)``)
``--runs`` times on ``--workers`` threads; arms are interleaved over ``--rounds`` rounds
and the median rate is reported, so a noisy neighbour hits every arm alike.

  plain     subprocess.run(python prog.py): no limits, no isolation (the baseline)
  none      p3 sandbox, rlimits + uid switch only
  unshare   p3 sandbox, + user/network namespaces made by the runner
  bwrap     p3 sandbox, full isolation (user, net, pid, mount, ipc, uts namespaces)

The last line is ``runs_per_s=…`` of the best isolation level available (bwrap when
present), which docs/design.md §5 wants ≥ 25 on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from p3.sandbox import LEVELS, Job, Limits, Sandbox, sandbox_python

PROGRAM = "print(int(input()) + 1)\n"


def plain_arm(python: str, workers: int):
    tmp = tempfile.mkdtemp(prefix="p3-bench-")
    prog = os.path.join(tmp, "prog.py")
    with open(prog, "w") as fh:
        fh.write(PROGRAM)

    def one(i: int) -> bool:
        out = subprocess.run([python, prog], input=f"{i}\n", capture_output=True, text=True, timeout=10).stdout
        return out.strip() == str(i + 1)

    def run(n: int) -> int:
        with ThreadPoolExecutor(workers) as ex:
            return sum(ex.map(one, range(n)))

    return run


WALLS: dict[str, list[float]] = {}


def sandbox_arm(sb: Sandbox):
    def run(n: int) -> int:
        res = sb.run_many([Job(PROGRAM, stdin=f"{i}\n") for i in range(n)])
        WALLS.setdefault(sb.level, []).extend(r.wall for r in res)
        return sum(r.status == "ok" and r.stdout.strip() == str(i + 1) for i, r in enumerate(res))

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200, help="program runs per arm and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    python = sandbox_python()
    arms = {"plain": plain_arm(python, args.workers)}
    for level in LEVELS:
        try:
            arms[level] = sandbox_arm(Sandbox(workers=args.workers, limits=Limits(timeout=10), isolation=level,
                                                     allow_weak=True))
        except RuntimeError as exc:
            print(f"# {level}: unavailable ({exc})", file=sys.stderr)
    rates: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(args.rounds):
        for name, run in arms.items():
            start = time.perf_counter()
            good = run(args.runs)
            took = time.perf_counter() - start
            if good != args.runs:
                raise SystemExit(f"{name}: only {good}/{args.runs} runs gave the right answer")
            rates[name].append(args.runs / took)
    print(f"{'arm':<8} {'median runs/s':>14}  rounds  (workers={args.workers}, cpus={os.cpu_count()}, runs={args.runs})")
    for name, r in rates.items():
        print(f"{name:<8} {statistics.median(r):>14.1f}  " + " ".join(f"{x:.1f}" for x in r))
    walls = {k: statistics.median(v) * 1000 for k, v in WALLS.items()}
    print("median wall per run (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in walls.items()))
    if "bwrap" in walls and "none" in walls:
        print(f"namespace cost per run (bwrap - none): {walls['bwrap'] - walls['none']:+.1f} ms")
    best = next(level for level in LEVELS if level in rates)
    base = statistics.median(rates["plain"])
    ours = statistics.median(rates[best])
    print(f"isolation={best} ratio_vs_plain={ours / base:.2f}")
    print(f"runs_per_s={ours:.1f}")


if __name__ == "__main__":
    main()
