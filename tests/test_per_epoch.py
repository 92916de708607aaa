"""The per-epoch pipeline: one pipeline run = one epoch of a named training run (p3.kfp.per_epoch).

Compiled structure first; then kfp.local runs of mini-MATH (the smallest settings that still
train): three runs of one training run advance epochs 0, 1, 2 with the state on a moto S3
server, a fourth is a no-op; the final model equals the unrolled 3-epoch pipeline's; two
overlapping runs of the same epoch (state in a local folder) leave exactly one advanced state.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from p3.kfp import epoch_state
from p3.kfp.builder import BuildOptions, compile_pipeline, preset_defaults
from p3.kfp.params import PipelineParams
from p3.kfp.per_epoch import PINNED, UNPINNED, build_per_epoch, pinned

ROOT = Path(__file__).resolve().parents[1]
E = 3
SMALLEST = dict(synth_n=40, test_synth_n=8, tiny_steps=4, budget=8, max_steps=2, batch_size=4, max_new_tokens=16,
                embedder="policy")


def _tasks(spec: dict) -> dict[str, dict]:
    out = {}
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    for dag in dags:
        for t in dag["tasks"].values():
            out[t["taskInfo"]["name"]] = t
    return out


def test_per_epoch_pipeline_has_state_parameters_and_three_branches(tmp_path):
    from kfp import compiler

    path = tmp_path / "pe.yaml"
    compiler.Compiler().compile(build_per_epoch(BuildOptions(task="math", epochs=E)).pipeline, str(path))
    spec = next(yaml.safe_load_all(path.read_text()))
    assert spec["pipelineInfo"]["name"] == "p3-math-per-epoch"
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert {"training_run", "state_uri", "budget", "seed", "image_base"} <= set(params)
    tasks = _tasks(spec)
    for name in ("load state", "finished: nothing to do", "epoch 0: train", "epoch k: train", "store state"):
        assert name in tasks, sorted(tasks)
    for name in ("load state", "store state", "finished: nothing to do"):
        assert not tasks[name].get("cachingOptions", {}).get("enableCache", False)
    # done / epoch 0 / epoch >= 1, decided by what the state says
    cond = {n: tasks[n]["triggerPolicy"]["condition"] for n in ("finished", "first-epoch", "next-epoch")}
    assert cond["finished"].endswith("epoch-state-load-done'] == true")
    assert "!(" in cond["next-epoch"] and "epoch-state-load-epoch" in cond["next-epoch"]
    # the epoch of the continuing branch is what the state says, not a constant
    select_k = tasks["epoch k: select"]["inputs"]
    assert select_k["parameters"]["epoch"] == {"componentInputParameter": "pipelinechannel--epoch-state-load-epoch"}
    assert {"previous", "previous_difficulty"} <= set(select_k["artifacts"])
    assert select_k["parameters"]["epochs"]["runtimeValue"]["constant"] == E
    assert "previous" not in tasks["epoch 0: select"]["inputs"].get("artifacts", {})


def _compiled(tmp_path) -> dict[str, dict]:
    from kfp import compiler

    path = tmp_path / "pe.yaml"
    compiler.Compiler().compile(build_per_epoch(BuildOptions(task="math", epochs=E)).pipeline, str(path))
    return _tasks(next(yaml.safe_load_all(path.read_text())))


def test_the_load_step_gets_every_pinned_parameter_and_runs_first(tmp_path):
    """The training run's parameters reach the load step whole, one input each, from the pipeline's
    run parameters (what a recurring run's settings change), and no other step starts before it."""
    import dataclasses

    assert set(PINNED) | UNPINNED == {f.name for f in dataclasses.fields(PipelineParams)}
    tasks = _compiled(tmp_path)
    load = tasks["load state"]["inputs"]["parameters"]
    for name in PINNED:
        assert load[name] == {"componentInputParameter": name}, name
    assert not UNPINNED & set(load) and not {"state_uri", "training_run"} - set(load)
    assert load["task"]["runtimeValue"]["constant"] == "math" and "train_gpus" in load and "bootstrap_tiny" in load
    for name in ("prepare train", "prepare test", "stage model"):
        assert "epoch-state-load" in tasks[name]["dependentTasks"], name
    stores = [t for n, t in tasks.items() if t["componentRef"]["name"].startswith("comp-epoch-state-commit")]
    assert stores and all(t["inputs"]["parameters"]["run_parameters"] == {
        "componentInputParameter": "pipelinechannel--epoch-state-load-run_parameters"} for t in stores)


def test_every_step_of_epoch_k_is_told_its_epoch(tmp_path):
    """In the continuing branch the epoch is a pipeline value: each step gets it as ``epoch`` (and
    names it in its log lines, p3.logs.configure), not P3_EPOCH, which is fixed when building."""
    tasks = _compiled(tmp_path)
    branch = [n for n in tasks if n.startswith("epoch k: ")]
    assert {"epoch k: score", "epoch k: embed", "epoch k: select", "epoch k: train", "epoch k: evaluate",
            "epoch k: report"} <= set(branch)
    for name in branch:
        assert tasks[name]["inputs"]["parameters"]["epoch"] == {
            "componentInputParameter": "pipelinechannel--epoch-state-load-epoch"}, name


def test_a_step_names_the_epoch_it_is_told_at_run_time(monkeypatch, caplog):
    """A module's logger exists before the step knows its epoch (per-epoch pipeline: an input);
    configure(epoch=k) makes its lines, and those of processes it starts, say ``epoch k``."""
    import logging

    from p3.logs import configure, get_logger

    monkeypatch.setenv("P3_EPOCH", "")  # what the pipeline sets when the epoch is a pipeline value
    log = get_logger("train")  # as at import: p3.train's module-level logger
    with caplog.at_level(logging.INFO, logger="p3.train"):
        log.info("before")
        configure(epoch=2)
        log.info("after")
    assert [r.getMessage() for r in caplog.records] == ["[train] before", "[train epoch 2] after"]
    assert os.environ["P3_EPOCH"] == "2"
    configure(epoch=-1)  # a step outside the epochs leaves it as it is
    assert os.environ["P3_EPOCH"] == "2"


def test_the_load_step_refuses_other_run_parameters_before_touching_anything(tmp_path):
    """The load component's own code: the stored training run's parameters against this run's."""
    from p3.kfp.components.epoch_state_load import epoch_state_load

    opts = BuildOptions(task="math", epochs=E, preset="tiny", bootstrap_tiny=True)
    run = PipelineParams(**{**preset_defaults("math", "tiny"), **SMALLEST})
    state_uri = str(tmp_path / "state")
    epoch_state.commit(state_uri, epoch_state.read(state_uri, "pinned", E, params=pinned(opts, run)), attempt="a")
    args = dict(state_uri=state_uri, training_run="pinned", epochs=E, **pinned(opts, run))
    outputs = dict(policy=None, previous=None, previous_difficulty=None, previous_run=None)  # touched only after the check
    with pytest.raises(epoch_state.StateError) as err:
        epoch_state_load.python_func(**{**args, "budget": SMALLEST["budget"] + 1}, **outputs)
    assert f"training run 'pinned' was started with other run parameters: budget 8 → 9;" in str(err.value)


# ----------------------------------------------------------------------------- kfp.local runs


# One per-epoch run in its own process, as a scheduler would start it; a lost race exits 1.
_SCRIPT = ("import json, sys\n"
           "from p3.kfp.builder import BuildOptions\n"
           "from p3.kfp.per_epoch import run_local\n"
           "opts = BuildOptions(task='math', epochs=int(sys.argv[3]), preset='tiny', bootstrap_tiny=True)\n"
           "try:\n"
           "    out = run_local(opts, {**json.loads(sys.argv[4]), 'state_uri': sys.argv[2],"
           " 'training_run': sys.argv[5]}, sys.argv[1])\n"
           "except Exception as e:\n"
           "    sys.exit('FAILED ' + str(e).splitlines()[0])\n"
           "print('P3-STATE', out['state'].epoch, out['wall_s'])\n")


def _env() -> dict[str, str]:
    # read when a run starts: the S3 fixture sets its endpoint and credentials in os.environ
    return {**os.environ, "P3_PROGRESS": "0", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _argv(run_dir: Path, state_uri: str, name: str, epochs: int = E) -> list[str]:
    return [sys.executable, "-c", _SCRIPT, str(run_dir), state_uri, str(epochs), json.dumps(SMALLEST), name]


def _run(run_dir: Path, state_uri: str, name: str) -> subprocess.CompletedProcess:
    return subprocess.run(_argv(run_dir, state_uri, name), capture_output=True, text=True, env=_env(), timeout=900)


@pytest.fixture(scope="module")
def series(tmp_path_factory, s3_server):
    """Four consecutive runs of training run 'nightly' (E=3), state on the S3 server."""
    run_dir = tmp_path_factory.mktemp("per-epoch")
    state_uri = s3_server.uri(f"states-{run_dir.name}")
    runs = []
    for _ in range(E + 1):
        out = _run(run_dir, state_uri, "nightly")
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
        runs.append(out)
        runs[-1].state = epoch_state.read(state_uri, "nightly", E)
    return run_dir, state_uri, runs


@pytest.mark.slow
def test_consecutive_runs_advance_one_epoch_each_then_do_nothing(series):
    run_dir, state_uri, runs = series
    assert [r.state.epoch for r in runs] == [1, 2, 3, 3]
    final = runs[-1].state
    assert final.done and [h["epoch"] for h in final.history] == [0, 1, 2]
    assert final.policy.startswith(f"{state_uri}/nightly/epochs/00002/")
    log = (run_dir / "pipeline.log").read_text()
    assert log.count("training run 'nightly': starting epoch 0 of 3") == 1
    # epochs 1 and 2 start from the model the previous run stored
    for k in (1, 2):
        stored = runs[k - 1].state.policy
        assert f"training run 'nightly': continuing with epoch {k} of 3 from {stored}" in log
    assert "training run 'nightly' finished all 3 epochs" in log and "this run does nothing" in log
    # the continuing branch's steps name their epoch, which only the state knew
    for k in (1, 2):
        for step in ("score", "select", "train", "report"):
            assert f"[{step} epoch {k}] " in log, (step, k)
    # the no-op's Metrics say so
    noop = sorted(run_dir.glob("pipeline_root/*/epoch-state-finished/metrics"))
    assert len(noop) == 1 and json.loads(noop[0].read_text()) == {"epochs_done": 3, "noop": 1}
    stored = sorted(run_dir.glob("pipeline_root/*/epoch-state-commit*/metrics"))
    assert sorted(json.loads(m.read_text())["epoch"] for m in stored) == [0, 1, 2]


@pytest.mark.slow
def test_final_model_equals_the_unrolled_pipelines(series, tmp_path):
    """Same seed and settings: 3 per-epoch runs give the unrolled 3-epoch pipeline's model.

    Every step is seeded and runs on CPU; what crosses from one run to the next (model folder,
    selection, difficulty, report folder) is copied byte for byte through the state store.
    The unrolled run starts from a copy of the series' kfp.local cache: preparing, the tiny model
    and epoch 0 (the same tasks with the same inputs) are cache hits; epochs 1 and 2 run, from
    artifacts passed directly instead of through the state store."""
    import torch
    from safetensors.torch import load_file

    from p3 import storage

    run_dir, _, runs = series
    shutil.copytree(run_dir / "cache", tmp_path / "unrolled" / "cache")
    argv = [sys.executable, str(ROOT / "pipelines" / "p3_math.py"), "--local", "--runs-dir", str(tmp_path),
            "--name", "unrolled", "--epochs", str(E)] + [x for k, v in SMALLEST.items() for x in ("--set", f"{k}={v}")]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=900, env=_env())
    assert out.returncode == 0, out.stdout[-3000:]
    assert "'epoch 0: train' taken from the cache" in out.stdout and "'epoch 2: train' finished" in out.stdout
    unrolled = load_file(str(tmp_path / "unrolled" / "model" / "model.safetensors"))
    with storage.local_dir(runs[-1].state.policy) as d:
        per_epoch = load_file(os.path.join(d, "model.safetensors"))
    assert unrolled.keys() == per_epoch.keys()
    for k in unrolled:
        torch.testing.assert_close(per_epoch[k], unrolled[k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.slow
def test_two_overlapping_runs_of_one_epoch_advance_it_once(series, tmp_path):
    """Two runs started together on a fresh training run (state in a local folder): both read
    epoch 0, both train, one stores epoch 0, the other fails with EpochConflict and changes nothing.
    Each has its own run folder with a copy of the series' kfp.local cache: preparing, the tiny
    model, scoring and embedding are cache hits, so both reach 'load state' within seconds; the
    training run has E=2 (the series' E=3 epoch 0 is not reused), so select, train, evaluate and
    report run in both before either can store the epoch."""
    run_dir, _, _ = series
    state_uri = str(tmp_path / "state")
    dirs = []
    for name in ("a", "b"):
        d = tmp_path / name
        shutil.copytree(run_dir / "cache", d / "cache")
        dirs.append(d)
    procs = [subprocess.Popen(_argv(d, state_uri, "race", epochs=2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=_env()) for d in dirs]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    codes = [p.returncode for p in procs]
    logs = [(d / "pipeline.log").read_text() for d in dirs]
    assert all("training run 'race': starting epoch 0 of 2" in log for log in logs)  # both really overlapped
    assert sorted(codes) == [0, 1], outs
    loser = logs[codes.index(1)] + outs[codes.index(1)]
    assert "epoch 0 of training run 'race' was already done by another run" in loser
    state = epoch_state.read(state_uri, "race", 2)
    assert state.epoch == 1 and len(state.history) == 1
    assert sorted(p.name for p in (tmp_path / "state" / "race" / "state").iterdir()) == ["00001.json"]


@pytest.mark.slow
def test_command_line_run_of_a_finished_training_run_is_a_no_op(tmp_path):
    """`p3_math.py --local --epoch-per-run` on a training run whose E epochs are stored: it says so
    and leaves the state as it was."""
    state_uri = str(tmp_path / "state")
    done = epoch_state.commit(state_uri, epoch_state.read(state_uri, "done", 1, params=_cli_pinned(1)), attempt="a",
                              policy="/models/x")
    out = subprocess.run(_cli(tmp_path, "done", state_uri, 1), capture_output=True, text=True, timeout=900, env=_env())
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "training run 'done': 1 of 1 epochs done" in out.stdout and "(finished)" in out.stdout
    assert "this run does nothing" in (tmp_path / "cli" / "pipeline.log").read_text()
    assert epoch_state.read(state_uri, "done", 1) == done


def _cli_pinned(epochs: int, **changed) -> dict:
    """What `p3_math.py --local --epoch-per-run` with SMALLEST pins (the tiny preset's defaults)."""
    opts = BuildOptions(task="math", epochs=epochs, preset="tiny", bootstrap_tiny=True)
    return pinned(opts, PipelineParams(**{**preset_defaults("math", "tiny"), **SMALLEST, **changed}))


def _cli(tmp_path: Path, training_run: str, state_uri: str, epochs: int, **changed) -> list[str]:
    return [sys.executable, str(ROOT / "pipelines" / "p3_math.py"), "--local", "--epoch-per-run", "--epochs",
            str(epochs), "--runs-dir", str(tmp_path), "--name", "cli", "--set", f"training_run={training_run}",
            "--set", f"state_uri={state_uri}",
            *[x for k, v in {**SMALLEST, **changed}.items() for x in ("--set", f"{k}={v}")]]


def test_command_line_run_with_another_budget_is_refused_before_any_work(tmp_path):
    """A training run started with budget 8, continued with budget 9: one line naming the training
    run and budget (old → new), exit 1, no step ran and the state is as it was."""
    state_uri = str(tmp_path / "state")
    first = epoch_state.commit(state_uri, epoch_state.read(state_uri, "nightly", 2, params=_cli_pinned(2)),
                               attempt="a", policy="/models/x")
    out = subprocess.run(_cli(tmp_path, "nightly", state_uri, 2, budget=9), capture_output=True, text=True,
                         timeout=300, env=_env())
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, out.stderr[-2000:]
    assert "training run 'nightly' was started with other run parameters: budget 8 → 9;" in errors[0]
    assert not (tmp_path / "cli" / "pipeline_root").exists()  # kfp.local never started a step
    assert epoch_state.read(state_uri, "nightly", 2) == first


def test_the_per_epoch_bench_sums_each_epochs_tasks_and_refuses_a_log_it_cannot_read():
    """kfp.local interleaves epochs (epoch 0's report after epoch 1's training), so an epoch is
    the sum of its own tasks' times, each from the previous task's end; lines in kfp.local's
    format (localrun rewrites "Task 'x'" to the display name). A log whose task lines do not
    match gives an error, not 0 s for an epoch (which would shrink it and flatter the ratio)."""
    from _scripts import load_script

    bench = load_script("bench/per_epoch_time.py")
    log = "\n".join([
        "10:00:00.000 - INFO - Running pipeline: p3-math",
        "10:00:05.000 - INFO - 'prepare data' finished with status SUCCESS",  # before the epochs: no epoch's
        "10:00:09.000 - INFO - 'epoch 0: train' finished with status SUCCESS",
        "10:00:12.000 - INFO - 'epoch 1: train' finished with status SUCCESS",
        "10:00:13.500 - INFO - 'epoch 0: report' finished with status SUCCESS",
        "10:00:20.000 - INFO - 'epoch 1: report' finished with status SUCCESS",
    ])
    assert bench.epoch_seconds(log, epochs=2) == [4.0 + 1.5, 3.0 + 6.5]
    with pytest.raises(SystemExit, match=r"\[2, 0\] tasks"):
        bench.epoch_seconds(log.replace("'epoch 1: ", "'Epoch 1 "), epochs=2)
