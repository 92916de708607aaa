"""Component: policy-driven difficulty of every problem, by likelihood, rollouts or both (``p3 score``)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from p3.kfp.components.images import VLLM


@dsl.component(base_image=VLLM, install_kfp_package=False)
def scorer(
    problems: Input[Dataset],
    difficulty: Output[Dataset],
    rollouts: Output[Dataset],
    epoch: int = 0,
    mode: str = "likelihood",
    difficulty_span: str = "solution",
    n: int = 8,
    temperature: float = 1.0,
    max_new_tokens: int = 512,
    weight: float = 0.5,
    backend: str = "hf",
    seed: int = 0,
    tensor_parallel_size: int = 1,
    allow_weak_isolation: bool = False,
    base_model: str = "",
    policy: Input[Model] = None,
):
    """Score every problem with the current policy.

    Args:
        problems: Problems table (all of it, or one shard).
        difficulty: Output difficulty table (id, epoch, difficulty, likelihood, pass_rate, n_rollouts).
        rollouts: Output rollouts audit table (id, sample, completion, score, status); empty in likelihood mode.
        epoch: Epoch recorded in the table.
        mode: Difficulty measure (one of: likelihood, rollout, hybrid).
        difficulty_span: Likelihood over: solution = every step's tokens (the paper's); answer = only each step's result (after its last '=', inside \\boxed{} when boxed; else the final boxed answer), given everything before it (MATH) (one of: solution, answer).
        n: Rollouts per problem (rollout, hybrid).
        temperature: Sampling temperature for rollouts.
        max_new_tokens: Token limit of each sampled completion.
        weight: Hybrid: weight of the likelihood difficulty.
        backend: Inference engine (one of: hf, vllm).
        seed: Sampling seed.
        tensor_parallel_size: vllm: GPUs one model is split over.
        allow_weak_isolation: Grade APPS programs even when the sandbox cannot prove full isolation (bwrap); the level used is recorded in the rollouts table, the evaluation JSON and its metrics (default: refuse).
        base_model: Model name/path/URI used when no ``policy`` artifact is connected (epoch 0).
        policy: The current policy (the previous epoch's trained model).
    """
    from p3.logs import configure

    configure(epoch=epoch)  # an entry point: the step's log lines go to its pod log, naming the epoch
    from p3.kfp.components._glue import empty_table_unless_written, model_ref
    from p3.contracts import ROLLOUTS
    from p3.configs import from_flat
    from p3.score import ScoreConfig, score

    score(from_flat(ScoreConfig, dict(
        problems=problems.path, model=model_ref(policy, base_model), out=difficulty.path, rollouts_out=rollouts.path,
        mode=mode, difficulty_span=difficulty_span, epoch=epoch, n=n, temperature=temperature,
        max_new_tokens=max_new_tokens, weight=weight,
        backend=backend, seed=seed, tensor_parallel_size=tensor_parallel_size,
        allow_weak_isolation=allow_weak_isolation)))
    empty_table_unless_written(rollouts.path, ROLLOUTS)
