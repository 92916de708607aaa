"""The JSON records between steps (docs/design.md §3.2): the selection report and the
evaluation results.

Each is a dataclass whose fields are the record's keys, with a ``version``. The writer
builds the dataclass (a missing or unknown key is a TypeError at the writer) and writes
:meth:`to_json`; a reader calls :func:`read`, which accepts exactly what the writer
writes: the same version and the same keys, or a ContractError naming the file and the
field. In memory a step passes the validated dict on.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from p3 import storage
from p3.contracts import ContractError


@dataclass
class SelectionReport:
    """What ``p3 select`` decided and why (see :mod:`p3.selection` for each key)."""

    strategy: str
    epoch: int
    epochs: int
    budget: int
    seed: int
    quality: str
    reserve: int  # problems of the budget drawn uniformly at random (the uniform reserve)
    pool: int
    eligible: int
    selected: int
    budget_exceeds_eligible: bool
    notes: list
    percentile: Optional[float]
    threshold: Optional[float]
    lower_percentile: Optional[float]
    lower_threshold: Optional[float]
    pacing: dict
    difficulty: dict
    rounds: int
    round_sizes: list
    dpp: Optional[dict]
    logdet: Optional[float]
    mean_cosine: Optional[float]
    diversity: Optional[dict]
    coverage: dict
    seconds: float = 0.0
    version: int = 1

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class EvaluationResults:
    """What ``p3 evaluate`` measured (see :mod:`p3.evaluate`)."""

    model: str
    problems: str
    epoch: Optional[int]
    n: int
    k: int
    temperature: float
    n_problems: int
    accuracy: float
    pass_at_k: float
    seconds: float
    by_level: Optional[dict] = None
    by_type: Optional[dict] = None
    by_difficulty: Optional[dict] = None
    isolation: Optional[str] = None  # the sandbox isolation programs ran at (APPS); None when none ran
    sandbox_isolation: Optional[int] = None  # the same as a number for the Metrics artifact: 2 bwrap, 1 unshare, 0 none
    version: int = 1

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def read(kind: type, source: "str | dict") -> dict[str, Any]:
    """Read a record of ``kind`` from a path/URI (or a dict already loaded); return it as
    a dict after checking its version and that its keys are exactly the writer's."""
    path = source if isinstance(source, str) else f"<{kind.__name__}>"
    obj = storage.read_json(source) if isinstance(source, str) else dict(source)
    if not isinstance(obj, dict):
        raise ContractError(path, "-", f"a {kind.__name__} must be a JSON object")
    want = {f.name for f in dataclasses.fields(kind)}
    default_version = next(f.default for f in dataclasses.fields(kind) if f.name == "version")
    if obj.get("version") != default_version:
        raise ContractError(path, "version", f"{kind.__name__} version {default_version} expected, got {obj.get('version')!r}")
    unknown, missing = sorted(set(obj) - want), sorted(want - set(obj))
    if unknown:
        raise ContractError(path, unknown[0], f"not a {kind.__name__} field")
    if missing:
        raise ContractError(path, missing[0], f"missing from the {kind.__name__}")
    return obj
