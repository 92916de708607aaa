"""Component: problem embeddings for the DPP's similarity kernel (``p3 embed``)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from p3.kfp.components.images import VLLM


@dsl.component(base_image=VLLM, install_kfp_package=False)
def embedder(
    problems: Input[Dataset],
    embeddings: Output[Dataset],
    embedder: str = "st:all-MiniLM-L6-v2",
    base_model: str = "",
    policy: Input[Model] = None,
    per_epoch: bool = True,
    epoch: int = -1,
):
    """Embed every problem.

    Args:
        problems: Problems table (all of it, or one shard).
        embeddings: Output embeddings table (id, fixed-size float32 list).
        embedder: st:<folder>, st:hf:<hub name> or st:all-MiniLM-L6-v2 (bundled) for sentence-transformers,
            or policy:<model> to mean-pool a model's last hidden state (plain policy: the current policy).
        base_model: Model used by ``policy`` when no ``policy`` artifact is connected.
        policy: The current policy (the previous epoch's trained model).
        per_epoch: False when the pipeline embeds once, before the epochs (it was built
            with an embedder that is not the current policy); a plain ``policy`` embedder
            is then refused instead of embedding with the base model only.
        epoch: Epoch named in the log lines (the per-epoch pipeline knows it only at run time; -1 = as P3_EPOCH says).
    """
    from p3.logs import configure

    configure(epoch=epoch)  # an entry point: the step's log lines go to its pod log, naming the epoch
    from p3.kfp.components._glue import model_ref
    from p3.embed import EmbedConfig, embed

    if embedder == "policy" and not per_epoch:
        raise ValueError("this pipeline embeds once before the epochs; embedder=policy needs a pipeline built "
                         "with --set embedder=policy (one embedding per epoch)")
    if embedder == "policy":
        embedder = "policy:" + model_ref(policy, base_model)
    embed(EmbedConfig(problems=problems.path, out=embeddings.path, embedder=embedder))
