"""Component: one shard of a problems table, for scoring and embedding in parallel."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from p3.kfp.components.images import BASE


@dsl.component(base_image=BASE, install_kfp_package=False)
def shard_split(problems: Input[Dataset], shard: Output[Dataset], index: int = 0, count: int = 1,
                epoch: int = -1):
    """Write rows ``index, index+count, …`` of ``problems`` (round-robin shards).

    Args:
        problems: The problems table to split.
        shard: Output: this shard's rows (same schema).
        index: Which shard, 0-based.
        count: How many shards in all.
        epoch: Epoch named in the log lines (the per-epoch pipeline knows it only at run time; -1 = as P3_EPOCH says).
    """
    from p3.logs import configure

    configure(epoch=epoch)  # an entry point: the step's log lines go to its pod log, naming the epoch
    from p3.kfp.components._glue import split_rows
    from p3.logs import get_logger

    rows = split_rows(problems.path, index, count, shard.path)
    get_logger("shard").info(f"shard {index}/{count}: {rows} rows")
