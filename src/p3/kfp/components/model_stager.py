"""Component: the base model into the model cache, before any offline step needs it."""

from kfp import dsl
from kfp.dsl import Artifact, Output

from p3.kfp.components.images import BASE


@dsl.component(base_image=BASE, install_kfp_package=False)
def model_stager(base_model: str, staged: Output[Artifact]):
    """Download ``base_model`` into the model cache (HF_HOME, the model-cache PVC).

    The only model step with a route to the Hugging Face Hub; the scoring, embedding,
    training and evaluation steps run after it with ``HF_HUB_OFFLINE=1`` and load the
    same name from the cache.

    Args:
        base_model: Hub name (``org/name``), model folder or ``s3://`` URI; only a Hub
            name is downloaded.
        staged: Output note of what was staged (the name and its cache folder).
    """
    from p3 import storage
    from p3.staging import stage

    where = stage(base_model)
    staged.metadata.update(model=base_model, snapshot=where)
    storage.write_json({"model": base_model, "snapshot": where}, staged.path)
