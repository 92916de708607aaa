"""One source of truth for every setting: the config dataclasses.

A run parameter of the pipeline, a component's argument and that argument's docstring
entry must each say what the config field says (name, type, default, help); this file
fails on any drift between them. kfp reads a component's inputs from the function's
signature and their descriptions from its docstring with docstring_parser
(kfp.dsl.component_factory.extract_component_interface), so that is what is compared here.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from pathlib import Path

import docstring_parser
import pytest
import yaml

from p3 import configs
from p3.kfp import params
from p3.kfp.builder import BuildOptions, compile_pipeline
from p3.kfp import executor
from p3.kfp.params import PipelineParams
from p3.kfp.steps import STEPS

# component -> the step kind it runs (the kind names the step's configs in params.STEP_CONFIGS)
COMPONENTS = {executor.component(s.component): s.kind for s in STEPS if s.kind in params.STEP_CONFIGS}
# Arguments that are pipeline wiring, not a step setting: the model by name, whether the pipeline embeds per epoch, the
# report's epoch (the folder it adds; `p3 report` renders folders that are already there), and the epoch that the
# trainer and embedder name in their log lines (p3.logs.configure).
WIRING = {"base_model", "reporter.epoch", "embedder.per_epoch", "model-stager.base_model", "trainer.epoch",
          "embedder.epoch"}
EMPTY = {int: 0, float: 0.0, str: "", bool: False}  # a run parameter has no None: the type's empty value stands for it


def _norm(text: str) -> str:
    text = " ".join(text.split()).rstrip(".")
    return text[:1].lower() + text[1:]


def _same_help(doc: str, want: str) -> bool:
    """Equal up to the first letter's case and a final period; a component may add one
    remark in parentheses about its own wiring."""
    doc, want = _norm(doc), _norm(want)
    return doc == want or doc.startswith(want + " (")


def drift(components: dict = COMPONENTS) -> list[str]:
    """Every disagreement between a component argument, its docstring and its config field."""
    problems = []
    for comp, kind in components.items():
        func = comp.python_func
        settings = params.step_settings(kind)
        docs = {p.arg_name: p.description for p in docstring_parser.parse(inspect.getdoc(func)).params}
        hints = typing.get_type_hints(func)
        for name, arg in inspect.signature(func).parameters.items():
            if name not in comp.component_spec.inputs or comp.component_spec.inputs[name].type.startswith("system."):
                continue  # artifacts are data, not settings
            where = f"{comp.name}({name})"
            if name in WIRING or f"{comp.name}.{name}" in WIRING:
                continue
            if name not in settings:
                problems.append(f"{where}: not a setting of {kind}'s config {params.STEP_CONFIGS[kind]}")
                continue
            f = settings[name].field
            want_type, optional = _unwrap(settings[name].type)
            if hints[name] is not want_type:
                problems.append(f"{where}: type {hints[name]} != config {want_type}")
            want = configs.default(f)
            want = EMPTY[want_type] if want is None and optional else want
            have = arg.default
            if want is dataclasses.MISSING:
                if have is not inspect.Parameter.empty:
                    problems.append(f"{where}: default {have!r}, the config field has none")
            elif have != want:
                problems.append(f"{where}: default {have!r} != config {want!r}")
            if not _same_help(docs.get(name, ""), configs.describe(f)):
                problems.append(f"{where}: doc {docs.get(name)!r} != config help {configs.describe(f)!r}")
    return problems


def _unwrap(tp):
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return (args[0], True) if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType"))  \
        and len(args) == 1 else (tp, False)


def test_component_arguments_and_docs_are_their_config_fields():
    assert drift() == []


def test_the_drift_check_catches_a_changed_default_or_help(monkeypatch):
    from p3.generation import GenerationConfig
    from p3.selection import SelectConfig

    budget = {f.name: f for f in dataclasses.fields(SelectConfig)}["budget"]
    monkeypatch.setattr(budget, "default", 123)
    assert drift() == ["selector(budget): default 10000 != config 123"]
    monkeypatch.undo()
    tokens = {f.name: f for f in dataclasses.fields(GenerationConfig)}["max_new_tokens"]
    monkeypatch.setattr(tokens, "metadata", {"help": "another text"})
    found = drift()
    assert len(found) == 2 and all("max_new_tokens): doc" in p for p in found)  # the scorer and the evaluator


def test_every_pipeline_parameter_of_a_setting_is_that_setting():
    own = []
    for f in dataclasses.fields(PipelineParams):
        if "setting" not in f.metadata:
            own.append(f.name)
            continue
        s = f.metadata["setting"]
        assert f.default == configs.default(s), f.name
        assert f.metadata["help"] == configs.describe(s), f.name
        fed = params.feeds(f)
        assert fed, f"{f.name} reaches no component"
        for kind, arg in fed.items():
            assert params.step_settings(kind)[arg].field is s
    # the rest exist because of the pipeline: sources, the bootstrap, images and the one seed
    assert own == ["base_model", "source", "split", "hf_config", "test_source", "test_split", "limit", "test_limit",
                   "synth_n", "test_synth_n", "seed", "image_base", "image_vllm", "image_train"]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict:
    path = compile_pipeline(BuildOptions(task="math", epochs=1), str(tmp_path_factory.mktemp("p") / "p.yaml"))
    return next(yaml.safe_load_all(Path(path).read_text()))


def test_compiled_parameters_say_what_the_configs_say_and_reach_their_components_by_name(compiled):
    declared = compiled["root"]["inputDefinitions"]["parameters"]
    assert set(declared) == {f.name for f in dataclasses.fields(PipelineParams)}
    kinds = {f"comp-{c.name}": kind for c, kind in COMPONENTS.items()}
    tasks = compiled["root"]["dag"]["tasks"].values()
    for f in dataclasses.fields(PipelineParams):
        assert _norm(declared[f.name]["description"]) == _norm(f.metadata["help"]), f.name
        for kind, arg in params.feeds(f).items():
            if kind == "bootstrap":
                continue  # the full preset bootstraps no model
            if kind == "prepare_test":
                kind = "prepare"
            fed = [t["inputs"]["parameters"].get(arg, {}).get("componentInputParameter") for t in tasks
                   if kinds.get(re.sub(r"-\d+$", "", t["componentRef"]["name"])) == kind]
            assert fed and f.name in fed, (f.name, kind, arg, fed)
