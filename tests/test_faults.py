"""Nothing lost, nothing hangs: the cases of issue 15, each as a user meets it.

Every case runs the real ``p3`` entry point (in process through ``p3.cli.main`` where a
process boundary does not matter, as a subprocess where it does: kills, stalls) and
checks the outcome a user sees: the exit code, ONE line on stderr that names the path or
option, and the files left on disk or in the bucket. The object store is moto's S3 server
on loopback; as a separate process it can be stopped (SIGSTOP) and killed like a real one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from p3 import cli, contracts, outputs, storage
from p3.minimath import synth_problems

SRC = str(Path(__file__).resolve().parents[1] / "src")


def run(argv: list[str], capsys) -> tuple[int, list[str]]:
    """``p3 argv`` in process: (exit code, stderr lines that are not log lines)."""
    capsys.readouterr()
    rc = cli.main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, [ln for ln in err.splitlines() if ln.startswith("p3 ")]


def p3_proc(argv: list[str], env: dict | None = None, **kw) -> subprocess.Popen:
    full = {**os.environ, "PYTHONPATH": SRC, "P3_PROGRESS": "0", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "p3.cli", *argv], env=full, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def leftovers(folder) -> list[str]:
    return sorted(str(p) for p in Path(folder).rglob("*") if p.name.endswith((".tmp", outputs.LOCK_SUFFIX))
                  or p.name.startswith("p3-upload-"))


@pytest.fixture
def problems(tmp_path) -> str:
    path = tmp_path / "t.parquet"
    pq.write_table(synth_problems(12, "1-2", seed=1), path)
    return str(path)


@pytest.fixture
def completions(tmp_path, problems) -> str:
    ids = pq.read_table(problems).column("id").to_pylist()
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"id": i, "sample": 0, "completion": "\\boxed{1}"}) + "\n" for i in ids))
    return str(path)


@pytest.fixture
def difficulty(tmp_path, problems) -> str:
    ids = pq.read_table(problems).column("id").to_pylist()
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"id": ids, "epoch": [0] * len(ids), "difficulty": [i / len(ids) for i in range(len(ids))],
                             "likelihood": [None] * len(ids), "pass_rate": [None] * len(ids),
                             "n_rollouts": [0] * len(ids)}, schema=contracts.DIFFICULTY), path)
    return str(path)


# -- 1. path hygiene --------------------------------------------------------------------
@pytest.mark.parametrize("case", ["grade-out-is-problems", "grade-out-is-completions", "grade-out-is-symlink-to-problems",
                                  "select-out-is-report", "score-rollouts-is-out"])
def test_an_output_that_is_an_input_or_another_output_is_refused_before_any_work(case, tmp_path, problems,
                                                                                 completions, capsys):
    link = tmp_path / "link.parquet"
    link.symlink_to(problems)
    argv = {
        "grade-out-is-problems": ["grade", "--problems", problems, "--completions", completions, "--out", problems],
        "grade-out-is-completions": ["grade", "--problems", problems, "--completions", completions,
                                     "--out", f"file://{completions}"],
        "grade-out-is-symlink-to-problems": ["grade", "--problems", problems, "--completions", completions,
                                             "--out", str(link)],
        "select-out-is-report": ["select", "--problems", problems, "--strategy", "random", "--budget", "3",
                                 "--out", str(tmp_path / "x.parquet"), "--report", str(tmp_path / "x.parquet")],
        "score-rollouts-is-out": ["score", "--problems", problems, "--model", str(tmp_path / "no-model"),
                                  "--mode", "rollout", "--rollouts-out", str(tmp_path / "d.parquet"),
                                  "--out", str(tmp_path / "d.parquet")],
    }[case]
    before = {p: digest(p) for p in (problems, completions)}
    rc, lines = run(argv, capsys)
    assert rc == 2 and len(lines) == 1, lines
    assert "never an input" in lines[0] or "same place" in lines[0]
    assert {p: digest(p) for p in before} == before
    assert not (tmp_path / "x.parquet").exists() and not (tmp_path / "d.parquet").exists()
    assert leftovers(tmp_path) == []


def test_a_second_writer_of_one_output_fails_cleanly_and_the_first_keeps_it(tmp_path, problems, completions, capsys):
    out = str(tmp_path / "r.parquet")
    held = outputs.lease(out)  # the first writer, as far as the lock can tell: a real flock
    try:
        rc, lines = run(["grade", "--problems", problems, "--completions", completions, "--out", out], capsys)
        assert rc == 1 and len(lines) == 1 and "is writing this output" in lines[0] and out in lines[0]
        assert not os.path.exists(out)
    finally:
        held.release()
    rc, _ = run(["grade", "--problems", problems, "--completions", completions, "--out", out], capsys)
    assert rc == 0 and pq.read_table(out).num_rows == 12
    assert leftovers(tmp_path) == []  # the lock file goes with its holder


def test_two_grade_processes_on_one_output_the_second_refuses_while_the_first_runs(tmp_path, problems, completions):
    out = tmp_path / "r.parquet"
    argv = ["grade", "--problems", problems, "--completions", completions, "--out", str(out), "--workers", "1"]
    first = p3_proc(argv)
    lock = tmp_path / f".r.parquet{outputs.LOCK_SUFFIX}"
    deadline = time.time() + 120
    while not lock.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    first.send_signal(signal.SIGSTOP)  # the first writer, paused while it holds the output
    try:
        assert lock.exists(), "the first writer took no lock"
        second = p3_proc(argv)
        assert second.wait(timeout=120) == 1
        lines = _one_error_line(second.stderr.read())
        assert len(lines) == 1 and "is writing this output" in lines[0] and f"pid {first.pid}" in lines[0]
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=120) == 0, first.stderr.read()
    assert pq.read_table(out).num_rows == 12 and leftovers(tmp_path) == []


def test_a_second_writer_of_an_s3_output_fails_and_an_expired_lease_is_taken_over(s3_tmp, monkeypatch, capsys):
    out = f"{s3_tmp}/p.parquet"
    monkeypatch.setenv("P3_S3_LEASE_SECONDS", "2")
    held = outputs.lease(out)  # a conditional PUT (If-None-Match: *) of <key>.p3-lock
    try:
        with pytest.raises(outputs.Busy):
            outputs.lease(out)
        rc, lines = run(["data", "synth", "--n", "10", "--out", out], capsys)
        assert rc == 1 and "is writing this output" in lines[0] and not storage.exists(out)
    finally:
        held._stop.set()  # the holder dies without releasing: its lease expires
    time.sleep(2.5)
    rc, _ = run(["data", "synth", "--n", "10", "--out", out], capsys)
    assert rc == 0 and storage.read_table(out).num_rows == 10
    assert not storage.exists(out + outputs.LOCK_SUFFIX)


# -- 2. atomic multi-output commit ------------------------------------------------------
@pytest.mark.parametrize("fail", ["stage-0", "stage-1", "publish-0", "publish-1"])
def test_select_outputs_appear_together_or_not_at_all(fail, tmp_path, problems, difficulty, monkeypatch, capsys):
    out, report = tmp_path / "sel.parquet", tmp_path / "sel.json"
    argv = ["select", "--problems", problems, "--difficulty", difficulty, "--strategy", "spl", "--budget", "4",
            "--out", str(out), "--report", str(report)]
    assert run(argv, capsys)[0] == 0  # an older pair is there, as after a previous run
    what, n = fail.split("-")
    calls = {"n": 0}
    real = storage.Staged.open if what == "stage" else storage.Staged.publish

    def failing(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == int(n) + 1:
            raise storage.StorageError(f"{self.target}: cannot write: No space left on device", 28)
        return real(self, *a, **kw)

    monkeypatch.setattr(storage.Staged, "open" if what == "stage" else "publish", failing)
    rc, lines = run(argv + ["--seed", "7"], capsys)
    assert rc == 1 and len(lines) == 1 and "No space left" in lines[0]
    # never the new report beside the old selection, or a selection without its report
    if out.exists():
        assert what == "stage" and json.loads(report.read_text())["seed"] == 0
        assert pq.read_table(out).num_rows == 4
    else:
        assert not report.exists() or json.loads(report.read_text())["seed"] == 0
    assert leftovers(tmp_path) == []


def test_a_nan_momentum_alpha_is_refused_not_a_zero_row_selection(tmp_path, problems, difficulty, capsys):
    rc, lines = run(["select", "--problems", problems, "--difficulty", difficulty, "--strategy", "spl",
                     "--pacing-mode", "momentum", "--momentum-alpha", "nan", "--out", str(tmp_path / "s.parquet")],
                    capsys)
    assert rc == 2 and lines == ["p3 select: error: --momentum-alpha: must be a finite number, got nan"]
    assert not (tmp_path / "s.parquet").exists()


# -- 4. numbers -------------------------------------------------------------------------
@pytest.mark.parametrize("argv, flag", [
    (["select", "--strategy", "spl", "--eps", "nan"], "--eps"),
    (["data", "synth", "--levels", "1-999999999"], "--levels"),
    (["select", "--strategy", "p3", "--diversity-previous", "-5"], "--diversity-previous"),
    (["score", "--model", "m", "--max-len", "0"], "--max-len"),
    (["select", "--strategy", "spl", "--epoch", "5", "--epochs", "5"], "--epoch"),
    (["select", "--strategy", "random", "--budget", str(2**70)], "--budget"),
    (["evaluate", "--model", "m", "--n", "2", "--k", "3"], "--k"),
    (["score", "--model", "m", "--temperature", "inf"], "--temperature"),
])
def test_a_bad_number_is_one_line_and_exit_2_before_any_work(argv, flag, tmp_path, problems, capsys):
    out = str(tmp_path / "o.parquet")
    verb = argv[:2] if argv[0] == "data" else argv[:1]
    full = verb + (["--problems", problems] if argv[0] != "data" else []) + ["--out", out] + argv[len(verb):]
    rc, lines = run(full, capsys)
    assert rc == 2 and len(lines) == 1 and f"error: {flag}:" in lines[0], lines
    assert not os.path.exists(out)


def test_a_sample_number_beyond_int64_stops_before_grading(tmp_path, problems, completions, capsys):
    with open(completions, "a") as fh:
        fh.write(json.dumps({"id": pq.read_table(problems).column("id")[0].as_py(), "sample": 2**70,
                             "completion": "1"}) + "\n")
    rc, lines = run(["grade", "--problems", problems, "--completions", completions, "--out",
                     str(tmp_path / "r.parquet")], capsys)
    assert rc == 1 and lines == [f"p3 grade: error: {completions}, row 13, field 'sample': must be in 0..2^63-1, "
                                 f"got {2**70}"]


# -- 5. one line at every entry point ---------------------------------------------------
def test_an_empty_problems_table_is_an_error_for_every_verb_that_needs_rows(tmp_path, capsys):
    empty = str(tmp_path / "empty.parquet")
    pq.write_table(synth_problems(3, "1").slice(0, 0), empty)
    for argv in (["select", "--strategy", "random"], ["score", "--model", str(tmp_path)], ["embed"]):
        rc, lines = run(argv[:1] + ["--problems", empty, "--out", str(tmp_path / "o.parquet")] + argv[1:], capsys)
        assert rc == 1 and lines == [f"p3 {argv[0]}: error: {empty}, field '-': the problems table has no rows"]


def test_a_truncated_embeddings_file_is_named(tmp_path, problems, difficulty, capsys):
    emb = tmp_path / "e.parquet"
    ids = pq.read_table(problems).column("id").to_pylist()
    table = pa.table({"id": ids, "embedding": pa.FixedSizeListArray.from_arrays(
        pa.array([0.5] * (4 * len(ids)), pa.float32()), 4)}, schema=contracts.embeddings_schema(4))
    pq.write_table(table, emb)
    emb.write_bytes(emb.read_bytes()[:-40])
    rc, lines = run(["select", "--problems", problems, "--difficulty", difficulty, "--embeddings", str(emb),
                     "--strategy", "dpp", "--out", str(tmp_path / "s.parquet")], capsys)
    assert rc == 1 and len(lines) == 1 and f"{emb}, field '-': not a readable Parquet file" in lines[0]


def test_a_missing_st_embedder_folder_and_a_mistyped_source_never_reach_the_hub(tmp_path, problems, capsys):
    rc, lines = run(["embed", "--problems", problems, "--out", str(tmp_path / "e.parquet"),
                     "--embedder", f"st:{tmp_path}/no-model"], capsys)
    assert rc == 1 and lines == [f"p3 embed: error: st:{tmp_path}/no-model: no such model folder "
                                 f"(a hub model is st:hf:NAME)"]
    rc, lines = run(["data", "prepare", "--task", "math", "--source", "train.txt", "--out",
                     str(tmp_path / "p.parquet")], capsys)
    assert rc == 1 and lines == ["p3 data prepare: error: train.txt: no such file or folder "
                                 "(a Hugging Face dataset is hf:NAME)"]


@pytest.mark.slow  # imports torch
def test_device_cuda_without_cuda_is_one_line(tmp_path, problems, capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    rc, lines = run(["embed", "--problems", problems, "--out", str(tmp_path / "e.parquet"), "--device", "cuda"], capsys)
    assert rc == 1 and lines == ["p3 embed: error: --device cuda: no CUDA device is visible (use --device cpu or auto)"]


@pytest.fixture
def small_mounts(tmp_path):
    """A read-only tmpfs and a full one (64 KiB): real EROFS and ENOSPC, root only."""
    ro, full = tmp_path / "ro", tmp_path / "full"
    ro.mkdir()
    full.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)],
                                           capture_output=True).returncode:
        pytest.skip("needs root and mount")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(full)], check=True)
    with open(full / "filler", "wb") as fh:  # all but a few bytes taken
        with contextlib.suppress(OSError):
            for _ in range(64):
                fh.write(b"\0" * 1024)
                fh.flush()
    yield ro, full
    for m in (ro, full):
        subprocess.run(["umount", str(m)], check=False)


def test_a_read_only_or_full_output_location_is_one_line_and_leaves_nothing(small_mounts, problems, difficulty,
                                                                            tmp_path, capsys):
    ro, full = small_mounts
    for where in (ro, full):
        for argv in (["data", "synth", "--n", "3000"],
                     ["data", "prepare", "--task", "math", "--source", problems],
                     ["select", "--problems", problems, "--difficulty", difficulty, "--strategy", "spl",
                      "--budget", "4", "--report", str(where / "s.json")]):
            out = str(where / "o.parquet")
            argv = argv + ["--out", out]
            rc, lines = run(argv, capsys)
            assert rc == 1 and len(lines) == 1, (argv, lines)
            assert str(where) in lines[0] and ("Read-only" in lines[0] or "No space" in lines[0]), lines
            assert sorted(os.listdir(where)) == ([] if where == ro else ["filler"])


# -- 3. storage faults: stale files, stalled and dead servers, kills --------------------
def test_stale_temp_files_of_killed_runs_are_removed_at_start(tmp_path, monkeypatch, capsys):
    import tempfile

    sysdir = tmp_path / "systmp"
    sysdir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(sysdir))
    dead = _dead_pid()
    tag = storage.owner_tag().replace(str(os.getpid()), str(dead), 1)  # a gone process of this host
    stale = [tmp_path / f".o.parquet.p3-{tag}-ab12cd34.tmp",  # beside the output: the output's own
             tmp_path / f".other.parquet.p3-{tag}-ab12cd34.tmp",  # another output's, its writer gone
             tmp_path / ".x.parquet.k3j4h5g6.tmp",  # the old naming, two days old
             sysdir / f"p3-upload-{tag}-zz"]
    for p in stale[:3]:
        p.write_bytes(b"x" * 100)
    stale[3].mkdir()
    (stale[3] / "part").write_bytes(b"x")
    two_days = time.time() - 2 * 86400
    os.utime(stale[2], (two_days, two_days))
    young = [tmp_path / ".y.parquet.k3j4h5g6.tmp",  # not ours to judge yet: a day must pass
             tmp_path / f".z.parquet.p3-{dead}h000000-ab12cd34.tmp"]  # another host's pid: only age counts
    for p in young:
        p.write_bytes(b"y")
    rc, _ = run(["data", "synth", "--n", "5", "--out", str(tmp_path / "o.parquet")], capsys)
    assert rc == 0
    assert [p for p in stale if p.exists()] == [] and all(p.exists() for p in young)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def moto_server_proc():
    """moto's S3 server as its own process, so that it can be stopped like a real one."""
    import boto3

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing")
    deadline = time.time() + 120
    while True:
        try:
            client.create_bucket(Bucket="p3b")
            break
        except Exception:
            if time.time() > deadline or proc.poll() is not None:
                raise
            time.sleep(0.2)
    yield proc, endpoint, client
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGCONT)
        proc.kill()
    proc.wait()


