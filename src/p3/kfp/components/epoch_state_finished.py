"""Component: the whole run of a per-epoch pipeline once its training run has done every epoch."""

from kfp import dsl
from kfp.dsl import Metrics, Output

from p3.kfp.components.images import BASE


@dsl.component(base_image=BASE, install_kfp_package=False)
def epoch_state_finished(state_uri: str, training_run: str, epochs: int, metrics: Output[Metrics]):
    """Say in the log and in Metrics that there is nothing left to do (a no-op run).

    Args:
        state_uri: Folder or s3:// URI holding the training runs' states.
        training_run: Name of the training run.
        epochs: The schedule length E.
        metrics: Output: epochs_done (= E), noop (1).
    """
    from p3 import storage
    from p3.kfp import epoch_state
    from p3.logs import get_logger

    state = epoch_state.read(state_uri, training_run, epochs)
    get_logger("state").info(f"training run {training_run!r} finished all {state.epochs} epochs "
                             f"(final model: {state.policy}); this run does nothing")
    values = {"epochs_done": state.epoch, "noop": 1}
    for name, value in values.items():
        metrics.log_metric(name, value)
    storage.write_json(values, metrics.path)  # a real file, as in the evaluator
