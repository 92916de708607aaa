"""Isolation beyond one run, at every level this machine gives: graders running side by
side, what a program leaves behind, a grader killed with -9, and the grader inside a
simulated Kubernetes pod (non-root, no user namespaces). Each test failed on the grader
before issue 12 (shared slot uids, no IPC/mount namespace at `unshare`, no parent-death
signal, no refusal below bwrap)."""

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import psutil
import pyarrow as pa
import pytest

from p3 import storage
from p3.sandbox import LEVELS, SHARED_TMP_DIRS, Job, Limits, Sandbox, sandbox_python

LEVEL_PARAMS = [pytest.param(level, id=level) for level in LEVELS]


def _available(level):
    try:
        Sandbox(workers=1, isolation=level, allow_weak=True).close()
    except RuntimeError as exc:
        pytest.skip(f"isolation level {level} unavailable here: {exc}")


def _env():
    return {**os.environ, "P3_SANDBOX_PYTHON": sandbox_python(), "P3_PROGRESS": "0"}


@pytest.fixture(scope="module")
def slow_problems(tmp_path_factory):
    """One a+b problem with three tests, and 10 correct completions that take a moment
    each, so that two graders' runs overlap."""
    work = tmp_path_factory.mktemp("two-graders")
    tests = {"inputs": [f"{a} {b}\n" for a, b in ((1, 2), (3, 4), (10, -3))],
             "outputs": [f"{a + b}\n" for a, b in ((1, 2), (3, 4), (10, -3))]}
    problems = pa.table({"id": ["ab"], "task": ["apps"], "prompt": ["a+b"], "solution": [""],
                         "answer": pa.array([None], pa.string()), "tests": [json.dumps(tests)],
                         "starter_code": pa.array([None], pa.string()), "meta": ["{}"]})
    storage.write_table(problems, work / "problems.parquet")
    code = "import time\ntime.sleep(0.03)\na, b = map(int, input().split())\nprint(a + b)\n"
    (work / "c.jsonl").write_text("".join(json.dumps({"id": "ab", "sample": i, "completion": code}) + "\n"
                                          for i in range(10)))
    return work


