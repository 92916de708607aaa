"""The pipelines: compiled YAML inspected (--submit/--schedule: tests/test_kfp_remote.py).

The local end-to-end runs (kfp.local) are at the end of this file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from p3.kfp.components import images
from p3.kfp import builder, entry, params
from p3.kfp.builder import BuildOptions, ClusterSettings, compile_pipeline

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("score", "select", "train", "evaluate", "report")  # per epoch
BEFORE = ("prepare train", "prepare test", "stage model", "embed")  # once, before the epochs (st: embedder)
COMPONENTS = ("preparer", "scorer", "embedder", "selector", "trainer", "evaluator", "reporter")


def compiled(tmp_path, **kw) -> dict:
    path = compile_pipeline(BuildOptions(**kw), str(tmp_path / "p.yaml"))
    docs = list(yaml.safe_load_all(Path(path).read_text()))
    spec = docs[0]
    spec["_platform"] = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if len(docs) > 1 else {}
    return spec


def all_tasks(spec: dict) -> dict[str, tuple[str, dict]]:
    """display name -> (task key, task spec) over the root DAG and every sub-DAG."""
    out = {}
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    for dag in dags:
        for key, t in dag["tasks"].items():
            out.setdefault(t["taskInfo"]["name"], (key, t))
    return out


def executor_of(spec: dict, task: dict) -> tuple[str, dict]:
    label = spec["components"][task["componentRef"]["name"]]["executorLabel"]
    return label, spec["deploymentSpec"]["executors"][label]["container"]


@pytest.mark.parametrize("task", builder.TASKS)
def test_compile_from_the_command_line_writes_the_default_path(task, tmp_path):
    # exactly what a user types, from a directory of their choice
    out = subprocess.run([sys.executable, str(ROOT / "pipelines" / f"p3_{task}.py"), "--compile"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"p3_{task}.yaml"
    spec = yaml.safe_load_all((tmp_path / f"p3_{task}.yaml").read_text()).__next__()
    assert spec["pipelineInfo"]["name"] == f"p3-{task}"
    names = all_tasks(spec)
    assert all(f"epoch {e}: {s}" in names for e in range(5) for s in STEPS)  # preset full: 5 epochs
    assert set(BEFORE) <= set(names) and not [n for n in names if n.endswith(": embed")]


@pytest.mark.parametrize("epochs", [1, 3])
def test_one_group_of_tasks_per_epoch_with_every_component(epochs, tmp_path):
    spec = compiled(tmp_path, task="math", epochs=epochs)
    names = all_tasks(spec)
    for e in range(epochs):
        for s in STEPS:
            assert f"epoch {e}: {s}" in names
    assert f"epoch {epochs}: score" not in names
    assert set(BEFORE) <= set(names)
    comps = " ".join(spec["components"])
    for c in COMPONENTS:
        assert f"comp-{c}" in comps
    # the epoch is in each step's environment (p3.logs names it in every log line)
    for e in range(epochs):
        _, container = executor_of(spec, names[f"epoch {e}: train"][1])
        assert {"name": "P3_EPOCH", "value": str(e)} in container["env"]


def test_artifacts_chain_from_epoch_to_epoch(tmp_path):
    names = all_tasks(compiled(tmp_path, task="math", epochs=3))
    key = {n: k for n, (k, _) in names.items()}

    def producer(step: str, inp: str) -> str:
        art = names[step][1]["inputs"]["artifacts"][inp]["taskOutputArtifact"]
        return art["producerTask"]

    # the epoch's trained model scores, embeds and trains from the next epoch on
    for e in (1, 2):
        for step in ("score", "train"):
            assert producer(f"epoch {e}: {step}", "policy") == key[f"epoch {e - 1}: train"]
        assert producer(f"epoch {e}: select", "previous") == key[f"epoch {e - 1}: select"]
        assert producer(f"epoch {e}: select", "previous_difficulty") == key[f"epoch {e - 1}: score"]
        assert producer(f"epoch {e}: report", "previous_run") == key[f"epoch {e - 1}: report"]
    assert producer("epoch 0: evaluate", "policy") == key["epoch 0: train"]
    assert producer("epoch 1: select", "difficulty") == key["epoch 1: score"]
    # epoch 0 starts from the base model by name: no policy artifact, a base_model parameter
    assert "policy" not in names["epoch 0: score"][1]["inputs"].get("artifacts", {})
    assert "base_model" in names["epoch 0: score"][1]["inputs"]["parameters"]
    # every epoch selects on the one set of embeddings made before the epochs; the report reads
    # the selector's diversity figures, not the embeddings
    for e in range(3):
        assert producer(f"epoch {e}: select", "embeddings") == key["embed"]
        assert "embeddings" not in names[f"epoch {e}: report"][1]["inputs"]["artifacts"]


def test_embed_once_unless_the_embedder_is_the_policy(tmp_path):
    """An st: embedder ignores the policy: one embedding task before the epochs, none in
    an epoch. embedder=policy embeds with each epoch's policy: one per epoch."""
    from p3.kfp.components.embedder import embedder

    names = all_tasks(compiled(tmp_path, task="math", epochs=3))
    embeds = [n for n in names if n.split(": ")[-1].startswith("embed")]
    assert embeds == ["embed"]
    assert names["embed"][1]["inputs"]["parameters"]["per_epoch"]["runtimeValue"]["constant"] is False
    defaults = {**builder.preset_defaults("math", "full"), "embedder": "policy"}
    path = compile_pipeline(BuildOptions(task="math", epochs=3), str(tmp_path / "policy.yaml"), defaults)
    names = all_tasks(yaml.safe_load_all(Path(path).read_text()).__next__())
    key = {n: k for n, (k, _) in names.items()}
    assert "embed" not in names and all(f"epoch {e}: embed" in names for e in range(3))
    for e in (1, 2):
        art = names[f"epoch {e}: embed"][1]["inputs"]["artifacts"]["policy"]["taskOutputArtifact"]
        assert art["producerTask"] == key[f"epoch {e - 1}: train"]
    # a pipeline that embeds once refuses a policy embedder at run time instead of embedding with the base model
    with pytest.raises(ValueError, match="embeds once"):
        embedder.python_func(problems=None, embeddings=None, embedder="policy", per_epoch=False)


