"""Config dataclasses as flat settings: one name per setting, nested groups flattened.

A step's config may hold a shared group as one field (``ScoreConfig.generation`` is a
:class:`p3.generation.GenerationConfig`). Everything that lists settings by name (the
``p3`` CLI's options, the pipeline's parameters, the components' arguments, the drift
test) sees the group's fields as the step's own, under their own names.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any


class Setting(typing.NamedTuple):
    field: dataclasses.Field
    type: Any  # resolved annotation
    group: str | None  # name of the nested group field it lives in, None = the config's own


def settings(cls: type) -> dict[str, Setting]:
    """Every leaf setting of the config class ``cls``, by name, groups flattened in place."""
    hints = typing.get_type_hints(cls)
    out: dict[str, Setting] = {}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            inner = settings(hints[f.name])
            for name, s in inner.items():
                if name in out:
                    raise TypeError(f"{cls.__name__}: setting {name!r} in group {f.name!r} shadows another")
                out[name] = s._replace(group=f.name)
        elif f.name in out:
            raise TypeError(f"{cls.__name__}: setting {f.name!r} is also in a group")
        else:
            out[f.name] = Setting(f, hints[f.name], None)
    return out


def has_default(f: dataclasses.Field) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def default(f: dataclasses.Field) -> Any:
    """The field's default value (a factory is called); MISSING when it has none."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def from_flat(cls: type, values: dict[str, Any]) -> Any:
    """Build ``cls`` from flat setting values (missing ones take their defaults)."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            kwargs[f.name] = from_flat(hints[f.name], values)
        elif f.name in values:
            kwargs[f.name] = values[f.name]
    return cls(**kwargs)


def flat_values(cfg: Any) -> dict[str, Any]:
    """The flat setting values of the config instance ``cfg`` (inverse of :func:`from_flat`)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        out.update(flat_values(value) if dataclasses.is_dataclass(value) else {f.name: value})
    return out


def describe(f: dataclasses.Field) -> str:
    """The field's help, with its choices when it has any: the description of a pipeline
    parameter or a component argument (the CLI shows choices itself)."""
    choices = f.metadata.get("choices")
    help_ = f.metadata.get("help", "")
    return f"{help_} (one of: {', '.join(map(str, choices))})" if choices else help_
