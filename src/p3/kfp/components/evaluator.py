"""Component: accuracy / pass@k of the policy on the held-out test set (``p3 evaluate``)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from p3.kfp.components.images import VLLM


@dsl.component(base_image=VLLM, install_kfp_package=False)
def evaluator(
    problems: Input[Dataset],
    results: Output[Dataset],
    metrics: Output[Metrics],
    epoch: int = 0,
    n: int = 1,
    k: int = 1,
    backend: str = "hf",
    max_new_tokens: int = 512,
    seed: int = 0,
    tensor_parallel_size: int = 1,
    allow_weak_isolation: bool = False,
    base_model: str = "",
    policy: Input[Model] = None,
):
    """Generate, grade (math-verify / APPS sandbox) and report accuracy and pass@k.

    Args:
        problems: Test problems table.
        results: Output: the evaluation JSON (overall and by level/type or difficulty).
        metrics: Output: the scalar metrics, for the Kubeflow UI.
        epoch: Epoch recorded in the JSON (the epoch whose model this is).
        n: Samples per problem.
        k: K of pass@k (k <= n).
        backend: Inference engine (one of: hf, vllm).
        max_new_tokens: Token limit of each sampled completion.
        seed: Sampling seed.
        tensor_parallel_size: vllm: GPUs one model is split over.
        allow_weak_isolation: Grade APPS programs even when the sandbox cannot prove full isolation (bwrap); the level used is recorded in the rollouts table, the evaluation JSON and its metrics (default: refuse).
        base_model: Model evaluated when no ``policy`` artifact is connected.
        policy: The policy to evaluate (this epoch's trained model).
    """
    from p3.logs import configure

    configure(epoch=epoch)  # an entry point: the step's log lines go to its pod log, naming the epoch
    from p3 import storage
    from p3.kfp.components._glue import model_ref
    from p3.configs import from_flat
    from p3.evaluate import EvaluateConfig, evaluate

    out = evaluate(from_flat(EvaluateConfig, dict(
        problems=problems.path, model=model_ref(policy, base_model), out=results.path, epoch=epoch, n=n, k=k,
        backend=backend, max_new_tokens=max_new_tokens, seed=seed, tensor_parallel_size=tensor_parallel_size,
        allow_weak_isolation=allow_weak_isolation)))
    scalars = {k: v for k, v in out.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for name, value in scalars.items():
        metrics.log_metric(name, value)
    # The Metrics artifact is also a real file: a cluster uploads it, kfp.local's cache requires it.
    storage.write_json(scalars, metrics.path)