def test_tiny_preset_bootstraps_the_policy(tmp_path):
    names = all_tasks(compiled(tmp_path, task="apps", epochs=2, preset="tiny", bootstrap_tiny=True))
    boot = names["bootstrap tiny model"][0]
    art = names["epoch 0: score"][1]["inputs"]["artifacts"]["policy"]["taskOutputArtifact"]
    assert art["producerTask"] == boot


def test_gpu_steps_get_gpus_shm_cache_and_secrets_cpu_steps_do_not(tmp_path):
    cluster = ClusterSettings(gpus=builder.parse_gpus("train=8,score=2", {"score": 1, "embed": 1, "train": 1, "evaluate": 1}),
                              node_selector={"nvidia.com/gpu.product": "H100"})
    spec = compiled(tmp_path, task="math", epochs=2, cluster=cluster)
    names = all_tasks(spec)
    want = {"score": "2", "embed": "1", "train": "8", "evaluate": "1"}
    for step, count in want.items():
        label, container = executor_of(spec, names["embed" if step == "embed" else f"epoch 1: {step}"][1])
        acc = container["resources"]["accelerator"]
        assert acc["resourceType"] == "nvidia.com/gpu" and str(acc["resourceCount"]) == count
        k8s = spec["_platform"][label]
        assert k8s["nodeSelector"]["labels"] == {"nvidia.com/gpu.product": "H100"}
        assert k8s["tolerations"][0]["key"] == "nvidia.com/gpu"
        assert k8s["pvcMount"][0]["mountPath"] == "/cache"
        secrets = {s["secretName"] for s in k8s["secretAsEnv"]}
        assert secrets == {"p3-s3"}  # offline after the staging step: no Hub token
        if step in ("score", "evaluate", "train"):
            shm = k8s["emptyDirMounts"][0]
            assert shm["mountPath"] == "/dev/shm" and shm["medium"] == "Memory"
    # the staging step is the one that reaches the Hub: the token, the cache, no GPU
    label, container = executor_of(spec, names["stage model"][1])
    assert {s["secretName"] for s in spec["_platform"][label]["secretAsEnv"]} == {"p3-s3", "p3-hf-token"}
    assert spec["_platform"][label]["pvcMount"][0]["mountPath"] == "/cache"
    assert "accelerator" not in container["resources"]
    # a vLLM engine spans the GPUs of its pod
    assert names["epoch 1: score"][1]["inputs"]["parameters"]["tensor_parallel_size"]["runtimeValue"]["constant"] == 2
    assert names["epoch 1: evaluate"][1]["inputs"]["parameters"]["tensor_parallel_size"]["runtimeValue"]["constant"] == 1
    for step in ("select", "report"):
        label, container = executor_of(spec, names[f"epoch 1: {step}"][1])
        assert "accelerator" not in container.get("resources", {})
        k8s = spec["_platform"].get(label, {})
        assert "nodeSelector" not in k8s and "pvcMount" not in k8s
        assert {s["secretName"] for s in k8s["secretAsEnv"]} == {"p3-s3"}


