"""One run's data for the report: what each epoch's steps wrote, loaded, and the numbers
computed from it (thresholds, eligibility, diversity, coverage, difficulty change).

:func:`load_epoch` reads one epoch's files into an :class:`EpochData`;
:func:`load_epoch_dir` and :func:`find_epoch_dirs` find them in a run folder.

A run folder holds one sub-folder per epoch named ``epoch_<e>`` (no other spelling) with
the files named in :data:`EPOCH_FILES`; the problems table may sit in the run folder
(:data:`PROBLEMS_FILE`) or in each epoch folder. Every file is optional:
a section whose inputs are missing says so instead of failing.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from p3 import contracts, records, storage
from p3.problems import load_problems, meta_by_id
from p3.logs import get_logger

log = get_logger("report")


# The file each input has inside an epoch folder (what the pipeline's report step and
# the learning-efficiency bench write), and the problems table beside the epoch folders.
EPOCH_FILES: dict[str, str] = {
    "selection_report": "selection_report.json",
    "difficulty": "difficulty.parquet",
    "selection": "selection.parquet",
    "metrics": "metrics.json",
    "problems": "problems.parquet",
}
PROBLEMS_FILE = "problems.parquet"


@dataclass
class EpochData:
    """Everything one epoch's report shows; any part may be missing (None)."""

    epoch: int
    selection_report: dict = field(default_factory=dict)
    ids: list[str] | None = None  # scored pool ids (difficulty table order)
    difficulty: np.ndarray | None = None  # this epoch's difficulty per pool id
    previous: dict[str, float] | None = None  # last epoch's difficulty by id
    previous_selected: set[str] | None = None  # ids trained on in the last epoch
    selected: list[str] | None = None  # selection ids in pick order
    selected_difficulty: np.ndarray | None = None
    rounds: np.ndarray | None = None  # DPP round per selected item
    metrics: dict = field(default_factory=dict)  # evaluation: accuracy, by level …
    meta: dict[str, dict] | None = None  # problem id -> meta (level, type)
    # seed -> (html, markdown) of this epoch's section: the pipeline's report step renders
    # the epoch's own page and then the run page from the same data
    sections: dict = field(default_factory=dict, repr=False, compare=False)


# ----------------------------------------------------------------------------- loading


def load_epoch(
    epoch: int,
    *,
    selection_report: str | dict | None = None,
    difficulty: str | None = None,
    selection: str | None = None,
    metrics: str | dict | None = None,
    problems: str | None = None,
    previous_difficulty: str | None = None,
    previous_selection: str | None = None,
) -> EpochData:
    """Read one epoch's artifacts (paths or URIs; dicts accepted for the JSON ones)."""
    data = EpochData(epoch=epoch)
    if selection_report is not None:
        data.selection_report = records.read(records.SelectionReport, selection_report)
    if metrics is not None:
        data.metrics = records.read(records.EvaluationResults, metrics)
    if difficulty:
        t = contracts.read(difficulty, contracts.DIFFICULTY)
        data.ids = t.column("id").to_pylist()
        data.difficulty = np.asarray(t.column("difficulty").to_pylist(), dtype=np.float64)
    if previous_difficulty:
        t = contracts.read(previous_difficulty, contracts.DIFFICULTY)
        data.previous = dict(zip(t.column("id").to_pylist(), t.column("difficulty").to_pylist()))
    if selection:
        t = contracts.read(selection, contracts.SELECTION).sort_by("rank")
        data.selected = t.column("id").to_pylist()
        data.selected_difficulty = np.asarray(t.column("difficulty").to_pylist(), dtype=np.float64)
        data.rounds = np.asarray(t.column("round").to_pylist(), dtype=np.int64)
    if previous_selection:
        t = contracts.read(previous_selection, contracts.SELECTION)
        data.previous_selected = set(t.column("id").to_pylist())
    if problems:
        data.meta = load_meta(problems)
    return data


def load_meta(path: str) -> dict[str, dict]:
    """id -> parsed ``meta`` JSON of a problems table."""
    return meta_by_id(load_problems(path))


