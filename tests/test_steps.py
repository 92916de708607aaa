"""One name per step: the kind, the component and the ``p3`` command agree (p3.kfp.steps).

The table in p3.kfp.steps is checked against what it names: the CLI's commands, the
component modules, the resources, the step configs and the operator guide's component
table; and a cluster build is checked to give every task the resources of its own
component's kind. Every component argument is read by the component's body: an input no
code reads is an interface that says more than the step does (the reporter took the
embeddings it never read)."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import re
import textwrap
from pathlib import Path

import pytest
import yaml
from kfp import dsl

from p3 import cli
from p3.kfp import builder, executor, params, resources
from p3.kfp.builder import BuildOptions, ClusterSettings, compile_pipeline, preset_defaults
from p3.kfp.components.epoch_state_load import epoch_state_load
from p3.kfp.params import PipelineParams
from p3.kfp.per_epoch import build_per_epoch, pinned
from p3.kfp.resources import StepResources
from p3.kfp.steps import KINDS, STEPS, kind_of

COMMANDS = {words: (module, config, func) for words, module, config, func in cli.COMMANDS}
# `p3 grade` grades inside the score and evaluate steps; it is no pipeline task of its own.
NOT_A_STEP = {"grade"}


def _agent_noun(kind: str) -> str:
    """score -> scorer, select -> selector, embed -> embedder, bootstrap -> bootstrapper, …"""
    return rf"{re.escape(kind.removesuffix('e'))}(d|p)?(er|or)"


@pytest.mark.parametrize("step", [s for s in STEPS if s.verbs], ids=lambda s: s.kind)
def test_a_command_step_is_named_by_its_verb(step):
    assert step.verbs[0].split()[-1] == step.kind, "the kind is the verb of the step's command"
    assert re.fullmatch(_agent_noun(step.kind), step.component), \
        f"component {step.component!r} is not the one who does {step.kind!r}"


def test_the_check_refuses_the_old_names():
    # what issue 14 found: one step, several names
    assert not re.fullmatch(_agent_noun("prepare"), "prepare_data")
    assert not re.fullmatch(_agent_noun("bootstrap"), "bootstrap_tiny_model")
    assert not re.fullmatch(_agent_noun("report"), "epoch_report")
    assert not re.fullmatch(_agent_noun("score"), "rollout_scorer")
    assert "model tiny" not in COMMANDS


@pytest.mark.parametrize("step", [s for s in STEPS if s.verbs], ids=lambda s: s.kind)
def test_a_step_runs_the_commands_it_names_with_their_configs(step):
    """Each verb's config is one of the step's configs (its component takes those settings), every
    config of the step has its verb here, and the component imports the verb's module."""
    configs = {cls.__name__ for cls, _ in params.STEP_CONFIGS[step.kind]}
    assert {COMMANDS[v][1] for v in step.verbs} == configs
    imported = _imports(executor.component(step.component).python_func)
    for verb in step.verbs:
        assert COMMANDS[verb][0] in imported, f"{step.component} does not import {COMMANDS[verb][0]} (p3 {verb})"


def test_every_command_is_a_step_or_said_not_to_be():
    verbs = {v for s in STEPS for v in s.verbs}
    assert set(COMMANDS) == verbs | NOT_A_STEP
    assert not verbs & NOT_A_STEP


def test_every_component_module_is_its_function_and_kind_of_finds_it():
    for s in STEPS:
        assert executor.component(s.component).python_func.__name__ == s.component
        assert kind_of(s.component) == kind_of(s.component.replace("_", "-")) == s.kind
    with pytest.raises(KeyError, match="not a pipeline step"):
        kind_of("epoch_report")


def test_every_kind_in_the_settings_tables_is_a_step_kind():
    assert list(resources.DEFAULTS) and set(resources.DEFAULTS) == set(KINDS)
    kind_sets = {"DETERMINISTIC": builder.DETERMINISTIC, "OFFLINE_KINDS": builder.OFFLINE_KINDS,
                 "GPU_KINDS": set(builder.GPU_KINDS), "MODEL_KINDS": builder.MODEL_KINDS,
                 "HUB_KINDS": builder.HUB_KINDS, "SHM_KINDS": builder.SHM_KINDS,
                 "SANDBOX_KINDS": builder.SANDBOX_KINDS, "STEP_CONFIGS": set(params.STEP_CONFIGS)}
    for name, kinds in kind_sets.items():
        assert kinds <= set(KINDS), f"builder/params {name}: {sorted(kinds - set(KINDS))} are no step kinds"
    # a run parameter feeds steps by kind; the second prepare task (the test set) is fed apart
    fed = {k for f in dataclasses.fields(params.PipelineParams) for k in params.feeds(f)}
    assert fed <= set(KINDS) | {"prepare_test"}


