"""Component: store what one epoch of a per-epoch training run produced and advance its state."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from p3.kfp.components.images import BASE


@dsl.component(base_image=BASE, install_kfp_package=False)
def epoch_state_commit(
    state_uri: str,
    training_run: str,
    epochs: int,
    epoch: int,
    run_parameters: str,
    policy: Input[Model],
    selection: Input[Dataset],
    difficulty: Input[Dataset],
    run: Input[Artifact],
    metrics: Output[Metrics],
):
    """Copy the epoch's outputs under the training run's folder (a fresh attempt folder), then
    write the next state with a create-only write. When another run already advanced past
    ``epoch`` this step fails with EpochConflict and the state stays as that run left it.

    Args:
        state_uri: Folder or s3:// URI holding the training runs' states.
        training_run: Name of the training run.
        epochs: The schedule length E.
        epoch: The epoch this run did (what epoch_state_load read).
        run_parameters: The pinned run parameters as JSON (epoch_state_load's output), recorded at epoch 0.
        policy: This epoch's trained model.
        selection: This epoch's selection.
        difficulty: This epoch's difficulty table.
        run: This epoch's report folder (the run report so far).
        metrics: Output: epoch, epochs_done, finished (1 after the last epoch).
    """
    import json
    import os

    from p3 import storage
    from p3.kfp import epoch_state
    from p3.kfp.components._glue import copy_tree
    from p3.logs import configure, get_logger

    configure(epoch=epoch)  # the epoch is a pipeline value here: name it in the log lines
    state = epoch_state.read(state_uri, training_run, epochs, params=json.loads(run_parameters))
    if state.epoch != epoch:
        raise epoch_state.EpochConflict(f"epoch {epoch} of training run {training_run!r} was already done by another "
                                        f"run (it is at epoch {state.epoch}); this run's outputs are discarded")
    attempt = epoch_state.new_attempt()
    out = epoch_state.attempt_dir(state_uri, state, attempt)
    copy_tree(policy.path, f"{out}/model")
    storage.copy_file(selection.path, f"{out}/selection.parquet")
    storage.copy_file(difficulty.path, f"{out}/difficulty.parquet")
    copy_tree(run.path, f"{out}/run")
    new = epoch_state.commit(state_uri, state, attempt=attempt, run_id=os.environ.get("KFP_RUN_ID", ""),
                             policy=f"{out}/model", selection=f"{out}/selection.parquet",
                             difficulty=f"{out}/difficulty.parquet", report=f"{out}/run")
    get_logger("state").info(f"training run {training_run!r}: epoch {epoch} stored, {new.epoch} of {new.epochs} done")
    values = {"epoch": epoch, "epochs_done": new.epoch, "finished": int(new.done)}
    for name, value in values.items():
        metrics.log_metric(name, value)
    storage.write_json(values, metrics.path)  # a real file, as in the evaluator