def test_sandboxed_steps_run_non_root_and_carry_the_network_policy_label(tmp_path):
    spec = compiled(tmp_path, task="apps", epochs=1)
    names = all_tasks(spec)
    for step in ("score", "evaluate"):
        label, _ = executor_of(spec, names[f"epoch 0: {step}"][1])
        k8s = spec["_platform"][label]
        assert k8s["podMetadata"]["labels"] == dict([builder.SANDBOX_LABEL])
        sc = k8s["securityContext"]
        assert sc["runAsNonRoot"] is True and int(sc["runAsUser"]) != 0
    label, _ = executor_of(spec, names["epoch 0: train"][1])
    assert "podMetadata" not in spec["_platform"][label]


def test_caching_off_for_sampling_and_training_on_for_deterministic_steps(tmp_path):
    names = all_tasks(compiled(tmp_path, task="math", epochs=1))

    def cached(name):
        return names[name][1].get("cachingOptions", {}).get("enableCache", False)

    for step in ("score", "train", "evaluate"):
        assert not cached(f"epoch 0: {step}")
    for step in ("select", "report"):
        assert cached(f"epoch 0: {step}")
    assert cached("prepare train") and cached("embed")
    assert not cached("stage model")  # the cache volume may have been emptied since
    local = all_tasks(compiled(tmp_path, task="math", epochs=1, cache_everything=True))
    assert all(t.get("cachingOptions", {}).get("enableCache") for _, t in local.values())


def test_images_are_pipeline_parameters_with_pinned_defaults(tmp_path):
    spec = compiled(tmp_path, task="math", epochs=1)
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["image_base"]["defaultValue"] == images.BASE
    assert params["image_vllm"]["defaultValue"] == images.VLLM
    assert params["image_train"]["defaultValue"] == images.TRAIN
    for name in ("image_base", "image_vllm", "image_train"):
        assert re.search(r":\d+\.\d+\.\d+$", params[name]["defaultValue"])
    used = {c["container"]["image"] for c in spec["deploymentSpec"]["executors"].values()}
    assert used == {"{{$.inputs.parameters['pipelinechannel--%s']}}" % n
                    for n in ("image_base", "image_vllm", "image_train")}
    names = all_tasks(spec)
    _, train = executor_of(spec, names["epoch 0: train"][1])
    assert train["image"].endswith("image_train']}}")
    # the run parameters the issue asks for are all there
    for p in ("base_model", "source", "test_source", "budget", "strategy", "pacing_shape", "pacing_mode", "pacing_start", "pacing_end",
              "difficulty_mode", "rollouts_n", "lora", "full_finetune"):
        assert p in params


