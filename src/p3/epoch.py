"""One P3 epoch's dataflow, defined once: score → select → train → evaluate → report.

:func:`epoch_flow` is the one place that says which step runs when and what feeds what:
the current policy scores (and, when it is the embedder, embeds) the pool; the selector
gets this epoch's difficulty and embeddings plus the previous epoch's selection
(cross-epoch diversity) and difficulty (momentum pacing); training starts from the current
policy on this selection; the trained model is evaluated; the report adds this epoch to
the previous epoch's report folder. :func:`epoch_loop` chains E epochs: each starts from
the model the one before trained and takes what it left (:class:`Previous`).

Two executors run that flow, each through an object with one method per step:

- the pipeline (``p3.kfp.builder.PipelineSteps``): each step is a KFP task (the unrolled
  E-epoch pipeline via :func:`epoch_loop`, the per-epoch pipeline via :func:`epoch_flow`);
- :class:`InProcessSteps`: the library functions in this process (the learning-efficiency
  benchmark), with the file layout the report reads (``epoch_<e>/difficulty.parquet``,
  ``selection.parquet``, ``selection_report.json``) plus ``model/``. It does not evaluate
  or report (the benchmark measures on its own): those steps return None.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator, NamedTuple, Optional, Protocol

from p3.rundata import EPOCH_FILES
from p3.score import ScoreConfig, score
from p3.selection import SelectConfig, select
from p3.train import TrainConfig, train


class Previous(NamedTuple):
    """What epoch e >= 1 takes from epoch e-1 besides the model."""

    selection: Any
    difficulty: Any  # None: that epoch was not scored
    run: Any  # the report folder of every epoch so far (None: no report)


class EpochOutputs(NamedTuple):
    policy: Any  # the trained model: the next epoch's policy
    selection: Any
    difficulty: Any
    run: Any
    report: Any  # what the executor's report step made (the pipeline's report task)

    @property
    def previous(self) -> Previous:
        return Previous(self.selection, self.difficulty, self.run)


class EpochSteps(Protocol):
    """One method per step; each returns that step's outputs as its executor names them
    (task outputs in a pipeline, file paths in process). ``policy`` None = the base model."""

    def score_and_embed(self, epoch: Any, policy: Any) -> tuple[Any, Any]:
        """(difficulty, embeddings) of the pool under ``policy``; difficulty None = not scored,
        embeddings = this epoch's (the policy embeds) or the ones made before the epochs."""

    def select(self, epoch: Any, difficulty: Any, embeddings: Any, previous: Any,
               previous_difficulty: Any) -> tuple[Any, Any]:
        """(selection, selection report)."""

    def train(self, epoch: Any, policy: Any, selection: Any) -> Any:
        """The trained model."""

    def evaluate(self, epoch: Any, model: Any) -> Any:
        """The evaluation results (None: not evaluated)."""

    def report(self, epoch: Any, difficulty: Any, selection: Any, selection_report: Any, evaluation: Any,
               previous_run: Any) -> tuple[Any, Any]:
        """(the report folder of every epoch so far, the report step's handle); (None, None): no report."""


def epoch_flow(steps: EpochSteps, epoch: Any, policy: Any, previous: Optional[Previous] = None) -> EpochOutputs:
    """One epoch from ``policy`` and, from epoch 1 on, what the previous epoch left."""
    difficulty, embeddings = steps.score_and_embed(epoch, policy)
    selection, selection_report = steps.select(epoch, difficulty, embeddings,
                                               previous.selection if previous is not None else None,
                                               previous.difficulty if previous is not None else None)
    model = steps.train(epoch, policy, selection)
    evaluation = steps.evaluate(epoch, model)
    run, report = steps.report(epoch, difficulty, selection, selection_report, evaluation,
                               previous.run if previous is not None else None)
    return EpochOutputs(model, selection, difficulty, run, report)


def epoch_loop(steps: EpochSteps, epochs: int, policy: Any) -> Iterator[EpochOutputs]:
    """Epochs 0 … epochs-1 in order, each from the model the one before trained; yields each
    epoch's outputs as it ends (a caller may measure between epochs)."""
    previous = None
    for e in range(epochs):
        out = epoch_flow(steps, e, policy, previous)
        yield out
        policy, previous = out.policy, out.previous


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


class InProcessSteps:
    """The steps as library calls in this process, writing ``<run_dir>/epoch_<e>/…``.

    ``select_cfg`` and ``train_cfg`` carry the run's settings (``select_cfg.embeddings``: the
    pool's, made before the epochs); each step fills in the per-epoch fields. ``score_cfg``
    None = the pool is not scored (a strategy without difficulty). ``selector`` replaces
    ``p3 select`` for a reference selection that is not a strategy (the benchmark's oracle): it
    gets the same config and must write ``cfg.out`` (and may write ``cfg.report``).
    ``seconds[e]``: each step's time in epoch e.
    """

    def __init__(self, run_dir: str, score_cfg: Optional[ScoreConfig], select_cfg: SelectConfig,
                 train_cfg: TrainConfig, selector: Callable[[SelectConfig], dict] = select):
        self.run_dir, self.score_cfg, self.select_cfg, self.train_cfg = run_dir, score_cfg, select_cfg, train_cfg
        self.selector = selector
        self.seconds: dict[int, dict[str, float]] = {}

    def files(self, epoch: int) -> EpochFiles:
        return epoch_files(self.run_dir, epoch)

    def _timed(self, epoch: int, name: str, start: float) -> None:
        self.seconds.setdefault(epoch, {})[name] = time.perf_counter() - start

    def score_and_embed(self, epoch: int, policy: str) -> tuple[Optional[str], Optional[str]]:
        """Scores the pool with ``policy`` (when a score config is given); never embeds: the
        embeddings are the table ``select_cfg.embeddings`` names, made before the epochs."""
        files = self.files(epoch)
        os.makedirs(files.dir, exist_ok=True)
        t = time.perf_counter()
        difficulty = None
        if self.score_cfg is not None:
            score(replace(self.score_cfg, model=policy, out=files.difficulty, epoch=epoch))
            difficulty = files.difficulty
        self._timed(epoch, "score_s", t)
        return difficulty, self.select_cfg.embeddings

    def select(self, epoch: int, difficulty: Optional[str], embeddings: Optional[str], previous: Optional[str],
               previous_difficulty: Optional[str]) -> tuple[str, str]:
        files = self.files(epoch)
        t = time.perf_counter()
        self.selector(replace(self.select_cfg, epoch=epoch, difficulty=difficulty, embeddings=embeddings,
                              out=files.selection, report=files.report, previous=previous,
                              previous_difficulty=previous_difficulty))
        self._timed(epoch, "select_s", t)
        return files.selection, files.report

    def train(self, epoch: int, policy: str, selection: str) -> str:
        files = self.files(epoch)
        t = time.perf_counter()
        train(replace(self.train_cfg, selection=selection, model=policy, out=files.model))
        self._timed(epoch, "train_s", t)
        return files.model

    def evaluate(self, epoch: int, model: str) -> None:
        return None  # the benchmark measures each model itself

    def report(self, epoch, difficulty, selection, selection_report, evaluation, previous_run) -> tuple[None, None]:
        return None, None
