"""Shared pytest fixtures, one module per area so that each area owns its own file.

_fx_storage: a real S3-compatible server (moto's server mode) on loopback.
_fx_models:  the tiny offline model, built once per test session.
"""

import os

# No test may reach a hub; the real loading code paths still run, offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("P3_PROGRESS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from _fx_models import *  # noqa: E402,F401,F403
from _fx_storage import *  # noqa: E402,F401,F403