def test_shards_fan_out_per_epoch_and_merge_before_selection(tmp_path):
    spec = compiled(tmp_path, task="math", epochs=2, shards=4)
    root = spec["root"]["dag"]["tasks"]
    loops = {k: t for k, t in root.items() if "parameterIterator" in t}
    assert len(loops) == 3  # one ParallelFor per epoch, one for the embeddings before them
    bodies = []
    for loop in loops.values():
        items = json.loads(loop["parameterIterator"]["items"]["raw"])
        assert items == [0, 1, 2, 3]
        body = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
        bodies.append({t["taskInfo"]["name"].split(": ")[-1] for t in body.values()})
    assert sorted(map(sorted, bodies)) == [["embed shard", "shard"], ["score shard", "shard"], ["score shard", "shard"]]
    names = all_tasks(spec)
    assert names["merge embeddings"][1]["inputs"]["artifacts"]["parts"]["taskOutputArtifact"]["producerTask"] in loops
    for e in range(2):
        merge = names[f"epoch {e}: merge difficulty"][1]
        assert merge["inputs"]["artifacts"]["parts"]["taskOutputArtifact"]["producerTask"] in loops
        select = names[f"epoch {e}: select"][1]["inputs"]["artifacts"]
        assert select["difficulty"]["taskOutputArtifact"]["producerTask"] == names[f"epoch {e}: merge difficulty"][0]
        assert select["embeddings"]["taskOutputArtifact"]["producerTask"] == names["merge embeddings"][0]


def test_every_selector_setting_is_a_pipeline_parameter(tmp_path):
    from p3.kfp.components.selector import selector

    names = all_tasks(compiled(tmp_path, task="math", epochs=1))
    fed = names["epoch 0: select"][1]["inputs"]["parameters"]
    settings = {k for k, v in selector.component_spec.inputs.items()
                if v.type not in ("system.Dataset@0.0.1", "Dataset") and k not in ("epoch", "epochs")}
    assert {"precision", "device", "quality", "diversity_previous", "budget"} <= settings
    # the run parameter that is each setting (SelectConfig.quality is the run parameter dpp_quality)
    source = {arg: f.name for f in dataclasses.fields(params.PipelineParams)
              for kind, arg in params.feeds(f).items() if kind == "select"}
    for k in settings:
        assert fed[k]["componentInputParameter"] == source[k], k


def test_set_overrides_become_the_compiled_defaults(tmp_path):
    out = tmp_path / "m.yaml"
    assert entry.main("math", ["--compile", str(out), "--epochs", "2", "--set", "budget=123",
                               "--set", "full_finetune=true", "--set", "strategy=random"]) == 0
    params = yaml.safe_load_all(out.read_text()).__next__()["root"]["inputDefinitions"]["parameters"]
    assert params["budget"]["defaultValue"] == 123
    assert params["full_finetune"]["defaultValue"] is True
    assert params["strategy"]["defaultValue"] == "random"
    with pytest.raises(SystemExit):
        entry.main("math", ["--compile", str(out), "--set", "budgett=1"])
    with pytest.raises(SystemExit):
        entry.main("math", ["--compile", str(out), "--set", "budget=many"])


@pytest.mark.parametrize("argv,names", [
    (["--set", "strategy=foo"], ["strategy", "p3"]),  # not one of the choices: compiled before
    (["--set", "full_finetune=ture"], ["full_finetune", "true or false"]),  # silently False before
    (["--set", "budget=-5"], ["budget", "≥ 1"]),  # failed after minutes, at 'epoch 0: select', before
    (["--set", "pacing_start=nan"], ["pacing_start", "finite"]),
    (["--set", "budget=many"], ["budget", "integer"]),
    (["--epochs", "0"], ["--epochs 0"]),  # silently 5 epochs before
    (["--gpus", "train=two"], ["--gpus", "train=two"]),  # a traceback before
    (["--shards", "0"], ["--shards 0"]),
    (["--set", "state_uri=s3://b/p"], ["state_uri", "--epoch-per-run"]),
    (["--epoch-per-run", "--set", "training_run=../x"], ["training_run"]),
])
def test_bad_command_line_values_are_one_line_naming_the_parameter(argv, names, tmp_path):
    out = tmp_path / "p.yaml"
    with pytest.raises(SystemExit) as e:
        entry.main("math", ["--compile", str(out), *argv])
    msg = str(e.value)
    assert "\n" not in msg and all(n in msg for n in names), msg
    assert not out.exists()  # nothing compiled


