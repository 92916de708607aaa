"""The one pipeline builder behind p3_math.py and p3_apps.py.

KFP v2 has no loop that carries state from one iteration to the next, so the E epochs
are unrolled when the pipeline is built (``epochs`` is a build option, not a run
parameter). Each epoch is five tasks named ``epoch e: …``::

    prepare ─▶ [epoch 0] score ─▶ embed ─▶ select ─▶ train ─▶ evaluate ─▶ report
                  ▲                                    │
                  └──────── the trained model ─────────┘  scores epoch 1, and so on

With ``shards`` S > 1, scoring and embedding run as a ``dsl.ParallelFor`` over S shards
of the pool (one GPU task each) and ``dsl.Collected`` merges them before selection.

What is decided at build time (:class:`BuildOptions`): the task, E, S, whether a tiny
model is bootstrapped (local preset), and the cluster settings (GPUs, node selection,
/dev/shm, model-cache PVC, secrets). Everything else is a run parameter
(:data:`PARAMS`) with defaults from a preset (:data:`PRESETS`).
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, NamedTuple

from kfp import dsl, kubernetes
from kfp.dsl import HTML, Dataset, Markdown, Model

from p3.kfp.components import images
from p3.kfp.components.bootstrap_tiny_model import bootstrap_tiny_model
from p3.kfp.components.dpp_selector import dpp_selector
from p3.kfp.components.embedder import embedder
from p3.kfp.components.epoch_report import epoch_report
from p3.kfp.components.evaluator import evaluator
from p3.kfp.components.prepare_data import prepare_data
from p3.kfp.components.rollout_scorer import rollout_scorer
from p3.kfp.components.shard_merge import shard_merge
from p3.kfp.components.shard_split import shard_split
from p3.kfp.components.trainer import trainer
from p3.selection import SelectConfig

TASKS = ("math", "apps")

# Run parameters: name -> (type, help). Defaults come from PRESETS.
PARAMS: dict[str, tuple[type, str]] = {
    "base_model": (str, "policy at epoch 0: HF name, model dir or s3:// URI (unused when a tiny model is bootstrapped)"),
    "source": (str, "training pool: raw dataset file (local/s3://), HF dataset name, or synth:mini-math"),
    "split": (str, "split of the training source"),
    "hf_config": (str, "HF dataset config(s), comma-separated ('' = none)"),
    "test_source": (str, "held-out test set, same forms as source"),
    "test_split": (str, "split of the test source"),
    "limit": (int, "sample this many training problems (0 = all)"),
    "test_limit": (int, "sample this many test problems (0 = all)"),
    "synth_n": (int, "mini-MATH training problems (synth source only)"),
    "test_synth_n": (int, "mini-MATH test problems (synth source only)"),
    "tiny_steps": (int, "warm-up steps of the bootstrapped tiny model"),
    "budget": (int, "problems selected per epoch"),
    "strategy": (str, "selection strategy: p3, dpp, spl, random, full, static"),
    "pacing_shape": (str, "pacing schedule shape: linear, root, geometric"),
    "pacing_mode": (str, "pacing mode: threshold, band, momentum"),
    "pacing_start": (float, "pacing percentile at epoch 0"),
    "pacing_end": (float, "pacing percentile approached at the last epoch"),
    "pacing_lower_start": (float, "band mode: lower percentile at epoch 0"),
    "pacing_lower_end": (float, "band mode: lower percentile approached at the last epoch"),
    "momentum_alpha": (float, "momentum mode: alpha in d + alpha (d - d_prev)"),
    "diversity_weight": (float, "cross-epoch diversity: weight of conditioning on last epoch's picks (0 = off)"),
    "diversity_previous": (int, "cross-epoch diversity: condition on this many of last epoch's first picks"),
    "dpp_quality": (str, "DPP item quality: difficulty (the paper), easiness or uniform"),
    "dpp_precision": (str, "DPP screening precision: auto, float64 or float32"),
    "dpp_device": (str, "DPP screen device: auto (CUDA when the step has a GPU, else cpu), cpu, numpy, cuda"),
    "difficulty_mode": (str, "likelihood, rollout or hybrid"),
    "rollouts_n": (int, "rollouts per problem (rollout/hybrid)"),
    "temperature": (float, "rollout sampling temperature"),
    "max_new_tokens": (int, "token limit of a rollout or an evaluation sample"),
    "hybrid_weight": (float, "hybrid: weight of the likelihood part"),
    "backend": (str, "inference backend of scoring and evaluation: hf or vllm"),
    "embedder": (str, "st:<sentence-transformers model> or policy"),
    "lora": (str, "LoRA r,alpha,dropout"),
    "full_finetune": (bool, "full fine-tuning instead of LoRA"),
    "lr": (float, "peak learning rate"),
    "max_steps": (int, "optimizer steps per epoch (-1 = one pass over the selection)"),
    "batch_size": (int, "per-device training batch size"),
    "max_len": (int, "training cutoff length in tokens"),
    "eval_n": (int, "evaluation samples per problem"),
    "eval_k": (int, "pass@k's k"),
    "seed": (int, "seed of sampling, selection and training"),
    "image_base": (str, "image of the CPU steps"),
    "image_vllm": (str, "image of scoring, embedding and evaluation"),
    "image_train": (str, "image of training"),
}

def _selector_defaults() -> dict[str, Any]:
    """The selection settings default to `p3 select`'s own (SelectConfig), under the
    names the dpp_selector component gives them (budget and seed are set per preset)."""
    renamed = {"quality": "dpp_quality", "precision": "dpp_precision", "device": "dpp_device"}
    names = ((renamed.get(f.name, f.name), f.default) for f in dataclasses.fields(SelectConfig))
    return {name: default for name, default in names if name in PARAMS and name not in ("budget", "seed")}


_COMMON = {
    "base_model": "",
    "split": "train",
    "hf_config": "",
    "test_split": "test",
    "limit": 0,
    "test_limit": 0,
    "synth_n": 400,
    "test_synth_n": 100,
    "tiny_steps": 300,
    "difficulty_mode": "likelihood",
    "rollouts_n": 8,
    "temperature": 1.0,
    "max_new_tokens": 512,
    "hybrid_weight": 0.5,
    "backend": "vllm",
    "embedder": "st:all-MiniLM-L6-v2",
    "lora": "64,16,0.1",
    "full_finetune": False,
    "lr": 4e-4,
    "max_steps": -1,
    "batch_size": 8,
    "max_len": 2048,
    "eval_n": 1,
    "eval_k": 1,
    "seed": 0,
    "image_base": images.BASE,
    "image_vllm": images.VLLM,
    "image_train": images.TRAIN,
    **_selector_defaults(),
}

MATH_SUBJECTS = "algebra,counting_and_probability,geometry,intermediate_algebra,number_theory,prealgebra,precalculus"


def apps_fixture() -> str:
    """The hand-written APPS-format fixture shipped with p3 (the tiny APPS preset's data)."""
    return str(resources.files("p3") / "fixtures" / "apps_fixture.jsonl")


def preset_defaults(task: str, preset: str) -> dict[str, Any]:
    """Run-parameter defaults of a preset: ``full`` (a real model and dataset on a
    cluster) or ``tiny`` (CPU, minutes: mini-MATH or the APPS fixtures, tiny model)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    d = dict(_COMMON)
    if preset == "full":
        if task == "math":
            d.update(base_model="Qwen/Qwen2.5-Math-1.5B", source="EleutherAI/hendrycks_math",
                     hf_config=MATH_SUBJECTS, test_source="EleutherAI/hendrycks_math", budget=10000)
        else:
            d.update(base_model="Qwen/Qwen2.5-Coder-1.5B", source="codeparrot/apps",
                     test_source="codeparrot/apps", budget=2000, difficulty_mode="rollout",
                     max_new_tokens=1024, eval_n=5, eval_k=1)
        return d
    if preset != "tiny":
        raise ValueError(f"preset must be tiny or full, got {preset!r}")
    d.update(backend="hf", lora="8,16,0.05", lr=2e-3, max_steps=8, batch_size=8, max_len=384,
             max_new_tokens=64, image_vllm=images.BASE, image_train=images.BASE)
    if task == "math":
        d.update(source="synth:mini-math", test_source="synth:mini-math", synth_n=240, test_synth_n=40,
                 tiny_steps=150, budget=40)
    else:
        # The fixture set is small and hand-written: the test set is the same file.
        d.update(source=apps_fixture(), test_source=apps_fixture(), test_split="train", tiny_steps=60,
                 budget=8, max_new_tokens=96)
    return d


@dataclass
class ClusterSettings:
    """Where the steps run on Kubernetes (kfp-kubernetes); a local run ignores all of it."""

    gpu_type: str = "nvidia.com/gpu"
    # GPUs per step kind; 0 = a CPU pod. Several GPUs for "train" = torchrun on one node.
    gpus: dict[str, int] = field(default_factory=lambda: dict.fromkeys(GPU_KINDS, 1))
    node_selector: dict[str, str] = field(default_factory=dict)  # for GPU steps
    tolerations: list[dict[str, str]] = field(
        default_factory=lambda: [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    )
    shm_size: str = "16Gi"  # /dev/shm of vLLM and torchrun steps (NCCL, dataloaders)
    model_cache_pvc: str = "p3-model-cache"  # mounted at /cache (HF_HOME=/cache/huggingface)
    s3_secret: str = "p3-s3"  # AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, P3_S3_ENDPOINT_URL
    hf_secret: str = "p3-hf-token"  # HF_TOKEN (gated models)
    sandbox_uid: int = 1000  # scorer/evaluator run model-written code: non-root, labelled for the NetworkPolicy


SANDBOX_LABEL = ("p3.kubeflow.org/sandbox", "true")
S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "P3_S3_ENDPOINT_URL")
# Steps whose output is a pure function of their inputs: cached by KFP. Sampling and
# training are not (seeds do not make GPU kernels deterministic): never cached on a cluster.
DETERMINISTIC = {"prepare", "shard", "merge", "embed", "select", "report"}


@dataclass
class BuildOptions:
    """What is fixed when the pipeline is built."""

    task: str = "math"
    epochs: int = 3
    shards: int = 1
    preset: str = "full"
    bootstrap_tiny: bool = False  # build the tiny model in the pipeline (the local preset)
    cluster: ClusterSettings | None = field(default_factory=ClusterSettings)
    cache_everything: bool = False  # local runs: cache every step so a stopped run resumes

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.shards < 1:
            raise ValueError(f"shards must be >= 1, got {self.shards}")


class Built(NamedTuple):
    pipeline: Any  # the GraphComponent
    epoch_of_task: dict[str, int]  # DAG task name -> epoch (-1 = before the epochs)
    display_names: dict[str, str]  # DAG task name -> "epoch e: step"
    defaults: dict[str, Any]


def build(opts: BuildOptions, defaults: dict[str, Any] | None = None) -> Built:
    """Build the pipeline for ``opts``; run-parameter defaults from its preset unless given."""
    defaults = dict(defaults or preset_defaults(opts.task, opts.preset))
    epoch_of_task: dict[str, int] = {}
    display_names: dict[str, str] = {}

    def body(*args):
        p = dict(zip(PARAMS, args))
        return _wire(opts, p, epoch_of_task, display_names)

    body.__name__ = f"p3_{opts.task}"
    body.__doc__ = _docstring(opts)
    body.__signature__ = inspect.Signature(
        [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=defaults[name], annotation=tp)
         for name, (tp, _) in PARAMS.items()],
        return_annotation=_outputs_type(opts.epochs),
    )
    pipeline = dsl.pipeline(name=f"p3-{opts.task}", display_name=f"P3 {opts.task.upper()} ({opts.epochs} epochs)")(body)
    return Built(pipeline, epoch_of_task, display_names, defaults)


def _outputs_type(epochs: int) -> type:
    fields = [("report", HTML), ("report_md", Markdown), ("final_model", Model)] + [(f"selection_{e}", Dataset) for e in range(epochs)]
    return NamedTuple("P3Outputs", fields)


def _docstring(opts: BuildOptions) -> str:
    lines = [f"P3 data selection and fine-tuning on {opts.task.upper()}: {opts.epochs} epochs of "
             "score -> embed -> select -> train -> evaluate.", "", "Args:"]
    lines += [f"    {name}: {help_}" for name, (_, help_) in PARAMS.items()]
    return "\n".join(lines)


def _wire(opts: BuildOptions, p: dict[str, Any], epoch_of_task: dict[str, int], display_names: dict[str, str]):
    """Create the tasks. ``p`` maps run-parameter names to pipeline channels."""

    def setup(task, kind: str, epoch: int, what: str, image: str):
        """Name, image, env, caching and cluster settings of one task."""
        epoch_of_task[task.name] = epoch
        display_names[task.name] = f"epoch {epoch}: {what}" if epoch >= 0 else what
        task.set_display_name(display_names[task.name])
        task.set_container_image(p[image])
        task.set_env_variable("P3_EPOCH", str(epoch) if epoch >= 0 else "")
        task.set_caching_options(enable_caching=opts.cache_everything or kind in DETERMINISTIC)
        if opts.cluster is not None:
            _apply_cluster(task, kind, opts.cluster)
        return task

    prep = setup(prepare_data(task=opts.task, source=p["source"], split=p["split"], hf_config=p["hf_config"],
                              limit=p["limit"], seed=p["seed"], synth_n=p["synth_n"]),
                 "prepare", -1, "prepare train", "image_base")
    pool = prep.outputs["problems"]
    test = setup(prepare_data(task=opts.task, source=p["test_source"], split=p["test_split"],
                              hf_config=p["hf_config"], limit=p["test_limit"], seed=p["seed"],
                              synth_n=p["test_synth_n"]),
                 "prepare", -1, "prepare test", "image_base").outputs["problems"]
    policy = None  # the previous epoch's trained model; None = base_model by name
    if opts.bootstrap_tiny:
        boot = setup(bootstrap_tiny_model(problems=pool, steps=p["tiny_steps"], seed=p["seed"]),
                     "bootstrap", -1, "bootstrap tiny model", "image_base")
        policy = boot.outputs["model"]

    def with_policy(**kw):
        return dict(kw, policy=policy) if policy is not None else dict(kw, base_model=p["base_model"])

    previous_selection = previous_difficulty = previous_run = None
    selections = []
    for e in range(opts.epochs):
        score_kw = dict(epoch=e, mode=p["difficulty_mode"], n=p["rollouts_n"], temperature=p["temperature"],
                        max_new_tokens=p["max_new_tokens"], weight=p["hybrid_weight"], backend=p["backend"],
                        seed=p["seed"], tensor_parallel_size=_gpus(opts, "score"))
        if opts.shards == 1:
            difficulty = setup(rollout_scorer(problems=pool, **with_policy(**score_kw)),
                               "score", e, "score", "image_vllm").outputs["difficulty"]
            embeddings = setup(embedder(problems=pool, **with_policy(embedder=p["embedder"])),
                               "embed", e, "embed", "image_vllm").outputs["embeddings"]
        else:
            with dsl.ParallelFor(items=list(range(opts.shards)), name=f"epoch-{e}-shards") as i:
                part = setup(shard_split(problems=pool, index=i, count=opts.shards),
                             "shard", e, "shard", "image_base").outputs["shard"]
                d_part = setup(rollout_scorer(problems=part, **with_policy(**score_kw)),
                               "score", e, "score shard", "image_vllm")
                x_part = setup(embedder(problems=part, **with_policy(embedder=p["embedder"])),
                               "embed", e, "embed shard", "image_vllm")
            difficulty = setup(shard_merge(parts=dsl.Collected(d_part.outputs["difficulty"]), problems=pool),
                               "merge", e, "merge difficulty", "image_base").outputs["merged"]
            embeddings = setup(shard_merge(parts=dsl.Collected(x_part.outputs["embeddings"]), problems=pool),
                               "merge", e, "merge embeddings", "image_base").outputs["merged"]
        sel_kw = dict(problems=pool, difficulty=difficulty, embeddings=embeddings, epoch=e, epochs=opts.epochs,
                      **{k: p[k] for k in PARAMS if k in dpp_selector.component_spec.inputs})
        if previous_selection is not None:
            sel_kw.update(previous=previous_selection, previous_difficulty=previous_difficulty)
        select = setup(dpp_selector(**sel_kw), "select", e, "select", "image_base")
        train = setup(trainer(problems=pool, selection=select.outputs["selection"],
                              **with_policy(lora=p["lora"], full=p["full_finetune"], lr=p["lr"],
                                            max_steps=p["max_steps"], batch_size=p["batch_size"],
                                            max_len=p["max_len"], seed=p["seed"])),
                      "train", e, "train", "image_train")
        policy = train.outputs["model"]
        evaluation = setup(evaluator(problems=test, policy=policy, epoch=e, n=p["eval_n"], k=p["eval_k"],
                                     backend=p["backend"], max_new_tokens=p["max_new_tokens"], seed=p["seed"],
                                     tensor_parallel_size=_gpus(opts, "evaluate")),
                           "evaluate", e, "evaluate", "image_vllm")
        rep_kw = dict(problems=pool, difficulty=difficulty, embeddings=embeddings,
                      selection=select.outputs["selection"], selection_report=select.outputs["report"],
                      evaluation=evaluation.outputs["results"], epoch=e, seed=p["seed"])
        if previous_run is not None:
            rep_kw["previous_run"] = previous_run
        report = setup(epoch_report(**rep_kw), "report", e, "report", "image_base")
        previous_selection, previous_difficulty = select.outputs["selection"], difficulty
        previous_run = report.outputs["run"]
        selections.append(select.outputs["selection"])
    outputs = _outputs_type(opts.epochs)
    return outputs(report.outputs["run_html"], report.outputs["run_markdown"], policy, *selections)


def _gpus(opts: BuildOptions, kind: str) -> int:
    """GPUs of one step's pod (at least 1: the tensor-parallel size of a vLLM engine)."""
    return max(1, opts.cluster.gpus.get(kind, 0)) if opts.cluster is not None else 1


# Which steps need what on a cluster.
GPU_KINDS = ("score", "embed", "train", "evaluate")
MODEL_KINDS = {"score", "embed", "train", "evaluate", "bootstrap"}  # load weights: cache PVC + HF token
SHM_KINDS = {"score", "evaluate", "train"}  # vLLM and torchrun need a big /dev/shm
SANDBOX_KINDS = {"score", "evaluate"}  # grade model-written programs


def _apply_cluster(task, kind: str, c: ClusterSettings) -> None:
    """GPU request, node selection, /dev/shm, cache PVC, secrets, sandbox hardening."""
    gpus = c.gpus.get(kind, 0) if kind in GPU_KINDS else 0
    if gpus:
        task.set_accelerator_type(c.gpu_type).set_accelerator_limit(gpus)
        for key, value in c.node_selector.items():
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        for t in c.tolerations:
            kubernetes.add_toleration(task, key=t.get("key"), operator=t.get("operator"), value=t.get("value"),
                                      effect=t.get("effect"))
    if kind in SHM_KINDS and gpus and c.shm_size:
        kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                                   size_limit=c.shm_size)
    if kind in MODEL_KINDS and c.model_cache_pvc:
        kubernetes.mount_pvc(task, pvc_name=c.model_cache_pvc, mount_path="/cache")
    if c.s3_secret:
        kubernetes.use_secret_as_env(task, secret_name=c.s3_secret, secret_key_to_env={k: k for k in S3_KEYS},
                                     optional=True)
    if kind in MODEL_KINDS and c.hf_secret:
        kubernetes.use_secret_as_env(task, secret_name=c.hf_secret, secret_key_to_env={"HF_TOKEN": "HF_TOKEN"},
                                     optional=True)
    if kind in SANDBOX_KINDS:
        kubernetes.add_pod_label(task, *SANDBOX_LABEL)
        kubernetes.set_security_context(task, run_as_user=c.sandbox_uid, run_as_group=c.sandbox_uid,
                                        run_as_non_root=True)


def compile_pipeline(opts: BuildOptions, path: str, defaults: dict[str, Any] | None = None) -> str:
    """Compile to a pipeline YAML at ``path``; return the path."""
    from kfp import compiler

    built = build(opts, defaults)
    compiler.Compiler().compile(built.pipeline, package_path=path)
    return path


def parse_gpus(spec: str, base: dict[str, int] | None = None) -> dict[str, int]:
    """``score=1,train=8`` -> {"score": 1, "train": 8, …} over ``base``."""
    out = dict(base or {})
    for part in filter(None, (s.strip() for s in spec.split(","))):
        kind, _, n = part.partition("=")
        if kind not in GPU_KINDS or not n.isdigit():
            raise ValueError(f"bad --gpus entry {part!r}: want KIND=N with KIND in {sorted(GPU_KINDS)}")
        out[kind] = int(n)
    return out

