"""The repository's scripts (bench/*.py, images/*.py) loaded as modules by the tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_script(relpath: str) -> ModuleType:
    """``relpath`` (from the repository root, e.g. ``bench/dpp_scale.py``) as a module,
    registered in sys.modules first: its dataclasses look their module up while built."""
    name = "script_" + relpath.removesuffix(".py").replace("/", "_")
    spec = importlib.util.spec_from_file_location(name, ROOT / relpath)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