def _s3_env(endpoint: str, tmp_path) -> dict:
    """Short limits so that a test sees the bound quickly; staging in the test's own temp folder."""
    (tmp_path / "systmp").mkdir(exist_ok=True)
    return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
            "P3_S3_ENDPOINT_URL": endpoint, "NO_PROXY": "127.0.0.1,localhost", "TMPDIR": str(tmp_path / "systmp"),
            "P3_S3_CONNECT_TIMEOUT": "1", "P3_S3_READ_TIMEOUT": "2", "P3_S3_ATTEMPTS": "2",
            "P3_S3_LEASE_SECONDS": "2", "P3_S3_PART_MB": "5"}


@pytest.fixture
def moto_proc(moto_server_proc, tmp_path):
    proc, endpoint, client = moto_server_proc
    yield proc, _s3_env(endpoint, tmp_path), client
    proc.send_signal(signal.SIGCONT)


def _one_error_line(err: str) -> list[str]:
    assert "Traceback" not in err
    return [ln for ln in err.splitlines() if ln.startswith("p3 ")]


def test_a_stalled_store_ends_the_step_in_bounded_time_naming_the_uri(moto_proc, tmp_path):
    proc, env, _ = moto_proc
    proc.send_signal(signal.SIGSTOP)  # accepts connections (kernel backlog), never answers
    # botocore's Expect: 100-continue made aiohttp wait for a reply with no timeout: this hung
    p = p3_proc(["data", "synth", "--n", "50", "--out", "s3://p3b/x.parquet"], env=env)
    try:
        rc = p.wait(timeout=120)  # a hang guard, not a timing claim: the bound is a few timeouts
    finally:
        p.kill()
    lines = _one_error_line(p.stderr.read())
    assert rc == 1 and len(lines) == 1 and "s3://p3b/x.parquet" in lines[0], lines
    assert os.listdir(tmp_path / "systmp") == []


