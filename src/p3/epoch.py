"""One P3 epoch in process: score → select → train, with the pipeline's file layout.

The pipeline runs each step as its own task (``p3.kfp.builder``); this is the same
sequence for code that runs epochs in one process (the learning-efficiency benchmark):
the same step functions, fed the same inputs the pipeline wires between epochs — the
current policy scores the pool, the selector gets this epoch's difficulty plus the
previous epoch's selection (cross-epoch diversity) and difficulty (momentum pacing),
and training starts from the current policy. Files per epoch follow the layout that
``p3 report --run-dir`` reads (``epoch_<e>/difficulty.parquet``, ``selection.parquet``,
``selection_report.json``) plus ``model/``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from typing import Callable, Optional

from p3.rundata import EPOCH_FILES
from p3.score import ScoreConfig, score
from p3.selection import SelectConfig, select
from p3.train import TrainConfig, train


@dataclass(frozen=True)
class EpochFiles:
    """Where one epoch's tables and model live (``<run>/epoch_<e>/…``)."""

    dir: str

    # the names the report reads a run folder by (one place: rundata.EPOCH_FILES)
    @property
    def difficulty(self) -> str:
        return os.path.join(self.dir, EPOCH_FILES["difficulty"])

    @property
    def selection(self) -> str:
        return os.path.join(self.dir, EPOCH_FILES["selection"])

    @property
    def report(self) -> str:
        return os.path.join(self.dir, EPOCH_FILES["selection_report"])

    @property
    def model(self) -> str:
        return os.path.join(self.dir, "model")


def epoch_files(run_dir: str, epoch: int) -> EpochFiles:
    return EpochFiles(os.path.join(run_dir, f"epoch_{epoch}"))


def run_epoch(epoch: int, policy: str, files: EpochFiles, previous: Optional[EpochFiles],
              score_cfg: Optional[ScoreConfig], select_cfg: SelectConfig, train_cfg: TrainConfig,
              selector: Callable[[SelectConfig], dict] = select) -> dict[str, float]:
    """Score (when ``score_cfg`` is given), select and train one epoch; return seconds per step.

    ``select_cfg`` and ``train_cfg`` carry the run's settings; this function fills in the
    per-epoch fields (epoch, policy, the files). ``selector`` replaces ``p3 select`` for
    a reference selection that is not a strategy (the benchmark's oracle); it gets the
    same config and must write ``files.selection`` (and may write ``files.report``).
    """
    os.makedirs(files.dir, exist_ok=True)
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    scored = score_cfg is not None
    if scored:
        score(replace(score_cfg, model=policy, out=files.difficulty, epoch=epoch))
    seconds["score_s"] = time.perf_counter() - t
    t = time.perf_counter()
    had_difficulty = previous is not None and os.path.exists(previous.difficulty)
    selector(replace(select_cfg, epoch=epoch, difficulty=files.difficulty if scored else None,
                     out=files.selection, report=files.report,
                     previous=previous.selection if previous is not None else None,
                     previous_difficulty=previous.difficulty if had_difficulty else None))
    seconds["select_s"] = time.perf_counter() - t
    t = time.perf_counter()
    train(replace(train_cfg, selection=files.selection, model=policy, out=files.model))
    seconds["train_s"] = time.perf_counter() - t
    return seconds
