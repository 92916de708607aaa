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

import inspect
from typing import Any, NamedTuple

from kfp import dsl

from p3.kfp import builder
from p3.kfp.builder import PARAMS, BuildOptions, Built, preset_defaults
from p3.kfp.components.bootstrap_tiny_model import bootstrap_tiny_model
from p3.kfp.components.dpp_selector import dpp_selector
from p3.kfp.components.embedder import embedder
from p3.kfp.components.epoch_report import epoch_report
from p3.kfp.components.epoch_state_commit import epoch_state_commit
from p3.kfp.components.epoch_state_finished import epoch_state_finished
from p3.kfp.components.epoch_state_load import epoch_state_load
from p3.kfp.components.evaluator import evaluator
from p3.kfp.components.prepare_data import prepare_data
from p3.kfp.components.rollout_scorer import rollout_scorer
from p3.kfp.components.trainer import trainer

STATE_PARAMS: dict[str, tuple[type, str]] = {
    "training_run": (str, "name of the training run this run continues (its folder under state_uri)"),
    "state_uri": (str, "folder or s3:// URI where training runs keep their state between pipeline runs"),
}


def build_per_epoch(opts: BuildOptions, defaults: dict[str, Any] | None = None) -> Built:
    """The one-epoch pipeline for ``opts`` (``opts.epochs`` = the training run's schedule length)."""
    defaults = {"training_run": f"p3-{opts.task}", "state_uri": "",
                **(defaults or preset_defaults(opts.task, opts.preset))}
    names = {**PARAMS, **STATE_PARAMS}
    epoch_of_task: dict[str, int] = {}
    display_names: dict[str, str] = {}

    def body(*args):
        _wire(opts, dict(zip(names, args)), epoch_of_task, display_names)

    body.__name__ = f"p3_{opts.task}_per_epoch"
    body.__doc__ = "\n".join(
        [f"P3 on {opts.task.upper()}, one epoch per run of a {opts.epochs}-epoch training run.", "", "Args:"]
        + [f"    {n}: {h}" for n, (_, h) in names.items()])
    body.__signature__ = inspect.Signature(
        [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=defaults[n], annotation=tp)
         for n, (tp, _) in names.items()])
    pipeline = dsl.pipeline(name=f"p3-{opts.task}-per-epoch",
                            display_name=f"P3 {opts.task.upper()} (1 epoch per run, {opts.epochs} epochs)")(body)
    return Built(pipeline, epoch_of_task, display_names, defaults)


class Previous(NamedTuple):
    """What epoch e >= 1 takes from epoch e-1 besides the model."""

    selection: Any
    difficulty: Any
    run: Any


class EpochOutputs(NamedTuple):
    policy: Any
    selection: Any
    difficulty: Any
    run: Any


def task_setup(opts: BuildOptions, p: dict[str, Any], epoch_of_task: dict[str, int], display_names: dict[str, str]):
    """``setup(task, kind, epoch, what, image)``: name, image, env, caching and cluster settings of one task."""

    def setup(task, kind: str, epoch, what: str, image: str, cache: bool | None = None):
        known = isinstance(epoch, int)
        epoch_of_task[task.name] = epoch if known else -2
        display_names[task.name] = f"epoch {epoch}: {what}" if known and epoch >= 0 else (
            what if known else f"epoch k: {what}")
        task.set_display_name(display_names[task.name])
        task.set_container_image(p[image])
        task.set_env_variable("P3_EPOCH", str(epoch) if known and epoch >= 0 else "")
        if cache is None:
            cache = opts.cache_everything or kind in builder.DETERMINISTIC
        task.set_caching_options(enable_caching=cache)
        if opts.cluster is not None:
            builder._apply_cluster(task, kind, opts.cluster)
        return task

    return setup


def prepare_tasks(opts: BuildOptions, p: dict[str, Any], setup):
    """(pool, test set, starting policy or None = base model by name)."""
    prep = setup(prepare_data(task=opts.task, source=p["source"], split=p["split"], hf_config=p["hf_config"],
                              limit=p["limit"], seed=p["seed"], synth_n=p["synth_n"]),
                 "prepare", -1, "prepare train", "image_base")
    pool = prep.outputs["problems"]
    test = setup(prepare_data(task=opts.task, source=p["test_source"], split=p["test_split"],
                              hf_config=p["hf_config"], limit=p["test_limit"], seed=p["seed"],
                              synth_n=p["test_synth_n"]),
                 "prepare", -1, "prepare test", "image_base").outputs["problems"]
    policy = None
    if opts.bootstrap_tiny:
        boot = setup(bootstrap_tiny_model(problems=pool, steps=p["tiny_steps"], seed=p["seed"]),
                     "bootstrap", -1, "bootstrap tiny model", "image_base")
        policy = boot.outputs["model"]
    return pool, test, policy


