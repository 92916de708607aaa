"""The one pipeline builder behind p3_math.py and p3_apps.py.

KFP v2 has no loop that carries state from one iteration to the next, so the E epochs
are unrolled when the pipeline is built (``epochs`` is a build option, not a run
parameter). Each epoch is five tasks named ``epoch e: …``::

    prepare ─▶ stage model ─▶ embed ─▶ [epoch 0] score ─▶ select ─▶ train ─▶ evaluate ─▶ report
                                          ▲                          │
                                          └──── the trained model ───┘  scores epoch 1, and so on

The order of an epoch's steps and what feeds what are :func:`p3.epoch.epoch_flow`'s, the
flow the benchmark also runs in process; :class:`PipelineSteps` makes each step a task.

The embeddings are made once, before the epochs, unless the embedder is the current
policy (``embedder=policy``): then every epoch embeds with its own policy. The staging
step puts the base model into the model cache; every later model step runs offline.

With ``shards`` S > 1, scoring and embedding run as a ``dsl.ParallelFor`` over S shards
of the pool (one GPU task each) and ``dsl.Collected`` merges them before selection.

A cluster build runs every task through the one image executor (:mod:`p3.kfp.executor`:
no function source in the YAML) with its step kind's resources, retries and deadline
(:mod:`p3.kfp.resources`); a local build keeps the lightweight components that
kfp.local's SubprocessRunner runs.

What is decided at build time (:class:`BuildOptions`): the task, E, S, whether a tiny
model is bootstrapped (local preset), and the cluster settings (GPUs, node selection,
/dev/shm, model-cache PVC, secrets). Everything else is a run parameter
(:class:`p3.kfp.params.PipelineParams`) with defaults from a preset.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from kfp import dsl, kubernetes
from kfp.dsl import HTML, Dataset, Markdown, Model

from p3 import epoch
from p3.kfp import executor
from p3.kfp.components.bootstrapper import bootstrapper
from p3.kfp.components.selector import selector
from p3.kfp.components.embedder import embedder
from p3.kfp.components.evaluator import evaluator
from p3.kfp.components.model_stager import model_stager
from p3.kfp.components.preparer import preparer
from p3.kfp.components.reporter import reporter
from p3.kfp.components.scorer import scorer
from p3.kfp.components.shard_merge import shard_merge
from p3.kfp.components.shard_split import shard_split
from p3.kfp.components.trainer import trainer
from p3.kfp import params
from p3.kfp.params import TASKS, PipelineParams, apps_fixture, step_arguments
from p3.kfp.resources import DEFAULTS as RESOURCE_DEFAULTS, StepResources, apply_resources
from p3.kfp.steps import kind_of

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
    hf_secret: str = "p3-hf-token"  # HF_TOKEN (gated models): the staging step only
    # scorer/evaluator run model-written code: non-root, labelled for the NetworkPolicy and for the
    # sandbox-isolation component's admission policies (root in a user namespace of the pod's own)
    sandbox_uid: int = 1000
    # requests, limits, retries and deadline per step kind (p3.kfp.resources; --resources)
    resources: dict[str, StepResources] = field(default_factory=lambda: dict(RESOURCE_DEFAULTS))
    # training checkpoints on the model-cache volume: a retried training pod resumes there
    checkpoint_root: str = "/cache/p3-checkpoints"


SANDBOX_LABEL = ("p3.kubeflow.org/sandbox", "true")
S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "P3_S3_ENDPOINT_URL")
# Steps whose output is a pure function of their inputs: cached by KFP. Sampling and
# training are not (seeds do not make GPU kernels deterministic): never cached on a cluster.
DETERMINISTIC = {"prepare", "shard", "merge", "embed", "select", "report"}
# Model steps after the staging step: they load from the model cache, never from the Hub.
OFFLINE_KINDS = {"score", "embed", "train", "evaluate"}


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
    # run components from the image (p3.kfp.executor) rather than from source in the YAML;
    # None = when building for a cluster (kfp.local's SubprocessRunner needs the source)
    image_executor: bool | None = None
    # one embedding task per epoch (the policy embeds) or one before the epochs;
    # None = per epoch exactly when the embedder default is ``policy``
    embed_per_epoch: bool | None = None

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
    per_epoch = embeds_per_epoch(opts, defaults)

    def body(*channels):
        # kfp calls the pipeline function with one channel per parameter, in signature order
        return _wire(opts, PipelineParams(*channels), epoch_of_task, display_names, embed_per_epoch=per_epoch)

    body.__name__ = f"p3_{opts.task}"
    body.__doc__ = _docstring(opts)
    body.__signature__ = _signature(PipelineParams(**defaults), _outputs_type(opts.epochs))
    pipeline = dsl.pipeline(name=f"p3-{opts.task}", display_name=f"P3 {opts.task.upper()} ({opts.epochs} epochs)")(body)
    return Built(pipeline, epoch_of_task, display_names, defaults)


def embeds_per_epoch(opts: BuildOptions, defaults: dict[str, Any]) -> bool:
    """One embedding task per epoch (the policy embeds) or one before the epochs."""
    return defaults["embedder"] == "policy" if opts.embed_per_epoch is None else opts.embed_per_epoch


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


def _wire(opts: BuildOptions, p: Any, epoch_of_task: dict[str, int], display_names: dict[str, str],
          embed_per_epoch: bool):
    """Create the tasks. ``p`` is a PipelineParams of pipeline channels."""
    setup = TaskSetup(opts, p, epoch_of_task, display_names)
    pool, test, policy = prepare_tasks(opts, p, setup)
    embeddings = None if embed_per_epoch else embed_once(opts, p, setup, pool, policy)
    epochs = list(epoch.epoch_loop(PipelineSteps(opts, p, setup, pool, test, embeddings), opts.epochs, policy))
    last = epochs[-1]
    outputs = _outputs_type(opts.epochs)
    return outputs(last.report.outputs["run_html"], last.report.outputs["run_markdown"], last.policy,
                   *[out.selection for out in epochs])


_from_image = functools.cache(executor.from_image)  # one image component per component


# The run parameter that names each component image (a cluster may point it at its own registry).
# a component's image (its build-time default) -> the run parameter that replaces it
IMAGE_PARAMS = {f.default: f.name for f in dataclasses.fields(PipelineParams) if f.name.startswith("image_")}


class TaskSetup:
    """``setup(task, epoch, what)``: name, image, env, caching and cluster settings of a task;
    ``setup.run(component)``: the component as this build runs it (from the image on a cluster).

    The task's step kind comes from its component (:func:`p3.kfp.steps.kind_of`), its image
    parameter from the component's image. ``epoch`` is -1 before the epochs, or a pipeline
    channel when the epoch is only known at run time (the per-epoch pipeline: shown as
    ``epoch k``; the steps that take ``epoch`` name it in their log lines). Once ``stage`` (the
    staging task) is set, model steps run after it, offline; once ``first`` is set, every later
    task runs after it (the per-epoch pipeline's state load: a run that does not fit the
    training run's state does no work)."""

    def __init__(self, opts: BuildOptions, p: Any, epoch_of_task: dict[str, int], display_names: dict[str, str]):
        self.opts, self.p, self.epoch_of_task, self.display_names = opts, p, epoch_of_task, display_names
        image_executor = opts.cluster is not None if opts.image_executor is None else opts.image_executor
        self.run = _from_image if image_executor else (lambda component: component)
        self.stage = self.first = None

    def __call__(self, task, epoch: Any, what: str, cache: bool | None = None):
        opts = self.opts
        kind = kind_of(task.component_spec.name)
        image = IMAGE_PARAMS[task.component_spec.implementation.container.image]
        known = isinstance(epoch, int)
        self.epoch_of_task[task.name] = epoch if known else -2
        self.display_names[task.name] = what if known and epoch < 0 else f"epoch {epoch if known else 'k'}: {what}"
        task.set_display_name(self.display_names[task.name])
        task.set_container_image(getattr(self.p, image))
        task.set_env_variable("P3_EPOCH", str(epoch) if known and epoch >= 0 else "")
        task.set_caching_options(enable_caching=(opts.cache_everything or kind in DETERMINISTIC) if cache is None
                                 else cache)
        if self.first is not None:
            task.after(self.first)
        if self.stage is not None and kind in OFFLINE_KINDS:
            task.after(self.stage)
            task.set_env_variable("HF_HUB_OFFLINE", "1")
        if opts.cluster is not None:
            _apply_cluster(task, kind, opts.cluster)
        return task


def prepare_tasks(opts: BuildOptions, p: Any, setup: TaskSetup) -> tuple[Any, Any, Any]:
    """(pool, test set, starting policy: the bootstrapped tiny model, or None = base_model by name,
    staged into the model cache first)."""
    run = setup.run
    prep = setup(run(preparer)(task=opts.task, **step_arguments(p, "prepare")), -1, "prepare train")
    pool = prep.outputs["problems"]
    test = setup(run(preparer)(task=opts.task, **step_arguments(p, "prepare_test")),
                 -1, "prepare test").outputs["problems"]
    policy = None
    if opts.bootstrap_tiny:
        boot = setup(run(bootstrapper)(problems=pool, **step_arguments(p, "bootstrap")), -1, "bootstrap tiny model")
        policy = boot.outputs["model"]
    else:
        setup.stage = setup(run(model_stager)(base_model=p.base_model), -1, "stage model")
    return pool, test, policy


def _with_policy(p: Any, policy, **kw) -> dict:
    return dict(kw, policy=policy) if policy is not None else dict(kw, base_model=p.base_model)


def embed_once(opts: BuildOptions, p: Any, setup: TaskSetup, pool, policy):
    """The pool's embeddings before the epochs (an embedder that is not the policy)."""
    run = setup.run
    kw = dict(per_epoch=False, **_with_policy(p, policy, **step_arguments(p, "embed")))
    if opts.shards == 1:
        return setup(run(embedder)(problems=pool, **kw), -1, "embed").outputs["embeddings"]
    with dsl.ParallelFor(items=list(range(opts.shards)), name="embed-shards") as i:
        part = setup(run(shard_split)(problems=pool, index=i, count=opts.shards), -1, "shard").outputs["shard"]
        x_part = setup(run(embedder)(problems=part, **kw), -1, "embed shard")
    return setup(run(shard_merge)(parts=dsl.Collected(x_part.outputs["embeddings"]), problems=pool),
                 -1, "merge embeddings").outputs["merged"]


class PipelineSteps:
    """The epoch's steps as KFP tasks (:func:`p3.epoch.epoch_flow` wires them), named
    ``epoch e: …`` by ``setup``. ``embeddings``: the pool's, made before the epochs; None =
    every epoch embeds with its policy. With ``opts.shards`` > 1 scoring (and embedding) fan
    out over the shards of the pool and are merged before selection."""

    def __init__(self, opts: BuildOptions, p: Any, setup: TaskSetup, pool, test, embeddings=None):
        self.opts, self.p, self.setup, self.pool, self.test, self.embeddings = opts, p, setup, pool, test, embeddings

    def score_and_embed(self, e: Any, policy):
        opts, p, setup, run, pool = self.opts, self.p, self.setup, self.setup.run, self.pool
        embeddings = self.embeddings
        embed_here = embeddings is None
        score_kw = dict(epoch=e, tensor_parallel_size=_gpus(opts, "score"), **step_arguments(p, "score"))
        embed_kw = dict(epoch=e, **step_arguments(p, "embed"))
        if opts.shards == 1:
            difficulty = setup(run(scorer)(problems=pool, **_with_policy(p, policy, **score_kw)),
                               e, "score").outputs["difficulty"]
            if embed_here:
                embeddings = setup(run(embedder)(problems=pool, **_with_policy(p, policy, **embed_kw)),
                                   e, "embed").outputs["embeddings"]
            return difficulty, embeddings
        with dsl.ParallelFor(items=list(range(opts.shards)), name=f"epoch-{e if isinstance(e, int) else 'k'}-shards") as i:
            part = setup(run(shard_split)(problems=pool, index=i, count=opts.shards, epoch=e), e, "shard").outputs["shard"]
            d_part = setup(run(scorer)(problems=part, **_with_policy(p, policy, **score_kw)), e, "score shard")
            if embed_here:
                x_part = setup(run(embedder)(problems=part, **_with_policy(p, policy, **embed_kw)), e, "embed shard")
        difficulty = setup(run(shard_merge)(parts=dsl.Collected(d_part.outputs["difficulty"]), problems=pool, epoch=e),
                           e, "merge difficulty").outputs["merged"]
        if embed_here:
            embeddings = setup(run(shard_merge)(parts=dsl.Collected(x_part.outputs["embeddings"]), problems=pool,
                                                epoch=e), e, "merge embeddings").outputs["merged"]
        return difficulty, embeddings

    def select(self, e: Any, difficulty, embeddings, previous, previous_difficulty):
        kw = dict(problems=self.pool, difficulty=difficulty, embeddings=embeddings, epoch=e, epochs=self.opts.epochs,
                  **step_arguments(self.p, "select"))
        if previous is not None:
            kw["previous"] = previous
        if previous_difficulty is not None:
            kw["previous_difficulty"] = previous_difficulty
        task = self.setup(self.setup.run(selector)(**kw), e, "select")
        return task.outputs["selection"], task.outputs["report"]

    def train(self, e: Any, policy, selection):
        kw = _with_policy(self.p, policy, epoch=e, **step_arguments(self.p, "train"))
        return self.setup(self.setup.run(trainer)(problems=self.pool, selection=selection, **kw),
                          e, "train").outputs["model"]

    def evaluate(self, e: Any, model):
        task = self.setup(self.setup.run(evaluator)(problems=self.test, policy=model, epoch=e,
                                                    tensor_parallel_size=_gpus(self.opts, "evaluate"),
                                                    **step_arguments(self.p, "evaluate")), e, "evaluate")
        return task.outputs["results"]

    def report(self, e: Any, difficulty, selection, selection_report, evaluation, previous_run):
        kw = dict(problems=self.pool, difficulty=difficulty, selection=selection, selection_report=selection_report,
                  evaluation=evaluation, epoch=e, **step_arguments(self.p, "report"))
        if previous_run is not None:
            kw["previous_run"] = previous_run
        task = self.setup(self.setup.run(reporter)(**kw), e, "report")
        return task.outputs["run"], task


def _gpus(opts: BuildOptions, kind: str) -> int:
    """GPUs of one step's pod (at least 1: the tensor-parallel size of a vLLM engine)."""
    return max(1, opts.cluster.gpus.get(kind, 0)) if opts.cluster is not None else 1


# Which steps need what on a cluster.
GPU_KINDS = ("score", "embed", "train", "evaluate")
MODEL_KINDS = {"stage", "score", "embed", "train", "evaluate", "bootstrap"}  # load or save weights: cache PVC
HUB_KINDS = {"stage"}  # reach the Hugging Face Hub: the HF token
SHM_KINDS = {"score", "evaluate", "train"}  # vLLM and torchrun need a big /dev/shm
SANDBOX_KINDS = {"score", "evaluate"}  # grade model-written programs


def _apply_cluster(task, kind: str, c: ClusterSettings) -> None:
    """Resources, GPU request, node selection, /dev/shm, cache PVC, secrets, sandbox hardening."""
    apply_resources(task, c.resources[kind])
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
    if kind == "train" and c.checkpoint_root and c.model_cache_pvc:
        task.set_env_variable("P3_CHECKPOINT_ROOT", c.checkpoint_root)
    if kind in HUB_KINDS and c.hf_secret:
        kubernetes.use_secret_as_env(task, secret_name=c.hf_secret, secret_key_to_env={"HF_TOKEN": "HF_TOKEN"},
                                     optional=True)
    if kind in SANDBOX_KINDS:
        kubernetes.add_pod_label(task, *SANDBOX_LABEL)
        kubernetes.set_security_context(task, run_as_user=c.sandbox_uid, run_as_group=c.sandbox_uid,
                                        run_as_non_root=True)


def compile_pipeline(opts: BuildOptions, path: str, defaults: dict[str, Any] | None = None, build_fn=None) -> str:
    """Compile the pipeline ``build_fn`` builds (default :func:`build`) to YAML at ``path``; return the path."""
    from kfp import compiler

    built = (build_fn or build)(opts, defaults)
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

