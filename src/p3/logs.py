"""Logging and progress shared by every step.

Log lines name the component and, inside a pipeline, the epoch (``P3_EPOCH``), so a
multi-epoch log can be read without the UI. :func:`step` prints the one-line summary
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
    """Logger for one component; adds ``[epoch e]`` when the pipeline set P3_EPOCH."""
    epoch = os.environ.get("P3_EPOCH")
    prefix = f"[{component}" + (f" epoch {epoch}" if epoch not in (None, "") else "") + "] "
    return _Prefixed(logging.getLogger(f"p3.{component}"), {"prefix": prefix})


def configure(verbose: bool = False) -> None:
    """Log to stderr at INFO (DEBUG when ``verbose``). Only entry points call this (the CLI,
    the components, the pipeline scripts): importing a p3 module configures nothing."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


class _Prefixed(logging.LoggerAdapter):
    def process(self, msg, kwargs):
        return self.extra["prefix"] + str(msg), kwargs


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
