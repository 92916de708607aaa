"""The pipeline's run parameters: one dataclass whose fields reference the step configs.

A run parameter that is a step's setting (``budget`` is ``SelectConfig.budget``,
``rollouts_n`` is ``ScoreConfig.n``, ``max_new_tokens`` is the ``GenerationConfig``
field that scoring and evaluation share) takes its type, default and help from that
config field, and feeds the component of every step whose config holds the same field,
under the field's own name (the component's argument name). Only the parameters that
exist because of the pipeline (data sources, the bootstrap model, images, the one
``seed`` of every step) are declared here in full. Presets (:func:`preset`) change
defaults, never names or help.
"""

import dataclasses
from dataclasses import field
from importlib import resources
from typing import Any

from p3 import configs
from p3.minimath import SynthConfig
from p3.sources import PrepareConfig
from p3.score import ScoreConfig
from p3.embed import EmbedConfig
from p3.evaluate import EvaluateConfig
from p3.generation import GenerationConfig
from p3.report import ReportConfig
from p3.kfp.components import images
from p3.selection import SelectConfig
from p3.tiny import TinyConfig
from p3.train import TrainConfig

TASKS = ("math", "apps")

# The configs of each step kind whose component takes settings, with the prefix their
# settings' names carry as component arguments (the prepare component also runs `p3 data synth`).
STEP_CONFIGS: dict[str, tuple[tuple[type, str], ...]] = {
    "prepare": ((PrepareConfig, ""), (SynthConfig, "synth_")),
    "bootstrap": ((TinyConfig, ""),),
    "score": ((ScoreConfig, ""),),
    "embed": ((EmbedConfig, ""),),
    "select": ((SelectConfig, ""),),
    "train": ((TrainConfig, ""),),
    "evaluate": ((EvaluateConfig, ""),),
    "report": ((ReportConfig, ""),),
}


def step_settings(kind: str) -> dict[str, configs.Setting]:
    """Component argument name -> the setting it is, for the step ``kind``."""
    out: dict[str, configs.Setting] = {}
    for cls, prefix in STEP_CONFIGS.get(kind, ()):
        for name, s in configs.settings(cls).items():
            out.setdefault(prefix + name, s)
    return out


def of(config: type, name: str) -> tuple[type, dataclasses.Field]:
    """A run parameter that is the setting ``name`` of ``config``: its type, default and help."""
    s = configs.settings(config)[name]
    return s.type, field(default=configs.default(s.field),
                         metadata={"help": configs.describe(s.field), "setting": s.field})


def own(tp: type, default: Any, help: str, feeds: dict[str, str] | None = None) -> tuple[type, dataclasses.Field]:
    """A run parameter of the pipeline's own; ``feeds`` maps step kind -> component argument."""
    return tp, field(default=default, metadata={"help": help, "feeds": feeds or {}})


EVERY_STEP_SEED = {"prepare": "seed", "prepare_test": "seed", "bootstrap": "seed", "score": "seed",
                   "select": "seed", "train": "seed", "evaluate": "seed", "report": "seed"}

