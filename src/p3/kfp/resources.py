"""What each step kind asks of the cluster: CPU and memory, retries, a time limit.

Every task of a cluster build gets its kind's :class:`StepResources`: requests (so the
pod is Burstable or Guaranteed, not BestEffort, and a namespace ResourceQuota admits
it), limits, a retry policy with exponential backoff, and a deadline. GPU counts come
from ``ClusterSettings.gpus``. The GPU steps retry because they are the ones that run
on preemptible (spot) nodes and for hours; a retried training step resumes from its
last checkpoint on the model-cache volume (the trainer component), scoring, embedding
and evaluation simply run again. CPU steps fail fast: a failure there is a bug or bad
input, not a lost node.

The defaults fit the full preset (1.5B-parameter models, a pool of ~10k problems);
``--resources KIND:FIELD=VALUE,…`` changes them per build.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class StepResources:
    """Resources, retries and time limit of one step kind's pods."""

    cpu: str = field(default="1", metadata={"help": "CPU request (Kubernetes quantity)"})
    memory: str = field(default="2Gi", metadata={"help": "memory request"})
    cpu_limit: str = field(default="2", metadata={"help": "CPU limit"})
    memory_limit: str = field(default="4Gi", metadata={"help": "memory limit (the pod is OOM-killed above it)"})
    retries: int = field(default=0, metadata={"help": "retries after a failure (preemption, lost node)"})
    backoff_s: int = field(default=60, metadata={"help": "seconds before the first retry; doubles each time"})
    timeout_s: int = field(default=3600, metadata={"help": "a pod running longer is stopped (activeDeadlineSeconds)"})


_GPU = dict(retries=3)
DEFAULTS: dict[str, StepResources] = {
    # CPU steps
    "prepare": StepResources(cpu="1", memory="4Gi", cpu_limit="2", memory_limit="8Gi", timeout_s=2 * 3600),
    "stage": StepResources(cpu="1", memory="2Gi", cpu_limit="2", memory_limit="4Gi", retries=3, timeout_s=2 * 3600),
    "bootstrap": StepResources(cpu="2", memory="4Gi", cpu_limit="4", memory_limit="8Gi", timeout_s=3600),
    "shard": StepResources(cpu="1", memory="2Gi", cpu_limit="2", memory_limit="4Gi", timeout_s=1800),
    "merge": StepResources(cpu="1", memory="2Gi", cpu_limit="2", memory_limit="4Gi", timeout_s=1800),
    # the DPP kernel of a 10k pool in float64 is 0.8 GB, screening uses a few copies
    "select": StepResources(cpu="4", memory="16Gi", cpu_limit="8", memory_limit="32Gi", timeout_s=4 * 3600),
    "report": StepResources(cpu="1", memory="2Gi", cpu_limit="2", memory_limit="4Gi", timeout_s=1800),
    # the per-epoch pipeline's state steps copy a model folder in or out of object storage
    "state": StepResources(cpu="1", memory="2Gi", cpu_limit="2", memory_limit="4Gi", timeout_s=2 * 3600),
    # GPU steps (per pod; GPUs from ClusterSettings.gpus)
    "score": StepResources(cpu="8", memory="48Gi", cpu_limit="16", memory_limit="96Gi", timeout_s=12 * 3600, **_GPU),
    "embed": StepResources(cpu="4", memory="16Gi", cpu_limit="8", memory_limit="32Gi", timeout_s=3 * 3600, **_GPU),
    "train": StepResources(cpu="16", memory="96Gi", cpu_limit="32", memory_limit="192Gi", timeout_s=24 * 3600, **_GPU),
    "evaluate": StepResources(cpu="8", memory="48Gi", cpu_limit="16", memory_limit="96Gi", timeout_s=6 * 3600, **_GPU),
}


def parse_resources(spec: str, base: dict[str, StepResources] | None = None) -> dict[str, StepResources]:
    """``train:memory=128Gi,train:retries=5,select:cpu=8`` over ``base`` (default: DEFAULTS)."""
    out = dict(base or DEFAULTS)
    names = {f.name: f.type for f in dataclasses.fields(StepResources)}
    for part in filter(None, (s.strip() for s in spec.split(","))):
        target, _, value = part.partition("=")
        kind, _, name = target.partition(":")
        if kind not in out or name not in names or not value:
            raise ValueError(f"bad --resources entry {part!r}: want KIND:FIELD=VALUE with KIND in {sorted(out)} "
                             f"and FIELD in {sorted(names)}")
        if names[name] == "int":
            if not value.isdigit():
                raise ValueError(f"bad --resources entry {part!r}: {name} takes a whole number")
            value = int(value)
        out[kind] = dataclasses.replace(out[kind], **{name: value})
    return out


def retry_window_s(res: StepResources) -> int:
    """How long after its first start a step may still be retried: every attempt's
    deadline plus the backoffs. Argo's backoff.maxDuration (what KFP's
    backoff_max_duration becomes) is a deadline for all attempts together, and it
    replaces the pod deadline once a step is retried (argo-workflows docs, Backoff;
    argoproj/argo-workflows#13044), so it must not be shorter than this."""
    return (res.retries + 1) * res.timeout_s + sum(res.backoff_s * 2**i for i in range(res.retries))


def apply_resources(task, res: StepResources) -> None:
    """Set ``res`` on a pipeline task (KFP's task methods and kfp-kubernetes' timeout)."""
    from kfp import kubernetes

    task.set_cpu_request(res.cpu).set_cpu_limit(res.cpu_limit)
    task.set_memory_request(res.memory).set_memory_limit(res.memory_limit)
    if res.retries:
        task.set_retry(num_retries=res.retries, backoff_duration=f"{res.backoff_s}s", backoff_factor=2.0,
                       backoff_max_duration=f"{retry_window_s(res)}s")
    if res.timeout_s:
        kubernetes.set_timeout(task, res.timeout_s)