@pytest.mark.parametrize("level", LEVEL_PARAMS)
def test_two_graders_at_once_give_their_solo_verdicts(level, slow_problems):
    """Before: every grader on a host used slot uids 61000+slot, and cleanup's `kill -9 -1`
    as that uid killed the other grader's programs (0/12 and 51/60 passed; alone 12/12)."""
    _available(level)
    procs = []
    for n in range(2):
        out = slow_problems / f"r-{level}-{n}.parquet"
        procs.append((subprocess.Popen(
            [sys.executable, "-m", "p3.cli", "grade", "--problems", str(slow_problems / "problems.parquet"),
             "--completions", str(slow_problems / "c.jsonl"), "--out", str(out), "--isolation", level,
             "--allow-weak-isolation", "--workers", "2", "--timeout", "5"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()), out))
        time.sleep(0.3)
    for proc, out in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        rows = storage.read_table(out).to_pylist()
        assert [r["status"] for r in rows] == ["ok"] * 10, [r["tests"] for r in rows]
        assert {r["isolation"] for r in rows} == {level}


LITTER = """
import ctypes, os, socket
libc = ctypes.CDLL(None)
shmid = libc.shmget({key}, 1 << 20, 0o1666)  # IPC_CREAT | 0666: outlives its creator
for d in {dirs!r}:
    try:
        with open(os.path.join(d, "{tag}"), "w") as fh:
            fh.write("filler")
    except OSError:
        pass
s = socket.socket(socket.AF_UNIX)
for d in {dirs!r} + (".",):
    try:
        s.bind(os.path.join(d, "{tag}.sock"))
        os.chmod(os.path.join(d, "{tag}.sock"), 0o777)
        s.listen(1)
        break
    except OSError:
        pass
print(shmid)
"""


def _litter_left(tag, key):
    files = [os.path.join(d, name) for d in SHARED_TMP_DIRS if os.path.isdir(d)
             for name in os.listdir(d) if name.startswith(tag)]
    with open("/proc/sysvipc/shm") as fh:
        segments = [line for line in fh.read().splitlines()[1:] if int(line.split()[0]) == key]
    return files, segments


@pytest.mark.parametrize("level", LEVEL_PARAMS)
def test_nothing_a_program_creates_outlives_its_run(level):
    """Before, at `unshare`: SysV segments stayed in `ipcs -m`, fillers in the host's temp
    folders and /dev/shm, and a world-writable Unix socket others could write to."""
    _available(level)
    if level == "none" and os.geteuid() != 0:
        pytest.skip("a non-root grader at level none runs programs as itself: its files are indistinguishable")
    tag, key = "p3-litter-" + secrets.token_hex(6), 0x5A000000 + secrets.randbelow(1 << 20)
    sb = Sandbox(workers=1, isolation=level, allow_weak=True, limits=Limits(timeout=5))
    res = sb.run(Job(LITTER.format(key=key, dirs=SHARED_TMP_DIRS, tag=tag)))
    assert res.status == "ok" and int(res.stdout) >= 0, res  # the segment was made
    assert _litter_left(tag, key) == ([], [])


KILLED_GRADER = textwrap.dedent("""
    import sys
    from p3.sandbox import Job, Limits, Sandbox
    sb = Sandbox(workers=1, isolation=sys.argv[1], allow_weak=True, limits=Limits(timeout=60))
    print("ready", flush=True)
    sb.run(Job(sys.argv[2]))
""")

ORPHAN = """
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv("/bin/sleep", ["sleep", "{naptime}"])
    os._exit(0)
open("mine", "w").write("x")
time.sleep(60)
"""


def _sleepers(naptime):
    found = []
    for p in psutil.process_iter(["cmdline"]):
        if p.info["cmdline"] == ["sleep", naptime]:
            found.append(p)
    return found


@pytest.mark.parametrize("level", LEVEL_PARAMS)
def test_a_killed_grader_takes_its_programs_with_it(level, tmp_path):
    """Before, at `unshare`: 27 s after kill -9 of the grader its programs still ran under
    init, and its `p3-sbx-*` work folders stayed."""
    _available(level)
    naptime = f"{1000 + secrets.randbelow(10**6)}.5"
    grader = subprocess.Popen([sys.executable, "-c", KILLED_GRADER, level, ORPHAN.format(naptime=naptime)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        assert grader.stdout.readline().strip() == "ready", grader.stderr.read()
        deadline = time.monotonic() + 15
        while not _sleepers(naptime) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _sleepers(naptime), "the program's detached child never started"
        time.sleep(0.2)  # the program has written its file
    finally:
        grader.send_signal(signal.SIGKILL)
        grader.wait()

    def workdirs():
        return [n for n in os.listdir(tempfile.gettempdir()) if n.startswith(f"p3-sbx-{grader.pid}-")]

    deadline = time.monotonic() + 5
    while (_sleepers(naptime) or workdirs()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _sleepers(naptime) == []
    assert workdirs() == []


# A Kubernetes pod as the score/evaluate steps get by default: the grader runs as uid
# 1000 with no capabilities (so no CAP_SETUID: no slot uids), and user namespaces are
# not allowed (here: bwrap's --disable-userns sets user.max_user_namespaces=0 for
# everything inside, so `unshare(CLONE_NEWUSER)` and bubblewrap fail with ENOSPC, as
# under a seccomp profile that blocks them).
POD = ["bwrap", "--unshare-user", "--uid", "1000", "--gid", "1000", "--disable-userns", "--dev-bind", "/", "/", "--"]


def test_in_a_pod_without_user_namespaces_grading_refuses_unless_allowed(slow_problems):
    if not shutil.which("bwrap"):
        pytest.skip("bubblewrap not installed: it simulates the pod here")
    probe = subprocess.run(POD + ["sh", "-c", "id -u; unshare --user true"], capture_output=True, text=True)
    if probe.stdout.split()[:1] != ["1000"] or probe.returncode == 0:
        pytest.skip(f"cannot simulate the pod here: {probe.stderr.strip()}")

    def grade(*extra):
        out = slow_problems / f"pod{'-'.join(extra)}.parquet"
        proc = subprocess.run(POD + [sys.executable, "-m", "p3.cli", "grade", "--problems",
                                     str(slow_problems / "problems.parquet"), "--completions",
                                     str(slow_problems / "c.jsonl"), "--out", str(out), "--workers", "2", *extra],
                              capture_output=True, text=True, timeout=120, env=_env())
        return proc, out

    proc, out = grade()  # by default: refused, before any program ran, in one line
    assert proc.returncode == 1 and not out.exists(), proc.stderr
    [line] = [x for x in proc.stderr.splitlines() if "error" in x]
    assert "isolation proven here is 'none'" in line and "install bubblewrap" in line
    assert "--allow-weak-isolation" in line
    assert "bwrap unavailable" in line and "unshare unavailable" in line
    assert "read a file only the grader's uid may read" in line  # programs would run as the grader

    proc, out = grade("--allow-weak-isolation")
    assert proc.returncode == 0, proc.stderr
    assert "SANDBOX ISOLATION IS WEAK (none)" in proc.stderr
    rows = storage.read_table(out).to_pylist()
    assert [r["status"] for r in rows] == ["ok"] * 10 and {r["isolation"] for r in rows} == {"none"}
