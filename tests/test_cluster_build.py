"""What a cluster build compiles into every task: the shared image executor (no function
source in the YAML), resources, retries and deadlines per step kind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from p3 import storage
from p3.kfp import executor, resources

ROOT = Path(__file__).resolve().parents[1]


def run_like_the_launcher(comp, arguments: dict, root: Path) -> Path:
    """Run a compiled component the way KFP runs a task: the executor input built by
    kfp's own code (kfp.local.executor_input_utils, what the local runner uses), the
    placeholders in the container's command and args replaced by kfp's
    placeholder_utils, then that command in a subprocess (``python3`` = this
    interpreter, as kfp.local's SubprocessTaskHandler does). Returns the task root."""
    from google.protobuf import json_format
    from kfp.local import executor_input_utils, placeholder_utils
    from kfp.pipeline_spec import pipeline_spec_pb2

    spec = comp.pipeline_spec
    deployment = pipeline_spec_pb2.PipelineDeploymentConfig()
    json_format.ParseDict(json_format.MessageToDict(spec.deployment_spec), deployment)
    (container,) = [e.container for e in deployment.executors.values()]
    task_root = root / "task"
    executor_input = executor_input_utils.construct_executor_input(
        component_spec=spec.root, arguments=arguments, task_root=str(task_root), block_input_artifact=False)
    command = placeholder_utils.replace_placeholders(
        full_command=list(container.command) + list(container.args),
        executor_input_dict=executor_input_utils.executor_input_to_dict(executor_input, spec.root),
        pipeline_resource_name="p", task_resource_name="t", pipeline_root=str(root), unique_pipeline_id="u")
    command = [sys.executable if part == "python3" else part for part in command]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return task_root


def test_image_executor_runs_the_installed_function_with_no_source_in_the_spec(tmp_path):
    import pyarrow as pa
    from kfp import dsl

    from p3.kfp.components.shard_split import shard_split

    image_comp = executor.from_image(shard_split)
    container = image_comp.component_spec.implementation.container
    assert container.command == executor.COMMAND and "def shard_split" not in " ".join(container.args)
    # the original stays lightweight (kfp.local's SubprocessRunner runs only those)
    assert "def shard_split" in " ".join(shard_split.component_spec.implementation.container.command)
    src = tmp_path / "pool.parquet"
    storage.write_table(pa.table({"id": [f"p{i}" for i in range(7)]}), str(src))
    task_root = run_like_the_launcher(
        image_comp, {"problems": dsl.Dataset(name="problems", uri=str(src), metadata={}), "index": 1, "count": 3},
        tmp_path)
    (shard,) = [p for p in task_root.rglob("shard") if p.is_file()]
    assert storage.read_table(str(shard)).column("id").to_pylist() == ["p1", "p4"]


def test_image_executor_names_an_unknown_component():
    out = subprocess.run([sys.executable, "-m", "p3.kfp.executor", "--component", "nope", "--executor_input", "{}"],
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, capture_output=True, text=True)
    assert out.returncode != 0 and "p3.kfp.components.nope" in out.stderr


def test_resources_parse_and_reject():
    r = resources.parse_resources("train:memory=128Gi,train:retries=5,select:cpu=8")
    assert r["train"].memory == "128Gi" and r["train"].retries == 5 and r["select"].cpu == "8"
    assert r["score"] == resources.DEFAULTS["score"]
    for bad in ("train:gpu=1", "gpu:cpu=1", "train:retries=x", "train:cpu="):
        with pytest.raises(ValueError, match="--resources"):
            resources.parse_resources(bad)


def test_every_kind_has_requests_within_limits_and_gpu_kinds_retry():
    from kubernetes.utils import parse_quantity

    for kind, r in resources.DEFAULTS.items():
        assert parse_quantity(r.cpu) <= parse_quantity(r.cpu_limit), kind
        assert parse_quantity(r.memory) <= parse_quantity(r.memory_limit), kind
        assert r.timeout_s > 0
    for kind in ("score", "embed", "train", "evaluate"):
        assert resources.DEFAULTS[kind].retries >= 1, kind


def test_the_retry_window_covers_every_attempt():
    """Argo's backoff.maxDuration bounds all attempts together (it replaces the pod's
    deadline once a step is retried): a 24 h training retried 3 times needs > 4 days."""
    r = resources.DEFAULTS["train"]
    assert resources.retry_window_s(r) >= (r.retries + 1) * r.timeout_s + r.backoff_s * (2 ** r.retries - 1)


def test_a_retried_training_pod_finds_the_checkpoints_of_the_first(monkeypatch, tmp_path):
    from p3.kfp.components._glue import checkpoint_settings

    monkeypatch.delenv("P3_CHECKPOINT_ROOT", raising=False)
    assert checkpoint_settings("s3://b/run/trainer/model") == {}  # local runs: p3 train's own default
    monkeypatch.setenv("P3_CHECKPOINT_ROOT", str(tmp_path))
    first = checkpoint_settings("s3://b/run/trainer-3/model")
    assert first == checkpoint_settings("s3://b/run/trainer-3/model")  # every attempt of the task
    assert first["resume"] is True and first["checkpoint_dir"].startswith(str(tmp_path))
    assert checkpoint_settings("s3://b/run/trainer-4/model")["checkpoint_dir"] != first["checkpoint_dir"]


def _compile(tmp_path, argv: list[str]) -> tuple[dict, dict]:
    import yaml

    from p3.kfp import entry

    out = tmp_path / "p.yaml"
    assert entry.main("math", ["--compile", str(out), *argv]) == 0
    ir, platform = yaml.safe_load_all(out.read_text())
    return ir, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _tasks(ir: dict) -> dict[str, dict]:
    dags = [ir["root"]["dag"]] + [c["dag"] for c in ir["components"].values() if "dag" in c]
    return {t["taskInfo"]["name"]: t for d in dags for t in d["tasks"].values()}


def test_model_steps_run_offline_after_the_staging_step(tmp_path):
    ir, _ = _compile(tmp_path, ["--epochs", "1"])
    tasks = _tasks(ir)
    key = {name: k for d in [ir["root"]["dag"]] for k, t in d["tasks"].items() for name in [t["taskInfo"]["name"]]}
    for name in ("embed", "epoch 0: score", "epoch 0: train", "epoch 0: evaluate"):
        assert key["stage model"] in tasks[name]["dependentTasks"], name
        env = ir["deploymentSpec"]["executors"][ir["components"][tasks[name]["componentRef"]["name"]]["executorLabel"]]
        assert {"name": "HF_HUB_OFFLINE", "value": "1"} in env["container"]["env"], name
    stage_exec = ir["components"][tasks["stage model"]["componentRef"]["name"]]["executorLabel"]
    assert "HF_HUB_OFFLINE" not in str(ir["deploymentSpec"]["executors"][stage_exec])
    # the tiny preset bootstraps its model: nothing to stage
    ir, _ = _compile(tmp_path, ["--epochs", "1", "--preset", "tiny"])
    assert "stage model" not in _tasks(ir)


def test_resources_option_reaches_the_compiled_tasks(tmp_path):
    ir, platform = _compile(tmp_path, ["--epochs", "1", "--resources", "train:memory=160Gi,train:retries=5,select:timeout_s=600"])
    tasks = _tasks(ir)

    def executor_label(name):
        return ir["components"][tasks[name]["componentRef"]["name"]]["executorLabel"]

    train = ir["deploymentSpec"]["executors"][executor_label("epoch 0: train")]["container"]["resources"]
    assert train["resourceMemoryRequest"] == "160Gi" and train["resourceMemoryLimit"] == resources.DEFAULTS["train"].memory_limit
    assert tasks["epoch 0: train"]["retryPolicy"]["maxRetryCount"] == 5
    assert platform[executor_label("epoch 0: select")]["activeDeadlineSeconds"] in ("600", 600)
    assert "retryPolicy" not in tasks["epoch 0: select"]  # CPU steps fail fast
    env = ir["deploymentSpec"]["executors"][executor_label("epoch 0: train")]["container"]["env"]
    assert {"name": "P3_CHECKPOINT_ROOT", "value": "/cache/p3-checkpoints"} in env
    with pytest.raises(SystemExit, match="--resources"):
        _compile(tmp_path, ["--resources", "train:gpus=2"])


def test_the_operator_guide_lists_the_default_resources():
    guide = (ROOT / "docs" / "operator-guide.md").read_text()
    for kind, r in resources.DEFAULTS.items():
        row = f"| {kind} | {r.cpu} / {r.cpu_limit} | {r.memory} / {r.memory_limit} | {r.retries or '–'} |"
        assert row in guide, f"docs/operator-guide.md §6 disagrees with resources.DEFAULTS[{kind!r}]"
