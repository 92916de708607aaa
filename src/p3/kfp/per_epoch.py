"""The per-epoch pipeline: one pipeline run does ONE epoch of a named training run.

The unrolled pipeline (builder.build) trains E epochs in one run. This one is for a recurring
run ("train P3 one epoch per night"): each run reads the training run's state from object
storage (p3.kfp.epoch_state), does the next epoch and stores the new state::

    load state ─▶ prepare ─┬─ done ──────▶ finished (a no-op: says so in its log and Metrics)
                           ├─ epoch 0 ───▶ score ─▶ embed ─▶ select ─▶ train ─▶ evaluate ─▶ report ─▶ commit
                           └─ epoch k≥1 ─▶ the same, from the stored model, selection, difficulty, report

The epoch-0 branch is the unrolled pipeline's epoch 0 (base model or bootstrapped tiny model, no
previous selection); the other branch takes what the last epoch stored. Selection is told the
schedule length E (a build option, as in the unrolled pipeline), and both branches run the
unrolled pipeline's epoch (:func:`p3.epoch.epoch_flow` with :class:`p3.kfp.builder.PipelineSteps`),
so epoch k of a training run is the same computation as epoch k of the unrolled E-epoch pipeline.

A training run is pinned to what it started with (:data:`PINNED`): epoch 0 stores the values in
the state, and the load step, which runs before every other step, refuses a run whose values
differ, naming each (``budget 40 → 41``). Changing them half way would give a run that is
neither the old one nor a new one. Pinned: every run parameter (PipelineParams) but
:data:`UNPINNED`, and the build options that change what is computed: the task, whether the
starting model is bootstrapped in the pipeline, and the training pod's GPU count (torchrun's
data-parallel width multiplies the global batch). Not pinned, because they may legitimately
differ between the runs of one training run:

- ``training_run`` and ``state_uri``: they name the training run and where it is kept;
- the images (``image_*``): operational; a patched image must be usable mid-run (the project
  pins them by digest, docs/operator-guide.md);
- ``dpp_device``: where DPP runs, not what it selects;
- ``allow_weak_isolation``: a security switch; it decides whether grading may run, not its result;
- ``shards``: a sharded epoch hands selection the table an unsharded one does (shard_merge
  restores the row order); and the other cluster settings (node selection, resources, secrets).

``epochs`` (the schedule length) is pinned too, with its own message (p3.kfp.epoch_state.read).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

from kfp import dsl

from p3 import epoch
from p3.epoch import EpochOutputs, Previous
from p3.kfp import builder
from p3.kfp.builder import BuildOptions, Built, PipelineSteps, TaskSetup, prepare_tasks, preset_defaults
from p3.kfp.components.epoch_state_commit import epoch_state_commit
from p3.kfp.components.epoch_state_finished import epoch_state_finished
from p3.kfp.components.epoch_state_load import epoch_state_load
from p3.kfp.params import PipelineParams

# Run parameters that may differ between the runs of one training run (module docstring: why).
UNPINNED = frozenset({"image_base", "image_vllm", "image_train", "dpp_device", "allow_weak_isolation"})
# The run parameters that define a training run: epoch_state_load takes each as an input of its own.
PINNED = tuple(f.name for f in dataclasses.fields(PipelineParams) if f.name not in UNPINNED)

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


def pinned(opts: BuildOptions, p: Any) -> dict[str, Any]:
    """What defines a training run: the build options that change the result and the PINNED run
    parameters of ``p`` (a PipelineParams of values, or of pipeline channels when wiring)."""
    return {"task": opts.task, "bootstrap_tiny": opts.bootstrap_tiny, "train_gpus": builder._gpus(opts, "train"),
            **{name: getattr(p, name) for name in PINNED}}


def _wire(opts: BuildOptions, p: Any, state_params: dict[str, Any], epoch_of_task: dict[str, int],
          display_names: dict[str, str]) -> None:
    setup = TaskSetup(opts, p, epoch_of_task, display_names)
    state = dict(**state_params, epochs=opts.epochs)
    load = _state_step(setup, setup.run(epoch_state_load)(**state, **pinned(opts, p)), "load state")
    setup.first = load  # a run that does not fit the training run does no work
    pool, test, policy = prepare_tasks(opts, p, setup)
    with dsl.If(load.outputs["done"] == True, name="finished"):  # noqa: E712 - a pipeline condition
        _state_step(setup, setup.run(epoch_state_finished)(**state), "finished: nothing to do")
    # every run embeds (with its policy when embedder=policy; a fixed embedder gives the same table each run)
    steps = PipelineSteps(opts, p, setup, pool, test)
    with dsl.Elif(load.outputs["epoch"] == 0, name="first-epoch"):
        _commit(setup, state, load, 0, epoch.epoch_flow(steps, 0, policy))
    with dsl.Else(name="next-epoch"):
        k = load.outputs["epoch"]
        last = Previous(load.outputs["previous"], load.outputs["previous_difficulty"], load.outputs["previous_run"])
        _commit(setup, state, load, k, epoch.epoch_flow(steps, k, load.outputs["policy"], last))


def _state_step(setup, task, what: str):
    return setup(task, -1, what, cache=False)  # never cached: the state changes


def _commit(setup, state: dict[str, Any], load, e: Any, out: EpochOutputs) -> None:
    _state_step(setup, setup.run(epoch_state_commit)(**state, epoch=e, run_parameters=load.outputs["run_parameters"],
                                                     policy=out.policy, selection=out.selection,
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
    # the load step checks this too; here a run that does not fit its training run stops before kfp.local starts
    run = PipelineParams(**{k: v for k, v in args.items() if k not in STATE_PARAMS})
    epoch_state.read(args["state_uri"], args["training_run"], opts.epochs, params=pinned(opts, run))
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
