"""One epoch per pipeline run vs `make run`: is a per-epoch run at most 1.5x one epoch of `make run`?

1. `make run`'s command (pipelines/p3_math.py --local: tiny preset, 3 epochs, mini-MATH) from a
   fresh run folder; one epoch's time = the sum of its tasks' times (``epoch e: …``), read from
   kfp.local's log. kfp.local runs one task at a time, in an order that interleaves epochs (an
   epoch's evaluate and report may run after the next epoch's training), so a task's time is
   from the previous task's end to its own, and the span between two epochs' reports is not
   an epoch.
2. Three runs of the per-epoch pipeline (``pipelines/p3_math.py --local --epoch-per-run``: the same
   command with one epoch per run, state in the run folder), each a fresh process as a scheduler
   would start it; the time is the process's
   whole wall time (interpreter, compile, cache lookups, load and store of the state included).
   The first run also prepares the data and bootstraps the tiny model, which `make run` does once
   before its epochs too; it is reported but the ratio is over runs 2 and 3.
3. The final models of both are compared (max abs difference of the weights).

    .venv/bin/python bench/per_epoch_time.py          # ~6 min on 2 idle cores

The last line is ``per-epoch run / make-run epoch: ratio=X.XXx (runs 2-3, max)``.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "P3_PROGRESS": "0", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
COMMAND = [sys.executable, os.path.join(ROOT, "pipelines", "p3_math.py"), "--local"]
TRAINING_RUN = "p3-math"  # the per-epoch pipeline's default training run for the math task
STAMP = re.compile(r"^(\d\d:\d\d:\d\d\.\d+) - INFO - (?:Running pipeline|'([^']+)' finished with status SUCCESS)")
EPOCH_TASK = re.compile(r"epoch (\d+): ")


def epoch_seconds(log: str, epochs: int = 3) -> list[float]:
    """Seconds per epoch: the sum of the epoch's task times, each from the previous task's end
    (the pipeline's start for the first) to its own, from kfp.local's log lines. Every epoch
    must have the same number of tasks, or the log was not read right (its format changed)."""
    per_epoch, tasks = [0.0] * epochs, [0] * epochs
    last = None
    for line in log.splitlines():
        m = STAMP.match(line)
        if not m:
            continue
        t = datetime.strptime(m.group(1), "%H:%M:%S.%f")
        if last is not None and m.group(2):
            e = EPOCH_TASK.match(m.group(2))
            if e:
                per_epoch[int(e.group(1))] += (t - last).total_seconds() % 86400
                tasks[int(e.group(1))] += 1
        last = t
    if not tasks[0] or len(set(tasks)) != 1:
        raise SystemExit(f"kfp.local's log gave {tasks} tasks for epochs 0..{epochs - 1}: not read right")
    return per_epoch


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="p3-bench-") as tmp:
        t = time.perf_counter()
        out = subprocess.run([*COMMAND, "--runs-dir", tmp, "--name", "unrolled"], capture_output=True, text=True, env=ENV)
        make_run_s = time.perf_counter() - t
        if out.returncode != 0:
            sys.exit(out.stdout[-3000:])
        spans = epoch_seconds(out.stdout)
        runs = []
        for _ in range(3):
            t = time.perf_counter()
            pe = subprocess.run([*COMMAND, "--epoch-per-run", "--runs-dir", tmp, "--name", "per-epoch"],
                                capture_output=True, text=True, env=ENV)
            runs.append(time.perf_counter() - t)
            if pe.returncode != 0:
                sys.exit(pe.stderr[-3000:])
        from safetensors.torch import load_file

        from p3.kfp import epoch_state

        state = epoch_state.read(os.path.join(tmp, "per-epoch", "state"), TRAINING_RUN, 3)
        a = load_file(os.path.join(tmp, "unrolled", "model", "model.safetensors"))
        b = load_file(os.path.join(state.policy, "model.safetensors"))
        diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    epoch = statistics.median(spans)
    result = {"make_run_s": round(make_run_s, 1), "make_run_epoch_s": [round(s, 1) for s in spans],
              "per_epoch_run_s": [round(s, 1) for s in runs], "final_model_max_abs_diff": diff,
              "load": os.getloadavg()}
    os.makedirs(os.path.join(ROOT, "bench", "out"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "out", "per_epoch_time.json"), "w") as fh:
        json.dump(result, fh, indent=1)
    print(json.dumps(result))
    print(f"first per-epoch run (prepares and bootstraps too): {runs[0] / epoch:.2f}x")
    print(f"per-epoch run / make-run epoch: ratio={max(runs[1:]) / epoch:.2f}x (runs 2-3, max)")


if __name__ == "__main__":
    main()
