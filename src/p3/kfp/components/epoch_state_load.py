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
    task: str,
    bootstrap_tiny: bool,
    train_gpus: int,
    # the run parameters that define the training run (p3.kfp.per_epoch.PINNED), in PipelineParams' order
    base_model: str, source: str, split: str, hf_config: str, test_source: str, test_split: str, limit: int,
    test_limit: int, synth_n: int, test_synth_n: int, tiny_steps: int, budget: int, strategy: str,
    pacing_shape: str, pacing_mode: str, pacing_start: float, pacing_end: float, pacing_lower_start: float,
    pacing_lower_end: float, momentum_alpha: float, diversity_weight: float, diversity_previous: int,
    dpp_quality: str, reserve: float, dpp_precision: str, difficulty_mode: str, difficulty_span: str,
    rollouts_n: int, temperature: float, max_new_tokens: int, hybrid_weight: float, backend: str, embedder: str,
    lora: str, full_finetune: bool, qlora: str, lr: float, max_steps: int, batch_size: int, max_len: int,
    eval_n: int, eval_k: int, seed: int,
    policy: Output[Model],
    previous: Output[Dataset],
    previous_difficulty: Output[Dataset],
    previous_run: Output[Artifact],
) -> NamedTuple("EpochStateLoaded", [("epoch", int), ("done", bool), ("run_parameters", str)]):
    """Read the state of ``training_run`` under ``state_uri`` (p3.kfp.epoch_state) and check that
    this run has the run parameters the training run started with (a new one records them).

    Every run parameter that defines the training run is an input of its own: the KFP backend
    hands a component whole parameter values only (a string that embeds several, an f-string, is
    resolved by kfp.local but passed on verbatim by the backend's driver).

    From epoch 1 on, the outputs are copies of what the last epoch left (its trained model,
    selection, difficulty and report folder); before epoch 0 and after the last epoch they are
    placeholders that no step reads.

    Args:
        state_uri: Folder or s3:// URI holding the training runs' states.
        training_run: Name of the training run (its folder under ``state_uri``).
        epochs: The schedule length E (fixed when the training run starts).
        task: Build option (pinned): the task.
        bootstrap_tiny: Build option (pinned): the starting model is bootstrapped in the pipeline.
        train_gpus: Build option (pinned): GPUs of the training pod (torchrun's data-parallel width).
        base_model: Run parameter (pinned).
        source: Run parameter (pinned).
        split: Run parameter (pinned).
        hf_config: Run parameter (pinned).
        test_source: Run parameter (pinned).
        test_split: Run parameter (pinned).
        limit: Run parameter (pinned).
        test_limit: Run parameter (pinned).
        synth_n: Run parameter (pinned).
        test_synth_n: Run parameter (pinned).
        tiny_steps: Run parameter (pinned).
        budget: Run parameter (pinned).
        strategy: Run parameter (pinned).
        pacing_shape: Run parameter (pinned).
        pacing_mode: Run parameter (pinned).
        pacing_start: Run parameter (pinned).
        pacing_end: Run parameter (pinned).
        pacing_lower_start: Run parameter (pinned).
        pacing_lower_end: Run parameter (pinned).
        momentum_alpha: Run parameter (pinned).
        diversity_weight: Run parameter (pinned).
        diversity_previous: Run parameter (pinned).
        dpp_quality: Run parameter (pinned).
        reserve: Run parameter (pinned).
        dpp_precision: Run parameter (pinned).
        difficulty_mode: Run parameter (pinned).
        difficulty_span: Run parameter (pinned).
        rollouts_n: Run parameter (pinned).
        temperature: Run parameter (pinned).
        max_new_tokens: Run parameter (pinned).
        hybrid_weight: Run parameter (pinned).
        backend: Run parameter (pinned).
        embedder: Run parameter (pinned).
        lora: Run parameter (pinned).
        full_finetune: Run parameter (pinned).
        qlora: Run parameter (pinned).
        lr: Run parameter (pinned).
        max_steps: Run parameter (pinned).
        batch_size: Run parameter (pinned).
        max_len: Run parameter (pinned).
        eval_n: Run parameter (pinned).
        eval_k: Run parameter (pinned).
        seed: Run parameter (pinned).
        policy: Output: the model the next epoch starts from (epoch >= 1).
        previous: Output: the last epoch's selection (epoch >= 1).
        previous_difficulty: Output: the last epoch's difficulty table (epoch >= 1).
        previous_run: Output: the last epoch's report folder (epoch >= 1).

    Returns:
        epoch: The epoch this run trains (the schedule length E once the training run is done).
        done: Whether all E epochs are done (this run is then a no-op).
        run_parameters: The pinned values as JSON (the commit step records them at epoch 0).
    """
    arguments = dict(locals())  # first: exactly the arguments
    import json
    import os
    from collections import namedtuple

    from p3 import storage
    from p3.kfp import epoch_state
    from p3.kfp.components._glue import copy_tree
    from p3.logs import get_logger

    log = get_logger("state")
    not_pinned = {"state_uri", "training_run", "epochs", "policy", "previous", "previous_difficulty", "previous_run"}
    pinned = {name: value for name, value in arguments.items() if name not in not_pinned}
    state = epoch_state.read(state_uri, training_run, epochs, params=pinned)
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
    loaded = namedtuple("EpochStateLoaded", ["epoch", "done", "run_parameters"])
    return loaded(state.epoch, state.done, json.dumps(epoch_state.pin(pinned)[0], sort_keys=True))