def find_epoch_dirs(run_dir: str) -> list[str]:
    """Epoch sub-folders of ``run_dir`` sorted by epoch number."""
    fs, inner = storage.filesystem(run_dir)
    found = []
    for entry in fs.ls(inner, detail=True):
        name = os.path.basename(entry["name"].rstrip("/"))
        m = re.fullmatch(r"epoch_(\d+)", name)
        if m and entry["type"] == "directory":
            found.append((int(m.group(1)), _join(run_dir, name)))
    return [d for _, d in sorted(found)]


def load_epoch_dir(epoch_dir: str, previous_dir: str | None = None, problems: str | None = None) -> EpochData:
    """Load an epoch folder (files named as in :data:`EPOCH_FILES`)."""
    m = re.search(r"(\d+)/?$", epoch_dir)
    epoch = int(m.group(1)) if m else 0
    files = {k: _first_existing(epoch_dir, name) for k, name in EPOCH_FILES.items()}
    prev = {k: _first_existing(previous_dir, EPOCH_FILES[k]) for k in ("difficulty", "selection")} if previous_dir else {}
    return load_epoch(
        epoch,
        selection_report=files["selection_report"],
        difficulty=files["difficulty"],
        selection=files["selection"],
        metrics=files["metrics"],
        problems=problems or files["problems"],
        previous_difficulty=prev.get("difficulty"),
        previous_selection=prev.get("selection"),
    )


# ----------------------------------------------------------------------------- numbers


def threshold_of(data: EpochData) -> float | None:
    """The pacing threshold the selector wrote (None without pacing)."""
    rep = data.selection_report
    v = rep.get("threshold")
    return float(v) if isinstance(v, (int, float)) and np.isfinite(v) else None


def difficulty_threshold(data: EpochData) -> float | None:
    """The threshold on the *difficulty* axis; None for ``static`` (it paces on level labels)."""
    if str(data.selection_report.get("strategy", "")) == "static":
        return None
    return threshold_of(data)


def coverage(meta: dict[str, dict], ids: Sequence[str], key: str) -> dict[str, int]:
    """Counts of ``meta[key]`` over ``ids`` (missing -> '?'), sorted by value."""
    counts: dict[str, int] = {}
    for pid in ids:
        v = str(meta.get(pid, {}).get(key, "?"))
        counts[v] = counts.get(v, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: natural_key(kv[0])))


def epoch_metrics(data: EpochData) -> dict[str, float]:
    """The scalar Metrics the pipeline logs for an epoch."""
    out: dict[str, float] = {}
    acc = data.metrics.get("accuracy")
    if isinstance(acc, (int, float)):
        out["accuracy"] = float(acc)
    n_sel = len(data.selected) if data.selected is not None else data.selection_report.get("selected")
    if isinstance(n_sel, (int, float)):
        out["selected"] = float(n_sel)
    n_elig = data.selection_report.get("eligible")
    if isinstance(n_elig, (int, float)):
        out["eligible"] = float(n_elig)
    thr = threshold_of(data)
    if thr is not None:
        out["threshold"] = thr
    return out


def difficulty_change(data: EpochData) -> dict[str, Any] | None:
    """Δ difficulty since last epoch, overall and for trained / untrained problems."""
    if data.previous is None or data.ids is None or data.difficulty is None:
        return None
    pairs = [(pid, self_d, data.previous[pid]) for pid, self_d in zip(data.ids, data.difficulty) if pid in data.previous]
    if not pairs:
        return None
    ids = [p for p, _, _ in pairs]
    cur = np.array([c for _, c, _ in pairs])
    prev = np.array([p for _, _, p in pairs])
    delta = cur - prev
    out: dict[str, Any] = {"n": len(pairs), "mean_delta": float(delta.mean()), "prev": prev, "cur": cur}
    if data.previous_selected is not None:
        trained = np.array([p in data.previous_selected for p in ids])
        out["trained"] = trained
        out["mean_delta_trained"] = float(delta[trained].mean()) if trained.any() else float("nan")
        out["mean_delta_untrained"] = float(delta[~trained].mean()) if (~trained).any() else float("nan")
    return out


def natural_key(s: str):
    """Sort key that orders "2" before "10" (levels, labels)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(s))]


def _join(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name


def _first_existing(folder: str | None, name: str) -> str | None:
    """``folder/name`` if it exists (every input of an epoch folder is optional)."""
    if not folder:
        return None
    p = _join(folder, name)
    return p if storage.exists(p) else None