def _imports(func) -> set[str]:
    """The p3 modules the function's body imports (``from p3 import x`` counts as ``p3.x``)."""
    out = set()
    for node in ast.walk(ast.parse(textwrap.dedent(inspect.getsource(func)))):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def _unread_arguments(func) -> list[str]:
    """The function's parameters that its body never reads by name."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(func))).body[0]
    read = {n.id for stmt in tree.body for n in ast.walk(stmt)
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    return [a for a in inspect.signature(func).parameters if a not in read]


def _recorded_by_load(tmp_path) -> tuple[set[str], set[str]]:
    """What the per-epoch pipeline pins (per_epoch.pinned) and what epoch_state_load, called with
    those values for a new training run, records and compares (its run_parameters output)."""
    given = pinned(BuildOptions(task="math", epochs=1), PipelineParams(**preset_defaults("math", "tiny")))
    # real kfp artifacts: a local uri is their .path (kfp.dsl.types.artifact_types.Artifact._get_path)
    outputs = {"policy": dsl.Model(uri=str(tmp_path / "policy")),
               "previous": dsl.Dataset(uri=str(tmp_path / "previous")),
               "previous_difficulty": dsl.Dataset(uri=str(tmp_path / "previous_difficulty")),
               "previous_run": dsl.Artifact(uri=str(tmp_path / "previous_run"))}
    loaded = epoch_state_load.python_func(state_uri=str(tmp_path / "state"), training_run="new", epochs=1,
                                          **given, **outputs)
    return set(given), set(json.loads(loaded.run_parameters))


@pytest.mark.parametrize("component", [s.component for s in STEPS])
def test_a_component_reads_every_argument_it_declares(component, tmp_path):
    unread = _unread_arguments(executor.component(component).python_func)
    if component == "epoch_state_load":
        # It takes each pinned run parameter as an input of its own (the KFP backend hands a component
        # whole values only) and reads them together, `dict(locals())`: those count as read when what
        # it records is exactly what the pipeline pins, so an argument it only declares still fails.
        given, recorded = _recorded_by_load(tmp_path)
        assert recorded == given, f"recorded, not pinned: {sorted(recorded - given)}; pinned, not recorded: " \
                                  f"{sorted(given - recorded)}"
        unread = [a for a in unread if a not in recorded]
    assert unread == []


def test_the_unread_argument_check_finds_one():
    def report(problems, embeddings, html):
        """Docstring mentions embeddings."""
        html.write(problems)

    assert _unread_arguments(report) == ["embeddings"]


def _distinct_resources() -> dict[str, StepResources]:
    """One CPU request per kind, so a task's request says which kind's settings it got."""
    return {kind: dataclasses.replace(resources.DEFAULTS[kind], cpu=str(i + 1), cpu_limit=str(i + 1))
            for i, kind in enumerate(KINDS)}


@pytest.mark.parametrize("build,kw", [
    (builder.build, dict(task="math", epochs=2, shards=2)),
    (builder.build, dict(task="apps", epochs=1, preset="tiny", bootstrap_tiny=True)),
    (build_per_epoch, dict(task="math", epochs=3)),
], ids=["sharded", "tiny-bootstrap", "per-epoch"])
def test_every_task_gets_its_own_component_kinds_resources(build, kw, tmp_path):
    res = _distinct_resources()
    opts = BuildOptions(**kw, cluster=ClusterSettings(resources=res))
    spec = next(yaml.safe_load_all(Path(compile_pipeline(opts, str(tmp_path / "p.yaml"), build_fn=build)).read_text()))
    seen = set()
    for label, ex in spec["deploymentSpec"]["executors"].items():
        args = ex["container"]["args"]
        component = args[args.index("--component") + 1]
        kind = kind_of(component)
        assert ex["container"]["resources"]["resourceCpuRequest"] == res[kind].cpu, (label, component, kind)
        seen.add(kind)
    want = {"prepare", "score", "embed", "select", "train", "evaluate", "report"}
    want |= {"bootstrap"} if kw.get("bootstrap_tiny") else {"stage"}
    want |= {"shard", "merge"} if kw.get("shards", 1) > 1 else set()
    want |= {"state"} if build is build_per_epoch else set()
    assert seen == want


def test_the_operator_guide_names_each_step_as_the_table_does():
    guide = (Path(__file__).resolve().parents[1] / "docs" / "operator-guide.md").read_text()
    rows = {cells[0].split(" (")[0]: cells for line in guide.splitlines()
            if line.startswith("| ") and len(cells := [c.strip() for c in line.strip("|").split("|")]) == 6}
    for s in STEPS:
        if s.verbs:
            assert s.component in rows, f"docs/operator-guide.md has no row for the {s.component} component"
            _, kind, commands, *_ = rows[s.component]
            assert kind == s.kind and commands == ", ".join(f"`{v}`" for v in s.verbs), rows[s.component]
