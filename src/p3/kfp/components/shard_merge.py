"""Component: merge per-shard tables (difficulty, embeddings) back into one."""

from typing import List

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from p3.kfp.components.images import BASE


@dsl.component(base_image=BASE, install_kfp_package=False)
def shard_merge(parts: Input[List[Dataset]], problems: Input[Dataset], merged: Output[Dataset],
                epoch: int = -1):
    """Concatenate ``parts`` in the row order of ``problems``, so that a sharded run
    hands selection exactly the table an unsharded run would.

    Args:
        parts: The per-shard tables (collected from the shard loop).
        problems: The unsharded problems table, for the row order.
        merged: Output: one table with every shard's rows.
        epoch: Epoch named in the log lines (the per-epoch pipeline knows it only at run time; -1 = as P3_EPOCH says).
    """
    from p3.logs import configure

    configure(epoch=epoch)  # an entry point: the step's log lines go to its pod log, naming the epoch
    from p3.kfp.components._glue import concat_tables
    from p3.logs import get_logger

    rows = concat_tables([p.path for p in parts], merged.path, order_by=problems.path)
    get_logger("merge").info(f"merged {len(parts)} shards: {rows} rows")