def test_local_run_refuses_bad_values_before_any_work(tmp_path):
    """--local --set budget=-5 failed only at 'epoch 0: select' (minutes in); now before kfp.local starts."""
    with pytest.raises(SystemExit, match="budget"):
        entry.main("math", ["--local", "--runs-dir", str(tmp_path), "--set", "budget=-5"])
    assert not any(tmp_path.iterdir())


def test_cli_cluster_options():
    args = entry.build_parser("math").parse_args(
        ["--compile", "--gpus", "train=4", "--node-selector", "pool=gpu", "--toleration", "dedicated=p3:NoSchedule"])
    c = entry.cluster_settings(args, "full")
    assert c.gpus == {"score": 1, "embed": 1, "train": 4, "evaluate": 1}
    assert c.node_selector == {"pool": "gpu"}
    assert c.tolerations == [{"key": "dedicated", "operator": "Equal", "value": "p3", "effect": "NoSchedule"}]
    assert entry.parse_toleration("nvidia.com/gpu:NoSchedule") == {"key": "nvidia.com/gpu", "operator": "Exists",
                                                                     "effect": "NoSchedule"}
    with pytest.raises(ValueError):
        builder.parse_gpus("gpu=2")


def test_each_task_builds_a_kfp_pipeline():
    for task in builder.TASKS:
        p = builder.build(builder.BuildOptions(task=task, epochs=2)).pipeline
        assert p.name == f"p3-{task}"
        assert {f.name for f in dataclasses.fields(params.PipelineParams)} == set(p.component_spec.inputs)
    assert os.path.exists(builder.apps_fixture())


# ----------------------------------------------------------------------------- local runs (kfp.local)

# The smallest run that still exercises everything: 2 epochs (so a model is handed on
# and a run can stop between epochs), a few dozen problems, a few optimizer steps.
SMALLEST = ["--epochs", "2", "--set", "synth_n=40", "--set", "test_synth_n=8", "--set", "tiny_steps=4",
            "--set", "budget=8", "--set", "max_steps=2", "--set", "batch_size=4", "--set", "max_new_tokens=16",
            # QLoRA, as a GPU run's trainer does by default (bitsandbytes quantizes on the CPU too), so
            # every local run here trains on a 4-bit base and epoch 1 trains on epoch 0's merged model
            "--set", "qlora=on",
            # the policy embedder (the tiny model) spares every embed step the sentence-transformers
            # import; `make run` uses the default MiniLM embedder
            "--set", "embedder=policy"]


