"""The per-epoch pipeline: one pipeline run does ONE epoch of a named training run.

The unrolled pipeline (builder.build) trains E epochs in one run. This one is for a recurring
run ("train P3 one epoch per night"): each run reads the training run's state from object
storage (p3.kfp.epoch_state), does the next epoch and stores the new state::

    prepare ─▶ load state ─┬─ done ──────▶ finished (a no-op: says so in its log and Metrics)
                           ├─ epoch 0 ───▶ score ─▶ embed ─▶ select ─▶ train ─▶ evaluate ─▶ report ─▶ commit
                           └─ epoch k≥1 ─▶ the same, from the stored model, selection, difficulty, report

The epoch-0 branch is the unrolled pipeline's epoch 0 (base model or bootstrapped tiny model, no
previous selection); the other branch takes what the last epoch stored. Selection is told the
schedule length E (a build option, as in the unrolled pipeline), so epoch k of a training run is
the same computation as epoch k of the unrolled E-epoch pipeline.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

from kfp import dsl

from p3.kfp import builder
from p3.kfp.builder import BuildOptions, Built, EpochOutputs, Previous, TaskSetup, epoch_tasks, prepare_tasks, preset_defaults
from p3.kfp.components.epoch_state_commit import epoch_state_commit
from p3.kfp.components.epoch_state_finished import epoch_state_finished
from p3.kfp.components.epoch_state_load import epoch_state_load
from p3.kfp.params import PipelineParams

# The per-epoch pipeline's own run parameters, after PipelineParams': name -> (type, help).
STATE_PARAMS: dict[str, tuple[type, str]] = {
    "training_run": (str, "name of the training run this run continues (its folder under state_uri)"),
    "state_uri": (str, "folder or s3:// URI where training runs keep their state between pipeline runs"),
}


def build_per_epoch(opts: BuildOptions, defaults: dict[str, Any] | None = None) -> Built:
    """The one-epoch pipeline for ``opts`` (``opts.epochs`` = the training run's schedule length)."""
    defaults = {"training_run": f"p3-{opts.task}", "state_uri": "",
                **(defaults or preset_defaults(opts.task, opts.preset))}
    n = len(dataclasses.fields(PipelineParams))
    epoch_of_task: dict[str, int] = {}
    display_names: dict[str, str] = {}

    def body(*channels):
        # kfp passes one channel per parameter in signature order: PipelineParams', then the state's
        state = dict(zip(STATE_PARAMS, channels[n:]))
        _wire(opts, PipelineParams(*channels[:n]), state, epoch_of_task, display_names)

    sig = builder._signature(PipelineParams(**{k: v for k, v in defaults.items() if k not in STATE_PARAMS}),
                             inspect.Signature.empty)
    extra = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=defaults[name], annotation=tp)
             for name, (tp, _) in STATE_PARAMS.items()]
    body.__name__ = f"p3_{opts.task}_per_epoch"
    body.__doc__ = "\n".join(
        [f"P3 on {opts.task.upper()}, one epoch per run of a {opts.epochs}-epoch training run.", "", "Args:"]
        + [f"    {f.name}: {f.metadata['help']}" for f in dataclasses.fields(PipelineParams)]
        + [f"    {name}: {help_}" for name, (_, help_) in STATE_PARAMS.items()])
    body.__signature__ = sig.replace(parameters=[*sig.parameters.values(), *extra])
    pipeline = dsl.pipeline(name=f"p3-{opts.task}-per-epoch",
                            display_name=f"P3 {opts.task.upper()} (1 epoch per run, {opts.epochs} epochs)")(body)
    return Built(pipeline, epoch_of_task, display_names, defaults)


def _wire(opts: BuildOptions, p: Any, state_params: dict[str, Any], epoch_of_task: dict[str, int],
          display_names: dict[str, str]) -> None:
    setup = TaskSetup(opts, p, epoch_of_task, display_names)
    pool, test, policy = prepare_tasks(opts, p, setup)
    state = dict(**state_params, epochs=opts.epochs)
    load = _state_step(setup, setup.run(epoch_state_load)(**state), "load state")
    with dsl.If(load.outputs["done"] == True, name="finished"):  # noqa: E712 - a pipeline condition
        _state_step(setup, setup.run(epoch_state_finished)(**state), "finished: nothing to do")
    with dsl.Elif(load.outputs["epoch"] == 0, name="first-epoch"):
        _commit(setup, state, 0, epoch_tasks(opts, p, setup, pool, test, 0, policy))
    with dsl.Else(name="next-epoch"):
        epoch = load.outputs["epoch"]
        last = Previous(load.outputs["previous"], load.outputs["previous_difficulty"], load.outputs["previous_run"])
        _commit(setup, state, epoch, epoch_tasks(opts, p, setup, pool, test, epoch, load.outputs["policy"], last))


def _state_step(setup, task, what: str):
    return setup(task, -1, what, cache=False)  # never cached: the state changes


def _commit(setup, state: dict[str, Any], epoch: Any, out: EpochOutputs) -> None:
    _state_step(setup, setup.run(epoch_state_commit)(**state, epoch=epoch, policy=out.policy, selection=out.selection,
                                          difficulty=out.difficulty, run=out.run), "store state")


def run_local(opts: BuildOptions, params: dict[str, Any], run_dir: str) -> dict[str, Any]:
    """One run of the per-epoch pipeline with kfp.local (every step but the state steps cached in
    ``run_dir``, as the unrolled local run does); returns the training run's state afterwards.

    Raises what the run raised (EpochConflict when another run stored this epoch first)."""
    import contextlib
    import os
    import time
    import warnings
    from dataclasses import asdict

    from kfp import local

    from p3.kfp import epoch_state

    opts = BuildOptions(**{**asdict(opts), "cluster": None, "cache_everything": True})
    built = build_per_epoch(opts)
    args = {**built.defaults, **params}
    if not args["state_uri"]:
        raise ValueError("state_uri: set the folder or s3:// URI of the training runs' state")
    os.makedirs(run_dir, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=os.path.join(run_dir, "pipeline_root"),
               raise_on_error=True, enable_caching=True, cache_root=os.path.join(run_dir, "cache"))
    start = time.perf_counter()
    with open(os.path.join(run_dir, "pipeline.log"), "a") as log, contextlib.redirect_stdout(log), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        built.pipeline(**args)
    state = epoch_state.read(args["state_uri"], args["training_run"], opts.epochs)
    return {"state": state, "wall_s": round(time.perf_counter() - start, 1)}