def test_a_dead_store_is_one_line_naming_the_uri(tmp_path, problems):
    env = _s3_env(f"http://127.0.0.1:{_free_port()}", tmp_path)  # nothing listens there
    p = p3_proc(["select", "--problems", problems, "--strategy", "random", "--budget", "3",
                 "--out", "s3://p3b/s.parquet"], env=env)
    rc = p.wait(timeout=120)
    lines = _one_error_line(p.stderr.read())
    assert rc == 1 and len(lines) == 1 and "s3://p3b/s.parquet" in lines[0], lines


def test_a_kill_during_an_upload_is_cleaned_up_by_the_next_run(moto_proc, tmp_path):
    proc, env, client = moto_proc
    # a source big enough for a multipart upload (parts of 5 MiB)
    src = tmp_path / "big.jsonl"
    with open(src, "w") as fh:
        for i in range(1500):
            fh.write(json.dumps({"problem": f"p{i} " + os.urandom(6000).hex(), "solution": "x\n\\boxed{1}",
                                 "level": "Level 1", "type": "Algebra"}) + "\n")
    out = "s3://p3b/big.parquet"
    p = p3_proc(["data", "prepare", "--task", "math", "--source", str(src), "--out", out], env=env)
    staging = tmp_path / "systmp"
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        if client.list_multipart_uploads(Bucket="p3b").get("Uploads"):
            break
        time.sleep(0.02)
    p.kill()
    p.wait()
    if not client.list_multipart_uploads(Bucket="p3b").get("Uploads"):
        pytest.skip("the upload finished before the kill")  # the cleanup below still runs in other tests
    assert [n for n in os.listdir(staging) if n.startswith("p3-upload-")]  # what a kill leaves
    time.sleep(2.5)  # the killed run's lease expires
    again = p3_proc(["data", "prepare", "--task", "math", "--source", str(src), "--limit", "3", "--out", out], env=env)
    assert again.wait(timeout=120) == 0, again.stderr.read()
    assert client.list_multipart_uploads(Bucket="p3b").get("Uploads", []) == []
    assert os.listdir(staging) == []
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket="p3b", Prefix="big").get("Contents", []))
    assert keys == ["big.parquet"]  # and no lock object: the second run released its lease


