"""Every pipeline step by its one name: the kind, the component and the ``p3`` command.

A step's kind is what a build keys the cluster settings on (requests, limits, retries
and deadline in :mod:`p3.kfp.resources`, ``--resources KIND:…``, ``--gpus KIND=N``,
caching, the model cache and the sandbox label in :mod:`p3.kfp.builder`) and the
settings a component takes (:data:`p3.kfp.params.STEP_CONFIGS`). A step that is also a
``p3`` command is named by that command's verb: the kind is the verb, the component the
one who does it (``score`` / ``scorer``), so ``p3 score``, the scorer component and the
``score`` resources are one step under one name. Steps that exist only as pipeline
plumbing (staging the base model, sharding, the per-epoch state) have no command.

The library module is named after what it holds (``p3.selection``, ``p3.sources``,
``p3.tiny``); :data:`p3.cli.COMMANDS` says which module and function each verb runs.

The builder looks a task's kind up here by its component (:func:`kind_of`), so a task
cannot be given another step's resources, and tests/test_steps.py checks this table
against the CLI, the components, the resources and the step configs.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    """One pipeline step's names."""

    kind: str  # resources, caching and cluster settings are per kind
    component: str  # module and function in p3.kfp.components
    verbs: tuple[str, ...] = ()  # the `p3` commands the component runs; the first names the step


STEPS: tuple[Step, ...] = (
    # a synth: source makes mini-MATH (`p3 data synth`) instead of reading a dataset
    Step("prepare", "preparer", ("data prepare", "data synth")),
    Step("stage", "model_stager"),
    Step("bootstrap", "bootstrapper", ("model bootstrap",)),
    Step("shard", "shard_split"),
    Step("merge", "shard_merge"),
    Step("score", "scorer", ("score",)),
    Step("embed", "embedder", ("embed",)),
    Step("select", "selector", ("select",)),
    Step("train", "trainer", ("train",)),
    Step("evaluate", "evaluator", ("evaluate",)),
    Step("report", "reporter", ("report",)),
    Step("state", "epoch_state_load"),
    Step("state", "epoch_state_commit"),
    Step("state", "epoch_state_finished"),
)

KINDS: tuple[str, ...] = tuple(dict.fromkeys(s.kind for s in STEPS))
_BY_COMPONENT = {s.component: s for s in STEPS}


def kind_of(component: str) -> str:
    """The step kind of a component, by its module name (``scorer``) or KFP name (``model-stager``)."""
    step = _BY_COMPONENT.get(component.replace("-", "_"))
    if step is None:
        raise KeyError(f"component {component!r} is not a pipeline step (p3.kfp.steps.STEPS)")
    return step.kind
