"""--submit / --schedule against a namespace-aware fake of the KFP v2beta1 API (tests/_fx_kfp_api.py),
driven by the real kfp.Client over HTTP on loopback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from _fx_kfp_api import FakeKFP
from p3.kfp import entry, remote
from p3.kfp.builder import BuildOptions, compile_pipeline

ROOT = Path(__file__).resolve().parents[1]
ALICE = "alice-token"  # a profile user: team-a only
ADMIN = "admin-token"  # may also write shared pipelines (access to the KFP namespace)


def _isolate(monkeypatch, home: Path) -> None:
    # no kube config, no kfp context file, no token from this machine leaks into the client
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(home / "no-token"))
    for name in ("KF_PIPELINES_ENDPOINT", "KF_PIPELINES_TOKEN", "HTTP_PROXY", "http_proxy", "KUBECONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def kfp_api(monkeypatch, tmp_path):
    """A multi-user backend (as in a Kubeflow platform install with profiles)."""
    _isolate(monkeypatch, tmp_path)
    with FakeKFP(multi_user=True, access={ALICE: {"team-a"}, ADMIN: {"team-a", "kubeflow"}}) as fake:
        yield fake


@pytest.fixture
def kfp_single(monkeypatch, tmp_path):
    """A standalone (single-user) backend: no namespaces, no authorization."""
    _isolate(monkeypatch, tmp_path)
    with FakeKFP(multi_user=False) as fake:
        yield fake


def _uploaded(fake: FakeKFP) -> list[dict]:
    return [c for c in fake.calls if c["method"] == "POST" and c["path"].endswith(("/upload", "/upload_version"))]


def test_fake_keeps_name_namespace_unique_and_lists_one_namespace(kfp_api, tmp_path):
    """The fake itself, through the real client: the rules the tests below rely on."""
    import kfp

    pkg = compile_pipeline(BuildOptions(task="math", epochs=1), str(tmp_path / "p.yaml"))
    c = kfp.Client(host=kfp_api.url, existing_token=ADMIN)
    a = c.upload_pipeline(pkg, pipeline_name="p", namespace="team-a")
    shared = c.upload_pipeline(pkg, pipeline_name="p")  # same name, other scope: allowed
    assert a.pipeline_id != shared.pipeline_id
    with pytest.raises(Exception, match="409|AlreadyExists"):
        c.upload_pipeline(pkg, pipeline_name="p", namespace="team-a")
    # get_pipeline_id(name) has no namespace: it finds the shared one only
    assert c.get_pipeline_id("p") == shared.pipeline_id
    listed = c.list_pipelines(namespace="team-a").pipelines
    assert [x.pipeline_id for x in listed] == [a.pipeline_id]
    alice = kfp.Client(host=kfp_api.url, existing_token=ALICE)
    with pytest.raises(Exception, match="403"):  # shared pipelines: writing needs the KFP namespace
        alice.upload_pipeline(pkg, pipeline_name="q")
    with pytest.raises(Exception, match="401"):
        kfp.Client(host=kfp_api.url, existing_token="nobody").list_pipelines(namespace="team-a")
    with pytest.raises(Exception, match="400"):  # multi-user: an experiment needs a namespace
        c.create_experiment("e", namespace="")


def test_submit_twice_to_a_namespace_gives_one_pipeline_and_two_runs(kfp_api, monkeypatch, capsys):
    """Fails on the old remote.py: it looked the pipeline up among the shared ones and uploaded
    into team-a, so the second upload hit (name, namespace) AlreadyExists."""
    monkeypatch.setenv("KF_PIPELINES_TOKEN", ALICE)
    argv = ["--submit", "--host", kfp_api.url, "--namespace", "team-a", "--epochs", "2", "--set", "budget=500",
            "--pipeline-root", "s3://bucket/root"]
    assert entry.main("math", argv) == 0
    assert entry.main("math", argv) == 0
    assert len(kfp_api.pipelines) == 1
    (pipe,) = kfp_api.pipelines.values()
    assert pipe["name"] == "p3-math" and pipe["namespace"] == "team-a"
    assert len(kfp_api.versions) == 1  # identical content: the version is reused
    assert len(kfp_api.experiments) == 1 and next(iter(kfp_api.experiments.values()))["namespace"] == "team-a"
    runs = list(kfp_api.runs.values())
    assert len(runs) == 2 and {r["namespace"] for r in runs} == {"team-a"}
    for r in runs:
        ref = r["pipeline_version_reference"]
        assert ref["pipeline_id"] == pipe["pipeline_id"] and ref["pipeline_version_id"] in kfp_api.versions
        assert r["runtime_config"]["parameters"] == {"budget": 500}
        assert r["runtime_config"]["pipeline_root"] == "s3://bucket/root"
    # the token the kfp way: a bearer header on every call
    assert all(c["headers"].get("authorization") == f"Bearer {ALICE}" for c in kfp_api.calls)
    out = capsys.readouterr().out
    assert out.count("submitted run") == 2


def test_changed_content_adds_a_version_named_by_its_hash(kfp_api, monkeypatch):
    monkeypatch.setenv("KF_PIPELINES_TOKEN", ALICE)
    base = ["--submit", "--host", kfp_api.url, "--namespace", "team-a"]
    assert entry.main("math", [*base, "--epochs", "1"]) == 0
    assert entry.main("math", [*base, "--epochs", "2"]) == 0  # another DAG
    assert entry.main("math", [*base, "--epochs", "1"]) == 0  # the first again: reused
    assert len(kfp_api.pipelines) == 1
    # the upload names the first version after the pipeline (the backend's rule); later ones by hash;
    # each carries its content hash, which is how an identical one is found again
    names = [v["name"] for v in kfp_api.versions.values()]
    assert names[0] == "p3-math" and re.fullmatch(r"p3-math-[0-9a-f]{12}", names[1]) and len(names) == 2
    assert all(re.fullmatch(r"content sha256:[0-9a-f]{64}", v["description"]) for v in kfp_api.versions.values())
    used = [r["pipeline_version_reference"]["pipeline_version_id"] for r in kfp_api.runs.values()]
    assert used[0] == used[2] != used[1]
    # the version that runs is the YAML that was compiled for it
    spec = kfp_api.versions[used[1]]["pipeline_spec"]
    assert "epoch 1: train" in yaml.safe_dump(spec)


def test_without_namespace_the_pipeline_is_shared(kfp_single, monkeypatch):
    assert entry.main("apps", ["--submit", "--host", kfp_single.url, "--epochs", "1"]) == 0
    assert entry.main("apps", ["--submit", "--host", kfp_single.url, "--epochs", "1"]) == 0
    (pipe,) = kfp_single.pipelines.values()
    assert pipe["namespace"] == "" and len(kfp_single.runs) == 2 and len(kfp_single.versions) == 1
    upload = _uploaded(kfp_single)[0]
    assert "namespace" not in upload["query"]


def test_multi_user_backend_without_namespace_is_refused_before_uploading(kfp_api, monkeypatch):
    monkeypatch.setenv("KF_PIPELINES_TOKEN", ADMIN)
    # without --namespace the pipeline would be shared, but a run needs a namespace here
    with pytest.raises(SystemExit, match="--namespace"):
        entry.main("math", ["--submit", "--host", kfp_api.url, "--epochs", "1"])
    assert not kfp_api.pipelines


@pytest.mark.parametrize("token,namespace,want", [
    (None, "team-a", "401"),
    ("nobody", "team-a", "401"),
    (ALICE, "team-b", "403"),
])
def test_auth_and_namespace_errors_are_one_line(kfp_api, monkeypatch, token, namespace, want):
    if token:
        monkeypatch.setenv("KF_PIPELINES_TOKEN", token)
    with pytest.raises(SystemExit) as e:
        entry.main("math", ["--submit", "--host", kfp_api.url, "--namespace", namespace, "--epochs", "1"])
    msg = str(e.value)
    assert "\n" not in msg and want in msg and kfp_api.url in msg
    assert not kfp_api.pipelines and not kfp_api.runs


def test_unreachable_host_is_one_line_and_quick(tmp_path, monkeypatch):
    _isolate(monkeypatch, tmp_path)
    import socket

    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = subprocess.run([sys.executable, str(ROOT / "pipelines" / "p3_math.py"), "--submit", "--host",
                          f"http://127.0.0.1:{port}", "--namespace", "team-a", "--epochs", "1"],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "P3_PROGRESS": "0"})
    assert out.returncode != 0
    lines = [x for x in out.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "Traceback" not in out.stderr, out.stderr


def test_missing_host_outside_a_cluster_is_one_line(tmp_path, monkeypatch):
    _isolate(monkeypatch, tmp_path)
    with pytest.raises(SystemExit, match="--host"):
        entry.main("math", ["--submit", "--namespace", "team-a", "--epochs", "1"])


def test_the_command_line_twice_against_the_fake(kfp_api):
    """The must-reach, exactly as typed: two submits, one pipeline, two runs."""
    env = {**os.environ, "P3_PROGRESS": "0", "KF_PIPELINES_TOKEN": ALICE}
    cmd = [sys.executable, str(ROOT / "pipelines" / "p3_math.py"), "--submit", "--host", kfp_api.url,
           "--namespace", "team-a", "--epochs", "1"]
    for _ in range(2):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
        assert out.returncode == 0, out.stderr
    assert len(kfp_api.pipelines) == 1 and len(kfp_api.versions) == 1 and len(kfp_api.runs) == 2


# ----------------------------------------------------------------------------- schedules


def _schedule(fake: FakeKFP, *extra: str) -> list[str]:
    return ["--schedule", "0 3 * * 1", "--host", fake.url, "--namespace", "team-a", "--epochs", "1", *extra]


def test_schedule_twice_gives_one_recurring_run(kfp_api, monkeypatch, capsys):
    monkeypatch.setenv("KF_PIPELINES_TOKEN", ALICE)
    assert entry.main("apps", _schedule(kfp_api)) == 0
    assert entry.main("apps", _schedule(kfp_api)) == 0
    (job,) = kfp_api.recurring_runs.values()
    assert job["display_name"] == "p3-apps (recurring)" and job["namespace"] == "team-a"
    assert job["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * 1"  # KFP's 6-field cron
    assert job["mode"] == "ENABLE" and int(job["max_concurrency"]) == 1 and job["no_catchup"] is True
    assert job["pipeline_version_reference"]["pipeline_version_id"] in kfp_api.versions
    assert "unchanged" in capsys.readouterr().out
    assert not [c for c in kfp_api.calls if c["method"] == "DELETE"]


def test_schedule_with_other_settings_replaces_the_one_of_that_name(kfp_api, monkeypatch, capsys):
    monkeypatch.setenv("KF_PIPELINES_TOKEN", ALICE)
    assert entry.main("math", _schedule(kfp_api, "--run-name", "nightly")) == 0
    first = next(iter(kfp_api.recurring_runs))
    assert entry.main("math", _schedule(kfp_api, "--run-name", "nightly", "--set", "budget=7")) == 0
    (job,) = kfp_api.recurring_runs.values()
    assert job["recurring_run_id"] != first and job["runtime_config"]["parameters"] == {"budget": 7}
    assert "replaced" in capsys.readouterr().out
    # another name is another schedule
    assert entry.main("math", _schedule(kfp_api, "--run-name", "weekly")) == 0
    assert sorted(j["display_name"] for j in kfp_api.recurring_runs.values()) == ["nightly", "weekly"]


def test_duplicates_left_by_older_versions_are_folded_into_one(kfp_api, monkeypatch):
    """The backend lets names repeat (the old code made one more per call): after a schedule, one."""
    import kfp

    monkeypatch.setenv("KF_PIPELINES_TOKEN", ALICE)
    assert entry.main("math", _schedule(kfp_api)) == 0
    (job,) = kfp_api.recurring_runs.values()
    c = kfp.Client(host=kfp_api.url, existing_token=ALICE)
    ref = job["pipeline_version_reference"]
    for _ in range(2):
        c.create_recurring_run(experiment_id=job["experiment_id"], job_name=job["display_name"],
                               cron_expression="0 0 4 * * *", pipeline_id=ref["pipeline_id"],
                               version_id=ref["pipeline_version_id"])
    assert len(kfp_api.recurring_runs) == 3
    assert entry.main("math", _schedule(kfp_api)) == 0
    assert list(kfp_api.recurring_runs) == [job["recurring_run_id"]]


@pytest.mark.parametrize("cron", ["every monday", "0 3 * *", "0 25 * * 1", "61 * * * * *", "0 3 * * 1/0", "0 3 * * FOO"])
def test_bad_cron_is_one_line_before_any_call(kfp_api, monkeypatch, cron):
    monkeypatch.setenv("KF_PIPELINES_TOKEN", ALICE)
    with pytest.raises(SystemExit) as e:
        entry.main("math", ["--schedule", cron, "--host", kfp_api.url, "--namespace", "team-a", "--epochs", "1"])
    assert "\n" not in str(e.value) and "--schedule" in str(e.value)
    assert kfp_api.calls == []


def test_cron_forms_kfp_accepts():
    assert remote.kfp_cron("0 3 * * 1") == "0 0 3 * * 1"
    assert remote.kfp_cron("30 0 3 * * MON-FRI") == "30 0 3 * * MON-FRI"
    assert remote.kfp_cron("*/15 * * JAN,JUL *") == "0 */15 * * JAN,JUL *"
    assert remote.kfp_cron("@daily") == "@daily"


def test_unschedule_removes_it_and_is_idempotent(kfp_api, monkeypatch, capsys):
    monkeypatch.setenv("KF_PIPELINES_TOKEN", ALICE)
    assert entry.main("math", _schedule(kfp_api, "--name", "nightly")) == 0
    assert entry.main("math", _schedule(kfp_api, "--name", "weekly", "--max-concurrency", "2", "--catchup")) == 0
    weekly = next(j for j in kfp_api.recurring_runs.values() if j["display_name"] == "weekly")
    assert int(weekly["max_concurrency"]) == 2 and weekly["no_catchup"] is False
    unschedule = ["--unschedule", "nightly", "--host", kfp_api.url, "--namespace", "team-a"]
    assert entry.main("math", unschedule) == 0
    assert "deleted 1 recurring run(s) named 'nightly'" in capsys.readouterr().out
    assert [j["display_name"] for j in kfp_api.recurring_runs.values()] == ["weekly"]
    assert entry.main("math", unschedule) == 0  # nothing left to delete: not an error
    assert "deleted 0" in capsys.readouterr().out
    assert remote.unschedule("weekly", kfp_api.url, "no-such-experiment", "team-a") == 0
    assert [j["display_name"] for j in kfp_api.recurring_runs.values()] == ["weekly"]


def test_per_epoch_pipeline_is_scheduled_under_its_own_name(kfp_api, monkeypatch):
    monkeypatch.setenv("KF_PIPELINES_TOKEN", ALICE)
    argv = _schedule(kfp_api, "--epoch-per-run", "--name", "p3-nightly", "--set", "training_run=nightly",
                     "--set", "state_uri=s3://bucket/state")
    assert entry.main("math", argv) == 0
    assert entry.main("math", argv) == 0
    (pipe,) = kfp_api.pipelines.values()
    (job,) = kfp_api.recurring_runs.values()
    assert pipe["name"] == "p3-math-per-epoch" and job["display_name"] == "p3-nightly"
    assert job["runtime_config"]["parameters"] == {"training_run": "nightly", "state_uri": "s3://bucket/state"}
    with pytest.raises(SystemExit, match="state_uri"):  # a per-epoch run without a place for its state
        entry.main("math", _schedule(kfp_api, "--epoch-per-run"))


def test_schedule_max_concurrency_is_checked_before_any_call(kfp_api):
    with pytest.raises(SystemExit, match="max-concurrency 11"):
        entry.main("math", _schedule(kfp_api, "--max-concurrency", "11"))
    assert kfp_api.calls == []
    assert remote.schedule_of("n", "0 3 * * 1", max_concurrency=3, catchup=True).max_concurrency == 3


def test_service_account_token_and_dex_cookie_go_on_every_call(kfp_api, monkeypatch, tmp_path):
    """In a pod: the projected token at KF_PIPELINES_SA_TOKEN_PATH (kfp's own variable); behind Dex:
    the session cookie (KF_PIPELINES_COOKIES), passed to kfp.Client as ``cookies``."""
    token = tmp_path / "token"
    token.write_text(ALICE)
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token))
    monkeypatch.setenv("KF_PIPELINES_COOKIES", "authservice_session=s3cr3t")
    assert entry.main("math", ["--submit", "--host", kfp_api.url, "--namespace", "team-a", "--epochs", "1"]) == 0
    assert kfp_api.runs
    assert all(c["headers"].get("authorization") == f"Bearer {ALICE}" for c in kfp_api.calls)
    assert all(c["headers"].get("cookie") == "authservice_session=s3cr3t" for c in kfp_api.calls)


def test_in_a_pod_without_host_the_kfp_service_is_used_not_the_user_namespace(monkeypatch):
    monkeypatch.delenv("KF_PIPELINES_ENDPOINT", raising=False)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    t = remote.target_of(None, "team-a", "p3-math")
    assert t.host == "http://ml-pipeline.kubeflow.svc.cluster.local:8888" and t.namespace == "team-a"
    monkeypatch.setenv("KF_PIPELINES_ENDPOINT", "https://kf.example.com/pipeline")
    assert remote.target_of(None, "team-a", "e").host == "https://kf.example.com/pipeline"
    with pytest.raises(SystemExit, match="namespace"):
        remote.target_of("http://h", "Team_A", "e")
