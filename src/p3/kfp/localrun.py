"""Run a P3 pipeline on this machine with kfp's own local runner.

``kfp.local`` with the SubprocessRunner runs every lightweight component as a
subprocess of the current Python environment (``use_venv=False``: the project and its
dependencies are already installed), with the same compiled pipeline spec a cluster
gets: same components, same DAG, ``dsl.ParallelFor`` shards and ``dsl.Collected``
merges included (kfp >= 2.14 runs control flow locally).

Resume: kfp 2.17's local runner has a file cache (``enable_caching``) keyed by
component, command, inputs and env. A local build turns caching on for *every* step
(on a cluster training and sampling are never cached), and the cache lives in the
run folder, so running the same command again after a failure or a stop re-runs only
what had not finished; the runner reports which epochs came entirely from the cache.
``--fresh`` starts over.

Layout of ``runs/<name>/``::

    pipeline_root/   every task's artifacts (kfp.local's layout)
    cache/           kfp.local's cache entries (the resume state)
    pipeline.log     the full log of the last run
    report.html      the run report (every epoch), report.md beside it
    selections/epoch_<e>.parquet
    model/           the final policy
    run.json         parameters, timings, which epochs ran and which were reused
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
import sys
import threading
import time
import warnings
from dataclasses import asdict
from typing import Any, TextIO

from p3 import storage
from p3.kfp.builder import BuildOptions, build

# Lines of the kfp.local log worth showing on the console (the rest goes to pipeline.log).
_SHOW = re.compile(r"Task .* finished with status|cache hit|Running pipeline|Pipeline .* finished|"
                   r"\]: \[[a-z-]+( epoch \d+)?\] |Traceback|Error|error:")
_TASK = re.compile(r"Task '([^']+)'")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class _Tee(io.TextIOBase):
    """Everything to the log file; the interesting lines also to the console."""

    def __init__(self, log: TextIO, console: TextIO, verbose: bool, names: dict[str, str]):
        self.log, self.console, self.verbose, self.names, self._buf = log, console, verbose, names, ""
        self._lock = threading.Lock()  # shards of a ParallelFor print from several threads

    def write(self, s: str) -> int:
        with self._lock:
            return self._write(s)

    def _write(self, s: str) -> int:
        self.log.write(s)
        self._buf += s
        *lines, self._buf = self._buf.split("\n")
        for line in lines:
            if self.verbose:
                self.console.write(line + "\n")
                continue
            plain = _ANSI.sub("", line).strip()
            if _SHOW.search(plain):
                # kfp.local names tasks by DAG key (trainer-2); show the display name (epoch 1: train)
                plain = _TASK.sub(lambda m: f"'{self.names.get(m.group(1), m.group(1))}'", plain)
                self.console.write(plain.replace("[KFP Executor ", "[") + "\n")
        if lines:
            # progress must reach a pipe (CI logs, `| tee`, a supervising process) as it happens
            self.console.flush()
        return len(s)

    def flush(self) -> None:
        self.log.flush()
        self.console.flush()


class _CacheHits(logging.Handler):
    """Collects the task names kfp.local serves from its cache."""

    pattern = re.compile(r"Task (\S+) cache hit")

    def __init__(self, console: TextIO, names: dict[str, str]):
        super().__init__(logging.INFO)
        self.console, self.names = console, names
        self.tasks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        m = self.pattern.search(record.getMessage())
        if m:
            self.tasks.append(m.group(1))
            self.console.write(f"'{self.names.get(m.group(1), m.group(1))}' taken from the cache\n")
            self.console.flush()


def run_local(opts: BuildOptions, params: dict[str, Any], runs_dir: str = "runs", name: str | None = None,
              fresh: bool = False, verbose: bool = False, console: TextIO | None = None,
              export: str | None = None) -> dict[str, Any]:
    """Run the pipeline locally; return the run summary (also written to run.json).

    ``export``: also copy the report, the selections, the final model and run.json
    there (a folder or an ``s3://`` URI).
    """
    from kfp import local

    console = console or sys.stdout
    opts = BuildOptions(**{**asdict(opts), "cluster": None, "cache_everything": True})
    built = build(opts)
    args = {**built.defaults, **params}
    run_dir = os.path.abspath(os.path.join(runs_dir, name or f"{opts.task}-{opts.preset}"))
    cache_dir = os.path.join(run_dir, "cache")
    if fresh:
        for sub in ("cache", "pipeline_root"):
            shutil.rmtree(os.path.join(run_dir, sub), ignore_errors=True)
    os.makedirs(run_dir, exist_ok=True)

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=os.path.join(run_dir, "pipeline_root"),
               raise_on_error=True, enable_caching=True, cache_root=cache_dir)
    hits = _CacheHits(console, built.display_names)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(hits)
    root.setLevel(logging.INFO)
    start = time.perf_counter()
    error: BaseException | None = None
    try:
        with open(os.path.join(run_dir, "pipeline.log"), "w") as log, \
                contextlib.redirect_stdout(_Tee(log, console, verbose, built.display_names)), warnings.catch_warnings():
            # kfp.local warns once per task that display names and images do nothing locally.
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            env = {"P3_PROGRESS": os.environ.get("P3_PROGRESS", "0")}
            with _env(env):
                task = built.pipeline(**args)
    except BaseException as exc:  # noqa: BLE001 - reported, then re-raised
        error = exc
    finally:
        root.removeHandler(hits)
        root.setLevel(old_level)
    took = time.perf_counter() - start

    summary: dict[str, Any] = {
        "task": opts.task, "preset": opts.preset, "epochs": opts.epochs, "shards": opts.shards,
        "params": args, "wall_s": round(took, 1), "run_dir": run_dir,
        **epoch_status(built.epoch_of_task, hits.tasks, opts.epochs),
    }
    if error is None:
        summary.update(collect_outputs(task.outputs, run_dir, opts.epochs))
        summary["status"] = "succeeded"
        if export:
            summary["exported"] = export_run(run_dir, export, opts.epochs)
    else:
        summary["status"] = "stopped" if isinstance(error, KeyboardInterrupt) else "failed"
        first = _ANSI.sub("", str(error).splitlines()[0]) if str(error) else type(error).__name__
        summary["error"] = re.sub(r"'([^']+)'", lambda m: f"'{built.display_names.get(m.group(1), m.group(1))}'", first)
    storage.write_json(summary, os.path.join(run_dir, "run.json"))
    if summary.get("exported"):
        storage.write_json(summary, f"{summary['exported']}/run.json")
    _print_summary(summary, console)
    if error is not None:
        error.p3_summarised = True  # the summary named it: the entry point adds no second line
        raise error
    return summary


def epoch_status(epoch_of_task: dict[str, int], cached: list[str], epochs: int) -> dict[str, list[int]]:
    """Which epochs came entirely from the cache (``skipped_epochs``) and which ran."""
    hit = set(cached)
    tasks_by_epoch: dict[int, set[str]] = {}
    for task, e in epoch_of_task.items():
        tasks_by_epoch.setdefault(e, set()).add(task)
    skipped = [e for e in range(epochs) if tasks_by_epoch.get(e) and tasks_by_epoch[e] <= hit]
    return {"skipped_epochs": skipped, "ran_epochs": [e for e in range(epochs) if e not in skipped],
            "cached_tasks": sorted(hit)}


def collect_outputs(outputs: dict[str, Any], run_dir: str, epochs: int) -> dict[str, Any]:
    """Copy the pipeline's outputs to stable names under ``run_dir``."""
    report = os.path.join(run_dir, "report.html")
    shutil.copyfile(outputs["report"].path, report)
    shutil.copyfile(outputs["report_md"].path, os.path.join(run_dir, "report.md"))
    selections = []
    for e in range(epochs):
        dst = os.path.join(run_dir, "selections", f"epoch_{e}.parquet")
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copyfile(outputs[f"selection_{e}"].path, dst)
        selections.append(dst)
    model = os.path.join(run_dir, "model")
    storage.upload_dir(outputs["final_model"].path, model)
    return {"report": report, "selections": selections, "model": model,
            "artifacts": {k: v.uri for k, v in outputs.items()}}


def export_run(run_dir: str, uri: str, epochs: int) -> str:
    """Copy a finished run's results (not its cache) to ``uri`` (folder or s3://)."""
    uri = uri.rstrip("/")
    for name in ("report.html", "report.md"):
        if os.path.exists(os.path.join(run_dir, name)):
            storage.copy_file(os.path.join(run_dir, name), f"{uri}/{name}")
    for e in range(epochs):
        storage.copy_file(os.path.join(run_dir, "selections", f"epoch_{e}.parquet"), f"{uri}/selections/epoch_{e}.parquet")
    storage.upload_dir(os.path.join(run_dir, "model"), f"{uri}/model")
    return uri


def _print_summary(s: dict[str, Any], out: TextIO) -> None:
    out.write(f"\np3 local run {s['status']} in {s['wall_s']:.0f}s ({s['task']}, preset {s['preset']}, "
              f"{s['epochs']} epochs, {s['shards']} shard(s))\n")
    if s["skipped_epochs"]:
        out.write(f"resumed: skipped epochs {', '.join(map(str, s['skipped_epochs']))} "
                  f"(finished in an earlier run, taken from {os.path.join(s['run_dir'], 'cache')})\n")
    if s["status"] == "succeeded":
        out.write(f"ran epochs: {', '.join(map(str, s['ran_epochs'])) or 'none'}\n")
        out.write(f"report: {s['report']}\nselections: {os.path.dirname(s['selections'][0])}\n"
                  f"final model: {s['model']}\n")
        if s.get("exported"):
            out.write(f"exported to: {s['exported']}\n")
    else:
        out.write(f"error: {s.get('error')}\nfull log: {os.path.join(s['run_dir'], 'pipeline.log')}\n"
                  "run the same command again to resume from the last finished step\n")
    out.flush()


@contextlib.contextmanager
def _env(values: dict[str, str]):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