def _local(runs: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "pipelines" / "p3_math.py"), "--local", "--runs-dir", str(runs),
            "--name", name, *SMALLEST, *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "P3_PROGRESS": "0", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory):
    """A local run stopped hard (SIGKILL of its whole process group) once epoch 0 is
    done, then the same command again: it must finish without redoing epoch 0."""
    import signal
    import time

    runs = tmp_path_factory.mktemp("runs")
    proc = subprocess.Popen(_local(runs, "r"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=_env(), start_new_session=True)
    first: list[str] = []
    cache = runs / "r" / "cache"
    try:
        for line in proc.stdout:
            first.append(line)
            if "'epoch 0: report' finished with status SUCCESS" in line:
                # kfp.local stores a task's cache entry just after logging it finished (one per
                # task here): wait until there are as many entries as finished tasks. They may
                # be there already; waiting for "one more" then let epoch 1 run to the end.
                done = sum("finished with status SUCCESS" in f and "Pipeline" not in f for f in first)
                deadline = time.monotonic() + 30
                while len(list(cache.glob("*.json"))) < done and time.monotonic() < deadline:
                    time.sleep(0.05)
                os.killpg(proc.pid, signal.SIGKILL)
                break
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert any("'epoch 0: report' finished" in line for line in first), "".join(first[-30:])
    assert not (runs / "r" / "report.html").exists()  # it really was stopped before the end
    second = subprocess.run(_local(runs, "r"), capture_output=True, text=True, env=_env(), timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    return runs / "r", second.stdout, "".join(first)


@pytest.mark.slow
def test_local_run_resumes_without_redoing_finished_epochs(resumed_run):
    run, out, first = resumed_run
    summary = json.loads((run / "run.json").read_text())
    assert summary["status"] == "succeeded"
    assert summary["skipped_epochs"] == [0] and summary["ran_epochs"] == [1]
    assert "resumed: skipped epochs 0" in out
    for step in ("score", "embed", "select", "train", "evaluate", "report"):
        assert f"'epoch 0: {step}' taken from the cache" in out
    assert "'epoch 1: report' finished with status SUCCESS" in out
    # epoch 1's train may have finished (and been cached) before the kill: look in both runs
    assert re.search(r"\[train epoch 1\] train: .* mode=qlora ", first + out)
    # what a run leaves: the report with every epoch, selections per epoch, the final model
    page = (run / "report.html").read_text()
    assert 'id="epoch-0"' in page and 'id="epoch-1"' in page and "<img" in page
    assert (run / "report.md").read_text().count("epoch") >= 2
    from p3 import contracts

    for e in (0, 1):
        sel = contracts.read(str(run / "selections" / f"epoch_{e}.parquet"), contracts.SELECTION)
        assert sel.num_rows == 8 and set(sel.column("epoch").to_pylist()) == {e}
    assert (run / "model" / "config.json").exists() and (run / "model" / "model.safetensors").exists()
    assert f"report: {run / 'report.html'}" in out


@pytest.mark.slow
def test_local_run_with_two_shards_gives_the_same_result(resumed_run, s3_tmp):
    """--shards 2 (ParallelFor + Collected, run by kfp.local) selects exactly what
    --shards 1 selected; the results also go to S3 (--export).

    One epoch only, to keep the suite's time: epoch 0 does not depend on E (the pacing
    percentile of epoch 0 is the start value for every E). The same run folder is used,
    so preparing and the tiny model come from the cache."""
    import pyarrow.parquet as pq

    from p3 import storage

    run, _, _ = resumed_run
    one = {0: pq.read_table(run / "selections" / "epoch_0.parquet")}
    out = subprocess.run(_local(run.parent, "r", "--shards", "2", "--epochs", "1", "--export", s3_tmp),
                         capture_output=True, text=True, env=_env(), timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "'epoch 0: score shard' finished" in out.stdout and "'epoch 0: merge embeddings' finished" in out.stdout
    assert "'bootstrap tiny model' taken from the cache" in out.stdout
    summary = json.loads((run / "run.json").read_text())
    assert summary["shards"] == 2 and summary["ran_epochs"] == [0]
    for e in (0,):
        two = pq.read_table(run / "selections" / f"epoch_{e}.parquet")
        assert two.column("id").to_pylist() == one[e].column("id").to_pylist()
        assert two.column("round").to_pylist() == one[e].column("round").to_pylist()
        diff = [abs(a - b) for a, b in zip(two.column("difficulty").to_pylist(), one[e].column("difficulty").to_pylist())]
        assert max(diff) < 1e-5  # batch composition changes float rounding, nothing more
    exported = storage.read_json(f"{s3_tmp}/run.json")
    assert exported["shards"] == 2
    assert storage.read_table(f"{s3_tmp}/selections/epoch_0.parquet").equals(
        pq.read_table(run / "selections" / "epoch_0.parquet"))
    with storage.open_file(f"{s3_tmp}/report.html") as fh:
        assert b'id="epoch-0"' in fh.read()
    assert storage.exists(f"{s3_tmp}/model/config.json")


@pytest.mark.slow
def test_failed_local_run_reports_the_step_and_the_log(tmp_path):
    missing = tmp_path / "missing.jsonl"
    out = subprocess.run(_local(tmp_path, "bad", "--set", f"source={missing}"), capture_output=True, text=True,
                         env=_env(), timeout=300)
    assert out.returncode == 1
    assert "p3 local run failed" in out.stdout
    assert "'prepare train' finished with status FAILURE" in out.stdout
    assert f"full log: {tmp_path / 'bad' / 'pipeline.log'}" in out.stdout
    assert str(missing) in (tmp_path / "bad" / "pipeline.log").read_text()  # the step's own error, in the log
    summary = json.loads((tmp_path / "bad" / "run.json").read_text())
    assert summary["status"] == "failed" and "Inner task failed: 'prepare train'" in summary["error"]
