"""One validator for every step's config dataclass, driven by field metadata.

Each config class calls :func:`validate` from ``__post_init__``, so the CLI, the Kubeflow
components and the pipeline builder (which all construct the dataclasses) refuse a bad
value the same way, before anything is read or allocated. Rules a field may carry in its
``metadata`` beside ``help``:

- ``min`` / ``max``: inclusive bounds; ``gt``: exclusive lower bound;
- ``lt_field`` / ``le_field``: below (or at most) another field's value, e.g. the epoch
  below the number of epochs;
- ``check``: a function of the value that raises ValueError with the reason.

Numbers are always finite (no NaN, no inf), and integers fit in 64 bits, whatever the
field says, since every number ends up in a Parquet or JSON file or a numpy array.
``choices`` are checked too, so a component gets the same refusal as the CLI.
"""

from __future__ import annotations

import functools
import math
import types
import typing
from typing import Any

INT64 = 2**63 - 1


class ConfigError(ValueError):
    """A setting out of its range: one line naming the option."""


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@functools.cache
def _settings(cls: type) -> dict[str, tuple[Any, Any]]:
    """name -> (field, plain type) of every leaf setting, nested groups flattened."""
    from p3 import configs

    out = {}
    for name, s in configs.settings(cls).items():
        tp = s.type
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            tp = args[0] if len(args) == 1 else tp
        out[name] = (s.field, tp)
    return out


def validate(cfg: Any) -> None:
    """Raise ConfigError for the first setting of ``cfg`` (nested groups included) that
    breaks its rules."""
    from p3 import configs

    values = configs.flat_values(cfg)
    for name, (f, tp) in _settings(type(cfg)).items():
        value = values[name]
        if value is None:
            continue
        problem = problem_of(value, tp, f.metadata, values)
        if problem:
            raise ConfigError(f"{flag(name)}: {problem}" + ("" if "got " in problem else f", got {value!r}"))


def problem_of(value: Any, tp: Any, meta: Any, values: dict[str, Any] | None = None) -> str | None:
    """Why ``value`` breaks the rules in field metadata ``meta`` (None when it does not).
    ``values``: the other settings by name, for the rules that compare with one."""
    values = values or {}
    if tp in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be {'an integer' if tp is int else 'a number'}"
        if tp is int and not isinstance(value, int):
            return "must be an integer"
        if isinstance(value, float) and not math.isfinite(value):
            return "must be a finite number"
        if isinstance(value, int) and not -INT64 <= value <= INT64:
            return "must fit in 64 bits"
        if "min" in meta and value < meta["min"]:
            return f"must be ≥ {meta['min']}"
        if "max" in meta and value > meta["max"]:
            return f"must be ≤ {meta['max']}"
        if "gt" in meta and not value > meta["gt"]:
            return f"must be > {meta['gt']}"
        # a bound held by another setting (absent when a group is checked on its own)
        other = values.get(meta.get("lt_field"))
        if other is not None and not value < other:
            return f"must be below {flag(meta['lt_field'])} ({other})"
        other = values.get(meta.get("le_field"))
        if other is not None and not value <= other:
            return f"must be at most {flag(meta['le_field'])} ({other})"
    if "choices" in meta and value not in meta["choices"]:
        return f"must be one of {', '.join(map(str, meta['choices']))}"
    if "check" in meta:
        try:
            meta["check"](value)
        except ValueError as exc:
            return str(exc)
    return None
