"""Put the base model into the model cache once, before any step that may not reach the
internet needs it.

The steps that grade model-written programs (scoring, evaluation) run in pods whose
NetworkPolicy admits only KFP's own services and the artifact store (docs/security.md):
no route to the Hugging Face Hub. One unsandboxed step stages the model into ``HF_HOME``
(the model-cache PVC); every model-loading step after it runs with ``HF_HUB_OFFLINE=1``
and loads the same name from that cache, or fails saying it is not there.
"""

from __future__ import annotations

import logging
import os

from p3 import storage

log = logging.getLogger(__name__)


def is_hub_name(model: str) -> bool:
    """Whether ``model`` names a Hub repository (``org/name``), not a folder or a URI."""
    if storage.is_remote(model) or model.startswith((os.sep, ".", "~", "file://")) or os.path.isdir(model):
        return False
    return 1 <= model.count("/") + 1 <= 2 and all(model.split("/"))


def stage(model: str, revision: str | None = None) -> str:
    """Download the Hub repository ``model`` into the Hugging Face cache and return its
    local snapshot folder; a folder or URI is returned as it is (nothing to fetch: the
    steps read it themselves, from the artifact store the NetworkPolicy admits)."""
    if not is_hub_name(model):
        log.info("model %s is a path, not a Hub name: nothing to stage", model)
        return model
    from huggingface_hub import snapshot_download

    path = snapshot_download(repo_id=model, revision=revision)
    log.info("staged %s into the model cache at %s", model, path)
    return path