def test_an_unfinished_multipart_upload_of_an_output_is_aborted_by_its_next_writer(s3_tmp, capsys):
    import boto3

    out = f"{s3_tmp}/x.parquet"
    fs, inner = storage.filesystem(out)
    bucket, key, _ = fs.split_path(inner)
    client = boto3.client("s3", endpoint_url=os.environ["P3_S3_ENDPOINT_URL"], region_name="us-east-1")
    client.create_multipart_upload(Bucket=bucket, Key=key)  # as a killed writer leaves it
    client.create_multipart_upload(Bucket=bucket, Key=key + ".other")  # not this output's
    rc, _ = run(["data", "synth", "--n", "5", "--out", out], capsys)
    assert rc == 0
    left = [u["Key"] for u in client.list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads", [])]
    assert left == [key + ".other"]


def test_importing_p3_configures_no_logging_and_the_cli_does(tmp_path):
    code = ("import logging, sys, p3.selection, p3.score, p3.problems, p3.sources, p3.minimath, p3.embed, p3.evaluate, p3.train, p3.report, "
            "p3.verify.grade, p3.kfp.builder; sys.exit(len(logging.getLogger().handlers))")
    assert subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": SRC}).returncode == 0
    p = p3_proc(["data", "synth", "--n", "5", "--out", str(tmp_path / "s.parquet")])
    assert p.wait(timeout=120) == 0 and "[data] synth: rows=5" in p.stderr.read()  # the entry point's logging


def test_the_pipeline_refuses_a_bad_number_by_the_same_rules_before_compiling(tmp_path):
    from p3.kfp import entry

    out = tmp_path / "p.yaml"
    for item, why in (("momentum_alpha=nan", "momentum_alpha must be a finite number"),
                      ("budget=-5", "budget must be ≥ 1"), ("eval_n=0", "eval_n must be ≥ 1")):
        with pytest.raises(SystemExit, match=why):
            entry.main("math", ["--compile", str(out), "--set", item])
    assert not out.exists()
