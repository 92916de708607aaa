"""Component: read where a per-epoch training run stands and hand the next epoch its inputs."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Model, Output

from p3.kfp.components.images import BASE


@dsl.component(base_image=BASE, install_kfp_package=False)
def epoch_state_load(
    state_uri: str,
    training_run: str,
    epochs: int,
    policy: Output[Model],
    previous: Output[Dataset],
    previous_difficulty: Output[Dataset],
    previous_run: Output[Artifact],
) -> NamedTuple("EpochStateLoaded", [("epoch", int), ("done", bool)]):
    """Read the state of ``training_run`` under ``state_uri`` (p3.kfp.epoch_state).

    From epoch 1 on, the outputs are copies of what the last epoch left (its trained model,
    selection, difficulty and report folder); before epoch 0 and after the last epoch they are
    placeholders that no step reads.

    Args:
        state_uri: Folder or s3:// URI holding the training runs' states.
        training_run: Name of the training run (its folder under ``state_uri``).
        epochs: The schedule length E (fixed when the training run starts).
        policy: Output: the model the next epoch starts from (epoch >= 1).
        previous: Output: the last epoch's selection (epoch >= 1).
        previous_difficulty: Output: the last epoch's difficulty table (epoch >= 1).
        previous_run: Output: the last epoch's report folder (epoch >= 1).

    Returns:
        epoch: The epoch this run trains (the schedule length E once the training run is done).
        done: Whether all E epochs are done (this run is then a no-op).
    """
    import os
    from collections import namedtuple

    from p3 import storage
    from p3.kfp import epoch_state
    from p3.kfp.components._glue import copy_tree
    from p3.logs import get_logger

    log = get_logger("state")
    state = epoch_state.read(state_uri, training_run, epochs)
    if state.done:
        log.info(f"training run {training_run!r}: all {state.epochs} epochs done, nothing to do")
    elif state.epoch == 0:
        log.info(f"training run {training_run!r}: starting epoch 0 of {state.epochs}")
    else:
        log.info(f"training run {training_run!r}: continuing with epoch {state.epoch} of {state.epochs} "
                 f"from {state.policy}")
        copy_tree(state.policy, policy.path)
        storage.copy_file(state.selection, previous.path)
        storage.copy_file(state.difficulty, previous_difficulty.path)
        copy_tree(state.report, previous_run.path)
    for out in (policy.path, previous_run.path):  # a cluster's launcher uploads every declared output
        os.makedirs(out, exist_ok=True)
    for out in (previous.path, previous_difficulty.path):
        if not os.path.exists(out):
            open(out, "wb").close()
    return namedtuple("EpochStateLoaded", ["epoch", "done"])(state.epoch, state.done)
