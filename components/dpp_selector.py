"""Component: this epoch's training subset, pace-adaptive and diverse (``p3 select``)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from p3.components.images import BASE


@dsl.component(base_image=BASE, install_kfp_package=False)
def dpp_selector(
    problems: Input[Dataset],
    difficulty: Input[Dataset],
    embeddings: Input[Dataset],
    selection: Output[Dataset],
    report: Output[Dataset],
    epoch: int = 0,
    epochs: int = 3,
    strategy: str = "p3",
    budget: int = 100,
    pacing: str = "linear",
    pacing_start: float = 45.0,
    pacing_end: float = 95.0,
    seed: int = 0,
    previous: Input[Dataset] = None,
):
    """Select ``budget`` problems: the eligible (pacing) pool, then a greedy DPP.

    Args:
        problems: Problems table (the pool).
        difficulty: This epoch's difficulty table.
        embeddings: Embeddings of the pool.
        selection: Output selection table (id, rank, round, difficulty, epoch).
        report: Output selection report (JSON: pool, eligible, threshold, rounds, diversity).
        epoch: This epoch, 0-based.
        epochs: Number of epochs (the pacing schedule's length).
        strategy: ``p3``, ``dpp``, ``spl``, ``random``, ``full`` or ``static``.
        budget: Problems to select.
        pacing: Pacing schedule shape (``linear`` …, see ``p3 select --help``).
        pacing_start: Percentile of the first epoch.
        pacing_end: Percentile the schedule ends at.
        seed: Seed (random strategy, tie-free order).
        previous: Last epoch's selection (cross-epoch diversity), when there is one.
    """
    from p3.selection import SelectConfig, select

    select(SelectConfig(problems=problems.path, difficulty=difficulty.path, embeddings=embeddings.path,
                        strategy=strategy, epoch=epoch, epochs=epochs, budget=budget, out=selection.path,
                        previous=previous.path if previous is not None else None, report=report.path,
                        seed=seed, pacing=pacing, pacing_start=pacing_start, pacing_end=pacing_end))
