"""Estimate of the Argo Workflow object that KFP's backend makes from a compiled pipeline.

KFP's Argo compiler (kubeflow/pipelines backend/src/v2/compiler/argocompiler) writes, as
workflow parameters, each distinct component spec and executor once (named by content
hash, ``components-<sha>`` / ``implementations-<sha>``), each executor's Kubernetes config
(``kubernetes-<name>``) and the whole root DAG (``components-root``), every one a JSON
document inside a string; then, per DAG, a template whose tasks repeat each task's spec
as a driver argument, next to fixed system templates. The constants below were fitted
on KFP's own pairs of compiled pipeline and compiled Workflow (test_data/
sdk_compiled_pipelines/valid/ and test_data/compiled-workflows/ at commit 7b70c7b): over
the 21 pipelines with 8 or more tasks, estimate / real size has median 1.08, range
0.95-1.26 (JSON, as the object is stored).
"""

from __future__ import annotations

import hashlib
import json

FIXED = 9000  # system templates (container driver/executor/impl, DAG driver), entrypoint, spec settings
PER_TASK = 650  # a task's driver and executor entries in its DAG template, besides its spec
PER_DISTINCT = 180  # the names of a components-/implementations- parameter pair
PER_LOOP = 1500  # the iteration and iterator templates of a ParallelFor


def _json(obj) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True)


def _as_string(obj) -> int:
    """Bytes of a JSON document stored as a string value (its quotes escaped)."""
    return len(json.dumps(_json(obj)))


def workflow_bytes(ir: dict, platform: dict) -> int:
    """Estimated JSON size of the Workflow for pipeline spec ``ir`` with Kubernetes
    executor configs ``platform`` (the second YAML document's executors)."""
    comps, execs = ir.get("components", {}), ir.get("deploymentSpec", {}).get("executors", {})
    size = FIXED + _as_string(ir["root"])
    distinct = set()
    for comp in comps.values():
        ex = execs.get(comp.get("executorLabel"), {})
        key = hashlib.sha256((_json(comp) + _json(ex)).encode()).hexdigest()
        if key not in distinct:
            distinct.add(key)
            size += _as_string(comp) + (_as_string(ex.get("container", ex)) if ex else 0) + PER_DISTINCT
    size += sum(_as_string(cfg) + 60 for cfg in platform.values())
    for dag in [ir["root"]] + [c for c in comps.values() if "dag" in c]:
        for task in dag["dag"]["tasks"].values():
            size += PER_TASK + _as_string(task)
            if "parameterIterator" in task or "artifactIterator" in task:
                size += PER_LOOP
    return size