def epoch_tasks(opts: BuildOptions, p: dict[str, Any], setup, pool, test, e, policy,
                previous: Previous | None = None) -> EpochOutputs:
    """One epoch's score -> embed -> select -> train -> evaluate -> report (shards=1)."""
    if opts.shards != 1:
        raise ValueError("the per-epoch pipeline scores and embeds in one task per step (--shards 1)")

    def with_policy(**kw):
        return dict(kw, policy=policy) if policy is not None else dict(kw, base_model=p["base_model"])

    score_kw = dict(epoch=e, mode=p["difficulty_mode"], n=p["rollouts_n"], temperature=p["temperature"],
                    max_new_tokens=p["max_new_tokens"], weight=p["hybrid_weight"], backend=p["backend"],
                    seed=p["seed"], tensor_parallel_size=builder._gpus(opts, "score"))
    difficulty = setup(rollout_scorer(problems=pool, **with_policy(**score_kw)),
                       "score", e, "score", "image_vllm").outputs["difficulty"]
    embeddings = setup(embedder(problems=pool, **with_policy(embedder=p["embedder"])),
                       "embed", e, "embed", "image_vllm").outputs["embeddings"]
    sel_kw = dict(problems=pool, difficulty=difficulty, embeddings=embeddings, epoch=e, epochs=opts.epochs,
                  **{k: p[k] for k in PARAMS if k in dpp_selector.component_spec.inputs})
    if previous is not None:
        sel_kw.update(previous=previous.selection, previous_difficulty=previous.difficulty)
    select = setup(dpp_selector(**sel_kw), "select", e, "select", "image_base")
    train = setup(trainer(problems=pool, selection=select.outputs["selection"],
                          **with_policy(lora=p["lora"], full=p["full_finetune"], lr=p["lr"],
                                        max_steps=p["max_steps"], batch_size=p["batch_size"],
                                        max_len=p["max_len"], seed=p["seed"])),
                  "train", e, "train", "image_train")
    model = train.outputs["model"]
    evaluation = setup(evaluator(problems=test, policy=model, epoch=e, n=p["eval_n"], k=p["eval_k"],
                                 backend=p["backend"], max_new_tokens=p["max_new_tokens"], seed=p["seed"],
                                 tensor_parallel_size=builder._gpus(opts, "evaluate")),
                       "evaluate", e, "evaluate", "image_vllm")
    rep_kw = dict(problems=pool, difficulty=difficulty, embeddings=embeddings,
                  selection=select.outputs["selection"], selection_report=select.outputs["report"],
                  evaluation=evaluation.outputs["results"], epoch=e, seed=p["seed"])
    if previous is not None:
        rep_kw["previous_run"] = previous.run
    report = setup(epoch_report(**rep_kw), "report", e, "report", "image_base")
    return EpochOutputs(model, select.outputs["selection"], difficulty, report.outputs["run"])


def _wire(opts: BuildOptions, p: dict[str, Any], epoch_of_task: dict[str, int], display_names: dict[str, str]):
    setup = task_setup(opts, p, epoch_of_task, display_names)
    pool, test, policy = prepare_tasks(opts, p, setup)
    state = dict(state_uri=p["state_uri"], training_run=p["training_run"], epochs=opts.epochs)
    load = setup_state(setup, epoch_state_load(**state), "load state")  # never cached: the state changes
    with dsl.If(load.outputs["done"] == True, name="finished"):  # noqa: E712 - a pipeline condition, not Python
        setup_state(setup, epoch_state_finished(**state), "finished: nothing to do")
    with dsl.Elif(load.outputs["epoch"] == 0, name="first-epoch"):
        out = epoch_tasks(opts, p, setup, pool, test, 0, policy)
        _commit(setup, state, 0, out)
    with dsl.Else(name="next-epoch"):
        out = epoch_tasks(opts, p, setup, pool, test, load.outputs["epoch"], load.outputs["policy"],
                                  previous=Previous(load.outputs["previous"], load.outputs["previous_difficulty"],
                                                            load.outputs["previous_run"]))
        _commit(setup, state, load.outputs["epoch"], out)


def setup_state(setup, task, what: str):
    return setup(task, "state", -1, what, "image_base", cache=False)


def _commit(setup, state: dict[str, Any], epoch, out: EpochOutputs) -> None:
    task = epoch_state_commit(**state, epoch=epoch, policy=out.policy, selection=out.selection,
                              difficulty=out.difficulty, run=out.run)
    setup_state(setup, task, "store state")




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
