"""The compiled pipelines committed under pipelines/compiled/ (for import from the KFP UI) are
what the command line compiles today, byte for byte. When this fails the DAG or a default
changed: `make compile` rewrites them."""

from __future__ import annotations

from pathlib import Path

import pytest

from p3.kfp import entry

ROOT = Path(__file__).resolve().parents[1]
COMPILED = ROOT / "pipelines" / "compiled"


@pytest.mark.parametrize("task,argv,name", [
    ("math", [], "p3_math.yaml"),
    ("apps", [], "p3_apps.yaml"),
    ("math", ["--epoch-per-run"], "p3_math_per_epoch.yaml"),
    ("apps", ["--epoch-per-run"], "p3_apps_per_epoch.yaml"),
])
def test_committed_yaml_is_what_compile_writes(task, argv, name, tmp_path, capsys):
    out = tmp_path / name
    assert entry.main(task, ["--compile", str(out), *argv]) == 0
    committed = COMPILED / name
    assert committed.read_bytes() == out.read_bytes(), f"{committed} is stale: run `make compile`"


# ----------------------------------------------------------------------------- docs/operator-guide.md §9

# Keys of the pipeline spec every KFP 2.0 backend reads (the "KFP 2.0 pipeline spec" row).
SPEC_2_0 = {
    "pipelineInfo", "name", "description", "root", "dag", "tasks", "components", "deploymentSpec", "executors",
    "container", "image", "command", "args", "env", "value", "schemaVersion", "sdkVersion", "inputDefinitions",
    "outputDefinitions", "parameters", "artifacts", "parameterType", "defaultValue", "isOptional", "artifactType",
    "schemaTitle", "schemaVersion", "taskInfo", "componentRef", "inputs", "componentInputParameter",
    "componentInputArtifact", "runtimeValue", "constant", "taskOutputParameter", "taskOutputArtifact",
    "producerTask", "outputParameterKey", "outputArtifactKey", "dependentTasks", "cachingOptions", "enableCache",
    "executorLabel", "outputs", "artifactSelectors", "producerSubtask", "platforms", "kubernetes",
    "resources",
}
# The start of each §9 row -> the keys of the YAML whose minimum versions it gives.
ROW_KEYS = {
    "`set_retry(": ("retryPolicy", "maxRetryCount", "backoffDuration", "backoffFactor", "backoffMaxDuration"),
    "`kubernetes.set_timeout`": ("activeDeadlineSeconds",),
    "`kubernetes.set_security_context`": ("securityContext", "runAsUser", "runAsGroup", "runAsNonRoot"),
    "`kubernetes.add_pod_label`": ("podMetadata", "labels"),
    "`kubernetes.add_toleration`": ("tolerations", "key", "operator", "effect"),
    "`kubernetes.empty_dir_mount`": ("emptyDirMounts", "medium", "sizeLimit", "volumeName"),
    "`kubernetes.mount_pvc`": ("pvcMount", "mountPath"),
    "`kubernetes.use_secret_as_env(optional=True)`": ("secretAsEnv", "keyToEnv", "secretKey", "envVar", "secretName",
                                                     "optional"),
    "secret and PVC names as parameters": ("secretNameParameter", "pvcNameParameter"),
    "`kubernetes.add_node_selector`": ("nodeSelector",),
    "`dsl.If`": ("triggerPolicy", "condition"),
    "accelerator type/count": ("accelerator", "type", "count", "resourceType", "resourceCount"),
    "CPU and memory requests": ("cpuRequest", "cpuLimit", "memoryRequest", "memoryLimit", "resourceCpuRequest",
                                "resourceCpuLimit", "resourceMemoryRequest", "resourceMemoryLimit"),
    "pipeline display name": ("displayName",),
    "`dsl.ParallelFor`": ("parameterIterator", "items", "raw", "itemInput", "iteratorPolicy", "parallelismLimit",
                          "isArtifactList"),
}
FEATURE_ROWS = {key: row for row, keys in ROW_KEYS.items() for key in keys}
NAME_MAPS = {"parameters", "artifacts", "tasks", "components", "executors", "labels"}  # keys are names


def _keys(node, out: set[str]) -> set[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            out.add(k)
            for child in (v.values() if k in NAME_MAPS and isinstance(v, dict) else [v]):
                _keys(child, out)
    elif isinstance(node, list):
        for x in node:
            _keys(x, out)
    return out


def _compat_rows() -> list[str]:
    guide = (ROOT / "docs" / "operator-guide.md").read_text()
    section = guide.split("## 9. Compatibility", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| feature")]


def test_every_feature_of_the_compiled_yaml_has_a_sourced_compatibility_row(tmp_path):
    """Each key of the compiled pipelines (the four committed ones, and a sharded build with a node
    selector, which use what the defaults do not) is either plain KFP 2.0 pipeline spec or has its
    row in docs/operator-guide.md §9 with a backend version and a source (a kubeflow/pipelines PR)."""
    import re

    import yaml

    sharded = tmp_path / "sharded.yaml"
    assert entry.main("math", ["--compile", str(sharded), "--shards", "2", "--node-selector", "pool=gpu"]) == 0
    keys: set[str] = set()
    for path in [*sorted(COMPILED.glob("*.yaml")), sharded]:
        for doc in yaml.safe_load_all(path.read_text()):
            _keys(doc, keys)
    unlisted = keys - SPEC_2_0 - set(FEATURE_ROWS)
    assert not unlisted, f"keys in the compiled YAML with no §9 row (add one, then map them here): {sorted(unlisted)}"
    rows = _compat_rows()
    for key in sorted(keys & set(FEATURE_ROWS)):
        row = [r for r in rows if r[2:].startswith(FEATURE_ROWS[key])]
        assert len(row) == 1, f"§9 has no row starting {FEATURE_ROWS[key]!r} (for {key!r})"
        cells = [c.strip() for c in row[0].strip("|").split("|")]
        assert len(cells) == 5, row[0]
        assert re.search(r"\b2\.\d+\.\d+\b", cells[2]), f"{key}: no backend version in {cells[2]!r}"
        assert "github.com/kubeflow/pipelines/pull/" in cells[4], f"{key}: no PR cited in {cells[4]!r}"
