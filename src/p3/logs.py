"""Logging and progress shared by every step.

Log lines name the component and, inside a pipeline, the epoch (``P3_EPOCH``), so a
multi-epoch log can be read without the UI. The epoch is read when a line is logged, not when
the logger is made: in the per-epoch pipeline the epoch is known only at run time, and a step
that receives it names it with ``configure(epoch=k)`` after the modules' loggers exist. :func:`step` prints the one-line summary
each step ends with: what, how many, how long.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from typing import Iterable, Iterator, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def get_logger(component: str) -> logging.LoggerAdapter:
    """Logger for one component; adds ``epoch e`` when P3_EPOCH is set (by the pipeline or :func:`configure`)."""
    return _Prefixed(logging.getLogger(f"p3.{component}"), {"component": component})


def configure(verbose: bool = False, epoch: int | None = None) -> None:
    """Log to stderr at INFO (DEBUG when ``verbose``). Only entry points call this (the CLI,
    the components, the pipeline scripts): importing a p3 module configures nothing.

    ``epoch``: the epoch this step runs when the pipeline knows it only at run time (the
    per-epoch pipeline's epoch k); it is put in P3_EPOCH, so that the step's log lines and
    those of the processes it starts (torchrun) name it. None or negative: leave P3_EPOCH as is."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    if epoch is not None and epoch >= 0:
        os.environ["P3_EPOCH"] = str(epoch)


class _Prefixed(logging.LoggerAdapter):
    def process(self, msg, kwargs):
        epoch = os.environ.get("P3_EPOCH", "")
        return f"[{self.extra['component']}{f' epoch {epoch}' if epoch else ''}] {msg}", kwargs


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """A progress bar on stderr; silent when P3_PROGRESS=0 (CI logs stay short)."""
    return tqdm(items, desc=desc, total=total, unit=unit, disable=not progress_enabled(), file=sys.stderr,
                mininterval=1.0)


def progress_enabled() -> bool:
    """Progress bars are on unless P3_PROGRESS=0 (CI logs stay short)."""
    return os.environ.get("P3_PROGRESS", "1") != "0"


@contextlib.contextmanager
def step(log: logging.LoggerAdapter, what: str) -> Iterator[dict]:
    """Time a step and log ``what: k=v … in 1.2s`` at the end; fill the dict with counts."""
    counts: dict = {}
    start = time.perf_counter()
    yield counts
    took = time.perf_counter() - start
    parts = " ".join(f"{k}={v}" for k, v in counts.items())
    log.info(f"{what}: {parts} in {took:.1f}s")
