"""Component: this epoch's training subset, pace-adaptive and diverse (``p3 select``)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from p3.kfp.components.images import BASE


@dsl.component(base_image=BASE, install_kfp_package=False)
def selector(
    problems: Input[Dataset],
    difficulty: Input[Dataset],
    embeddings: Input[Dataset],
    selection: Output[Dataset],
    report: Output[Dataset],
    epoch: int = 0,
    epochs: int = 5,
    strategy: str = "p3",
    budget: int = 10000,
    pacing_shape: str = "linear",
    pacing_mode: str = "threshold",
    pacing_start: float = 45.0,
    pacing_end: float = 95.0,
    pacing_lower_start: float = 0.0,
    pacing_lower_end: float = 50.0,
    momentum_alpha: float = 0.1,
    diversity_weight: float = 0.0,
    diversity_previous: int = 64,
    quality: str = "difficulty",
    reserve: float = 0.0,
    precision: str = "auto",
    device: str = "auto",
    seed: int = 0,
    previous: Input[Dataset] = None,
    previous_difficulty: Input[Dataset] = None,
):
    """Select ``budget`` problems by ``strategy`` (p3: the eligible pool by pacing, then a greedy DPP).

    Args:
        problems: Problems table (the pool).
        difficulty: This epoch's difficulty table.
        embeddings: Embeddings of the pool.
        selection: Output selection table (id, rank, round, difficulty, epoch).
        report: Output selection report (JSON: pool, eligible, threshold, rounds, diversity).
        epoch: This epoch, 0-based.
        epochs: Number of epochs E of the pacing schedule.
        strategy: Selection strategy (one of: random, full, spl, dpp, p3, static).
        budget: Problems to select (paper: 10,000 per epoch on MATH).
        pacing_shape: Pacing schedule shape (one of: linear, root, geometric).
        pacing_mode: Threshold: d ≤ pct; band: lower ≤ d ≤ pct; momentum: d + α(d − d_prev) ≤ pct
            (one of: threshold, band, momentum).
        pacing_start: Pacing percentile at epoch 0.
        pacing_end: Pacing percentile approached at the last epoch (pct(e) = start + e·(end−start)/E).
        pacing_lower_start: Band mode: lower percentile at epoch 0.
        pacing_lower_end: Band mode: lower percentile approached at the last epoch.
        momentum_alpha: Momentum mode: α in d + α(d − d_prev).
        diversity_weight: Cross-epoch diversity: weight w in [0,1] of conditioning on the previous picks (0 = off, 1 = exact conditional DPP).
        diversity_previous: Cross-epoch diversity: condition on this many first previous picks (≤ embedding dim).
        quality: DPP item quality q (learnability: 4p(1-p), p = 1 - difficulty) (one of: difficulty, easiness, uniform,
            learnability).
        reserve: Fraction of the budget picked uniformly at random from the rest of the pool after the strategy's picks (0 = off).
        precision: DPP screening precision (auto: float64 up to 2^21 matrix entries, else float32 screening with exact float64 decisions)
            (one of: auto, float64, float32).
        device: DPP device: auto (CUDA when present, else cpu), cpu (torch's CPU kernels for big float32 screens, else numpy), numpy, cuda, cuda:N.
        seed: Seed of the random strategies and the random diversity baseline.
        previous: Last epoch's selection (cross-epoch diversity), when there is one.
        previous_difficulty: Last epoch's difficulty table (momentum pacing), when there is one.
    """
    from p3.logs import configure

    configure(epoch=epoch)  # an entry point: the step's log lines go to its pod log, naming the epoch
    from p3.selection import SelectConfig, select

    select(SelectConfig(
        problems=problems.path, difficulty=difficulty.path, embeddings=embeddings.path, out=selection.path,
        report=report.path, strategy=strategy, epoch=epoch, epochs=epochs, budget=budget, seed=seed,
        pacing_shape=pacing_shape, pacing_mode=pacing_mode, pacing_start=pacing_start, pacing_end=pacing_end,
        pacing_lower_start=pacing_lower_start, pacing_lower_end=pacing_lower_end, momentum_alpha=momentum_alpha,
        diversity_weight=diversity_weight, diversity_previous=diversity_previous, quality=quality,
        reserve=reserve, precision=precision, device=device,
        previous=previous.path if previous is not None else None,
        previous_difficulty=previous_difficulty.path if previous_difficulty is not None else None,
    ))