_FIELDS = {
    "base_model": own(str, "", "policy at epoch 0: HF name, model dir or s3:// URI (unused when a tiny model is bootstrapped)"),
    "source": own(str, "synth:mini-math", "training pool: raw dataset file (local/s3://), hf:NAME (a Hugging Face hub dataset), or synth:mini-math",
                  {"prepare": "source"}),
    "split": own(str, "train", "split of the training source", {"prepare": "split"}),
    "hf_config": own(str, "", "HF dataset config(s), comma-separated ('' = none)",
                     {"prepare": "hf_config", "prepare_test": "hf_config"}),
    "test_source": own(str, "synth:mini-math", "held-out test set, same forms as source", {"prepare_test": "source"}),
    "test_split": own(str, "test", "split of the test source", {"prepare_test": "split"}),
    "limit": own(int, 0, "sample this many training problems (0 = all)", {"prepare": "limit"}),
    "test_limit": own(int, 0, "sample this many test problems (0 = all)", {"prepare_test": "limit"}),
    "synth_n": own(int, 400, "mini-MATH training problems (synth source only)", {"prepare": "synth_n"}),
    "test_synth_n": own(int, 100, "mini-MATH test problems (synth source only)", {"prepare_test": "synth_n"}),
    "tiny_steps": of(TinyConfig, "steps"),
    "budget": of(SelectConfig, "budget"),
    "strategy": of(SelectConfig, "strategy"),
    "pacing_shape": of(SelectConfig, "pacing_shape"),
    "pacing_mode": of(SelectConfig, "pacing_mode"),
    "pacing_start": of(SelectConfig, "pacing_start"),
    "pacing_end": of(SelectConfig, "pacing_end"),
    "pacing_lower_start": of(SelectConfig, "pacing_lower_start"),
    "pacing_lower_end": of(SelectConfig, "pacing_lower_end"),
    "momentum_alpha": of(SelectConfig, "momentum_alpha"),
    "diversity_weight": of(SelectConfig, "diversity_weight"),
    "diversity_previous": of(SelectConfig, "diversity_previous"),
    "dpp_quality": of(SelectConfig, "quality"),
    "reserve": of(SelectConfig, "reserve"),
    "dpp_precision": of(SelectConfig, "precision"),
    "dpp_device": of(SelectConfig, "device"),
    "difficulty_mode": of(ScoreConfig, "mode"),
    "difficulty_span": of(ScoreConfig, "difficulty_span"),
    "rollouts_n": of(ScoreConfig, "n"),
    "temperature": of(ScoreConfig, "temperature"),
    "max_new_tokens": of(GenerationConfig, "max_new_tokens"),
    "hybrid_weight": of(ScoreConfig, "weight"),
    "backend": of(GenerationConfig, "backend"),
    "embedder": of(EmbedConfig, "embedder"),
    "lora": of(TrainConfig, "lora"),
    "full_finetune": of(TrainConfig, "full"),
    "qlora": of(TrainConfig, "qlora"),
    "lr": of(TrainConfig, "lr"),
    "max_steps": of(TrainConfig, "max_steps"),
    "batch_size": of(TrainConfig, "batch_size"),
    "max_len": of(TrainConfig, "max_len"),
    "eval_n": of(EvaluateConfig, "n"),
    "eval_k": of(EvaluateConfig, "k"),
    "allow_weak_isolation": of(GenerationConfig, "allow_weak_isolation"),
    "seed": own(int, 0, "seed of sampling, selection and training", EVERY_STEP_SEED),
    "image_base": own(str, images.BASE, "image of the CPU steps"),
    "image_vllm": own(str, images.VLLM, "image of scoring, embedding and evaluation"),
    "image_train": own(str, images.TRAIN, "image of training"),
}

# Built, not written out, so that a referenced setting's type, default and help are the config's, not a copy.
PipelineParams = dataclasses.make_dataclass(
    "PipelineParams", [(name, tp, f) for name, (tp, f) in _FIELDS.items()])
PipelineParams.__module__ = __name__
PipelineParams.__doc__ = "The run parameters of a P3 pipeline (one per field, in the pipeline's order)."


def feeds(f: dataclasses.Field) -> dict[str, str]:
    """Step kind -> component argument that the run parameter ``f`` is passed to."""
    if "setting" not in f.metadata:
        return f.metadata["feeds"]
    return {kind: name for kind in STEP_CONFIGS for name, s in step_settings(kind).items()
            if s.field is f.metadata["setting"]}


def step_arguments(params: Any, kind: str) -> dict[str, Any]:
    """The component arguments of step ``kind`` that come from the run parameters ``params``."""
    return {arg: getattr(params, f.name) for f in dataclasses.fields(PipelineParams)
            for k, arg in feeds(f).items() if k == kind}


MATH_SUBJECTS = "algebra,counting_and_probability,geometry,intermediate_algebra,number_theory,prealgebra,precalculus"


def apps_fixture() -> str:
    """The hand-written APPS-format fixture shipped with p3 (the tiny APPS preset's data)."""
    return str(resources.files("p3") / "fixtures" / "apps_fixture.jsonl")


def preset(task: str, name: str) -> Any:
    """The run parameters of a preset: ``full`` (a real model and dataset on a cluster)
    or ``tiny`` (CPU, minutes: mini-MATH or the APPS fixtures, tiny model)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if name == "full":
        if task == "math":
            return PipelineParams(base_model="Qwen/Qwen2.5-Math-1.5B", source="hf:EleutherAI/hendrycks_math",
                                  hf_config=MATH_SUBJECTS, test_source="hf:EleutherAI/hendrycks_math", budget=10000,
                                  backend="vllm")
        return PipelineParams(base_model="Qwen/Qwen2.5-Coder-1.5B", source="hf:codeparrot/apps",
                              test_source="hf:codeparrot/apps", budget=2000, difficulty_mode="rollout",
                              max_new_tokens=1024, eval_n=5, eval_k=1, backend="vllm")
    if name != "tiny":
        raise ValueError(f"preset must be tiny or full, got {name!r}")
    tiny = dict(backend="hf", lora="8,16,0.05", lr=2e-3, max_steps=8, batch_size=8, max_len=384,
                max_new_tokens=64, image_vllm=images.BASE, image_train=images.BASE)
    if task == "math":
        return PipelineParams(**tiny, source="synth:mini-math", test_source="synth:mini-math", synth_n=240,
                              test_synth_n=40, tiny_steps=150, budget=40)
    # The fixture set is small and hand-written: the test set is the same file.
    return PipelineParams(**{**tiny, "max_new_tokens": 96}, source=apps_fixture(), test_source=apps_fixture(),
                          test_split="train", tiny_steps=60, budget=8)
