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
):
    """Embed every problem.

    Args:
        problems: Problems table (all of it, or one shard).
        embeddings: Output embeddings table (id, fixed-size float32 list).
        embedder: st:<folder>, st:hf:<hub name> or st:all-MiniLM-L6-v2 (bundled) for sentence-transformers,
            or policy:<model> to mean-pool a model's last hidden state (plain policy: the current policy).
        base_model: Model used by ``policy`` when no ``policy`` artifact is connected.
        policy: The current policy (the previous epoch's trained model).
    """
    from p3.logs import configure

    configure()  # an entry point: the step's log lines go to its pod log
    from p3.kfp.components._glue import model_ref
    from p3.embed import EmbedConfig, embed

    if embedder == "policy":
        embedder = "policy:" + model_ref(policy, base_model)
    embed(EmbedConfig(problems=problems.path, out=embeddings.path, embedder=embedder))
