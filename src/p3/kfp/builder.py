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
(:class:`p3.kfp.params.PipelineParams`) with defaults from a preset.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from kfp import dsl, kubernetes
from kfp.dsl import HTML, Dataset, Markdown, Model

from p3.kfp.components import images
from p3.kfp.components.bootstrap_tiny_model import bootstrap_tiny_model
from p3.kfp.components.selector import selector
from p3.kfp.components.embedder import embedder
from p3.kfp.components.epoch_report import epoch_report
from p3.kfp.components.evaluator import evaluator
from p3.kfp.components.prepare_data import prepare_data
from p3.kfp.components.scorer import scorer
from p3.kfp.components.shard_merge import shard_merge
from p3.kfp.components.shard_split import shard_split
from p3.kfp.components.trainer import trainer
from p3.kfp import params
from p3.kfp.params import TASKS, PipelineParams, apps_fixture, step_arguments

def preset_defaults(task: str, preset: str) -> dict[str, Any]:
    """Run-parameter defaults of a preset (see :func:`p3.kfp.params.preset`), by name."""
    return dataclasses.asdict(params.preset(task, preset))


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
    # scorer/evaluator run model-written code: non-root, labelled for the NetworkPolicy and for the
    # sandbox-isolation component's admission policies (root in a user namespace of the pod's own)
    sandbox_uid: int = 1000


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

    def body(*channels):
        # kfp calls the pipeline function with one channel per parameter, in signature order
        return _wire(opts, PipelineParams(*channels), epoch_of_task, display_names)

    body.__name__ = f"p3_{opts.task}"
    body.__doc__ = _docstring(opts)
    body.__signature__ = _signature(PipelineParams(**defaults), _outputs_type(opts.epochs))
    pipeline = dsl.pipeline(name=f"p3-{opts.task}", display_name=f"P3 {opts.task.upper()} ({opts.epochs} epochs)")(body)
    return Built(pipeline, epoch_of_task, display_names, defaults)


def _signature(defaults: Any, returns: type) -> inspect.Signature:
    """PipelineParams' own constructor signature (name and type of every field, in order),
    with the preset's values as defaults: kfp reads a pipeline's inputs from
    ``inspect.signature`` of its function (kfp.dsl.component_factory.extract_component_interface)."""
    sig = inspect.signature(PipelineParams)
    return sig.replace(parameters=[p.replace(default=getattr(defaults, p.name)) for p in sig.parameters.values()],
                       return_annotation=returns)


def _outputs_type(epochs: int) -> type:
    fields = [("report", HTML), ("report_md", Markdown), ("final_model", Model)] + [(f"selection_{e}", Dataset) for e in range(epochs)]
    return NamedTuple("P3Outputs", fields)


def _docstring(opts: BuildOptions) -> str:
    lines = [f"P3 data selection and fine-tuning on {opts.task.upper()}: {opts.epochs} epochs of "
             "score -> embed -> select -> train -> evaluate.", "", "Args:"]
    lines += [f"    {f.name}: {f.metadata['help']}" for f in dataclasses.fields(PipelineParams)]
    return "\n".join(lines)


def _wire(opts: BuildOptions, p: Any, epoch_of_task: dict[str, int], display_names: dict[str, str]):
    """Create the tasks. ``p`` is a PipelineParams of pipeline channels."""

    def setup(task, kind: str, epoch: int, what: str, image: str):
        """Name, image, env, caching and cluster settings of one task."""
        epoch_of_task[task.name] = epoch
        display_names[task.name] = f"epoch {epoch}: {what}" if epoch >= 0 else what
        task.set_display_name(display_names[task.name])
        task.set_container_image(getattr(p, image))
        task.set_env_variable("P3_EPOCH", str(epoch) if epoch >= 0 else "")
        task.set_caching_options(enable_caching=opts.cache_everything or kind in DETERMINISTIC)
        if opts.cluster is not None:
            _apply_cluster(task, kind, opts.cluster)
        return task

    prep = setup(prepare_data(task=opts.task, **step_arguments(p, "prepare")), "prepare", -1, "prepare train",
                 "image_base")
    pool = prep.outputs["problems"]
    test = setup(prepare_data(task=opts.task, **step_arguments(p, "prepare_test")),
                 "prepare", -1, "prepare test", "image_base").outputs["problems"]
    policy = None  # the previous epoch's trained model; None = base_model by name
    if opts.bootstrap_tiny:
        boot = setup(bootstrap_tiny_model(problems=pool, **step_arguments(p, "bootstrap")),
                     "bootstrap", -1, "bootstrap tiny model", "image_base")
        policy = boot.outputs["model"]

    def with_policy(**kw):
        return dict(kw, policy=policy) if policy is not None else dict(kw, base_model=p.base_model)

    previous_selection = previous_difficulty = previous_run = None
    selections = []
    for e in range(opts.epochs):
        score_kw = dict(epoch=e, tensor_parallel_size=_gpus(opts, "score"), **step_arguments(p, "score"))
        embed_kw = step_arguments(p, "embed")
        if opts.shards == 1:
            difficulty = setup(scorer(problems=pool, **with_policy(**score_kw)),
                               "score", e, "score", "image_vllm").outputs["difficulty"]
            embeddings = setup(embedder(problems=pool, **with_policy(**embed_kw)),
                               "embed", e, "embed", "image_vllm").outputs["embeddings"]
        else:
            with dsl.ParallelFor(items=list(range(opts.shards)), name=f"epoch-{e}-shards") as i:
                part = setup(shard_split(problems=pool, index=i, count=opts.shards),
                             "shard", e, "shard", "image_base").outputs["shard"]
                d_part = setup(scorer(problems=part, **with_policy(**score_kw)),
                               "score", e, "score shard", "image_vllm")
                x_part = setup(embedder(problems=part, **with_policy(**embed_kw)),
                               "embed", e, "embed shard", "image_vllm")
            difficulty = setup(shard_merge(parts=dsl.Collected(d_part.outputs["difficulty"]), problems=pool),
                               "merge", e, "merge difficulty", "image_base").outputs["merged"]
            embeddings = setup(shard_merge(parts=dsl.Collected(x_part.outputs["embeddings"]), problems=pool),
                               "merge", e, "merge embeddings", "image_base").outputs["merged"]
        sel_kw = dict(problems=pool, difficulty=difficulty, embeddings=embeddings, epoch=e, epochs=opts.epochs,
                      **step_arguments(p, "select"))
        if previous_selection is not None:
            sel_kw.update(previous=previous_selection, previous_difficulty=previous_difficulty)
        select = setup(selector(**sel_kw), "select", e, "select", "image_base")
        train = setup(trainer(problems=pool, selection=select.outputs["selection"],
                              **with_policy(**step_arguments(p, "train"))),
                      "train", e, "train", "image_train")
        policy = train.outputs["model"]
        evaluation = setup(evaluator(problems=test, policy=policy, epoch=e, tensor_parallel_size=_gpus(opts, "evaluate"),
                                     **step_arguments(p, "evaluate")),
                           "evaluate", e, "evaluate", "image_vllm")
        rep_kw = dict(problems=pool, difficulty=difficulty, embeddings=embeddings,
                      selection=select.outputs["selection"], selection_report=select.outputs["report"],
                      evaluation=evaluation.outputs["results"], epoch=e, **step_arguments(p, "report"))
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

