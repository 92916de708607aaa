"""The sandbox's guarantees, at every isolation level this machine offers, and as a
non-root grader (Kubernetes pods run non-root)."""

import json
import os
import shutil
import subprocess
import tempfile
import textwrap
from pathlib import Path

import pytest

import p3.sandbox as sbx
from _sandbox_fixtures import LoopbackServer
from p3.sandbox import Job, Limits, Sandbox

SYSTEM_PYTHON = sbx.sandbox_python()  # never missing: it falls back to this interpreter


def _sandbox(level, tmp_root=None, timeout=1.5):
    try:
        return Sandbox(workers=2, limits=Limits(timeout=timeout), isolation=level, tmp_root=tmp_root,
                       allow_weak=level != "bwrap")
    except RuntimeError as exc:
        pytest.skip(f"isolation level {level} unavailable here: {exc}")


@pytest.fixture(scope="module", params=["bwrap", "unshare", "none"])
def level(request):
    _sandbox(request.param)  # skips when unavailable
    return request.param


@pytest.fixture
def open_tmp():
    """A temp root the sandbox uid can traverse (pytest's own tmp_path is private to root)."""
    root = tempfile.mkdtemp(prefix="p3-test-sbx-")
    os.chmod(root, 0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_outcomes_are_classified(level, open_tmp):
    sb = _sandbox(level, tmp_root=open_tmp)
    cases = [
        (Job("print(int(input()) * 2)", stdin="21\n"), "ok", "42\n"),
        (Job("print('a'"), "compile_error", ""),
        (Job("raise ValueError('x')"), "runtime_error", ""),
        (Job("import sys\nsys.exit(3)"), "runtime_error", ""),
        (Job("exit()"), "ok", ""),  # site's exit() works although the runner skips site
        (Job("while True: pass"), "timeout", ""),
        (Job("import os, time\nprint(3, flush=True)\nos.close(1)\nos.close(2)\ntime.sleep(0.3)"), "ok", "3\n"),
        (Job("import os\nprint(3, flush=True)\nos.close(1)\nos.close(2)\nwhile True: pass"), "timeout", "3\n"),
        (Job("x = bytearray(10**11)"), "memory_limit", ""),
        (Job("while True: print('x' * 4096)"), "output_limit", None),
        (Job("open('f', 'wb').write(b'x' * (100 << 20))"), "output_limit", ""),
        (Job("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\nimport ctypes\nctypes.string_at(0)"),
         "runtime_error", ""),
    ]
    results = sb.run_many([c[0] for c in cases])
    for (job, status, out), res in zip(cases, results):
        assert res.status == status, (job.code, res)
        if out is not None:
            assert res.stdout == out
    assert os.listdir(open_tmp) == []  # every private working dir was removed (bwrap makes none)


def test_call_based_answers_travel_as_json(level):
    sb = _sandbox(level)
    code = "class Solution:\n    def f(self, a, b):\n        print('noise')\n        return [a + b, (a, b), {'k': None}]\n"
    res = sb.run(Job(code, fn_name="f", args=[1, 2], method=True))
    assert res.status == "ok"
    assert sbx.decode_call_result(res) == (True, [3, [1, 2], {"k": None}])
    assert "noise" in res.stderr  # the program's prints never mix with the answer
    res = sb.run(Job("def g(x):\n    return x * 2\n", fn_name="g", args=["ab"]))
    assert sbx.decode_call_result(res) == (True, "abab")


def test_environment_uid_and_cwd(level, monkeypatch):
    monkeypatch.setenv("P3_TEST_SECRET", "hunter2")
    sb = _sandbox(level)
    code = "import os, json\nopen('scratch', 'w').write('x')\nprint(json.dumps([dict(os.environ), os.getuid(), os.getcwd()]))"
    res = sb.run(Job(code))
    assert res.status == "ok", res
    env, uid, cwd = json.loads(res.stdout)
    assert "P3_TEST_SECRET" not in env and "HOME" not in env and set(env) <= {"PATH", "PWD", "LC_CTYPE", "LC_ALL"}
    if os.geteuid() == 0:
        assert uid != 0
    assert not os.path.exists(os.path.join(cwd, "scratch"))  # the private cwd is gone (or was never on the host)


def test_network_is_unreachable(level):
    if level == "none":
        pytest.skip("level 'none' has the host's network (it is logged as weak isolation)")
    server = LoopbackServer()
    try:
        sb = _sandbox(level)
        code = f"import socket\ns = socket.create_connection(('127.0.0.1', {server.port}), timeout=1)\ns.sendall(b'hi')\nprint('sent')"
        res = sb.run(Job(code))
        assert res.status == "runtime_error" and "sent" not in res.stdout
        assert server.connections == 0 and server.received == b""
    finally:
        server.close()


def test_host_files_are_invisible_under_bwrap():
    sb = _sandbox("bwrap")
    res = sb.run(Job("import os\nprint(sorted(os.listdir('/')))\nprint(os.path.exists('/work'), os.path.exists('/etc/passwd'))"))
    top = eval(res.stdout.splitlines()[0])
    assert set(top) <= {"usr", "bin", "lib", "lib32", "lib64", "sbin", "proc", "dev", "code", "sandbox"}
    assert res.stdout.splitlines()[1] == "False False"


def test_weak_isolation_is_refused_unless_allowed():
    for level in ("unshare", "none"):
        _sandbox(level)  # skips when unavailable
        with pytest.raises(RuntimeError) as err:
            Sandbox(isolation=level)
        msg = str(err.value)
        # the level found, why it is weak, how to get full isolation, how to opt out
        assert f"isolation proven here is '{level}', not 'bwrap'" in msg
        assert "install bubblewrap" in msg and "--allow-weak-isolation" in msg
        assert Sandbox(isolation=level, allow_weak=True).level == level
    if shutil.which("bwrap"):
        _sandbox("bwrap")
        assert Sandbox().level == "bwrap"


def test_bad_interpreter_is_reported(monkeypatch):
    monkeypatch.setenv("P3_SANDBOX_PYTHON", "/nonexistent/python3")
    with pytest.raises(RuntimeError, match="P3_SANDBOX_PYTHON"):
        Sandbox()


def test_results_keep_job_order_in_parallel(level):
    sb = _sandbox(level)
    res = sb.run_many([Job("import time, random\ntime.sleep(random.random() / 20)\nprint(input())", stdin=f"{i}\n")
                       for i in range(12)])
    assert [r.stdout.strip() for r in res] == [str(i) for i in range(12)]


NON_ROOT_SCRIPT = textwrap.dedent(
    """
    import importlib.util, json, os, sys
    spec = importlib.util.spec_from_file_location("p3_sandbox_copy", os.path.join(sys.argv[1], "__init__.py"),
                                                  submodule_search_locations=[sys.argv[1]])
    m = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = m
    spec.loader.exec_module(m)
    port, grader = int(sys.argv[2]), os.getpid()
    sb = m.Sandbox(workers=2, limits=m.Limits(timeout=1.5))  # refuses anything below bwrap
    out = {"level": sb.level, "grader_uid": os.getuid()}
    probe = (
        "import json, os, socket\\n"
        "seen = [os.path.exists(p) for p in ('/work', '/tmp', '/etc/passwd')]\\n"
        "try:\\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=1)\\n"
        "    net = True\\n"
        "except OSError:\\n"
        "    net = False\\n"
        "print(json.dumps([seen, net]))\\n"
    )
    out["probe"] = json.loads(sb.run(m.Job(probe)).stdout)
    bomb = "import os\\nwhile True:\\n    try:\\n        os.fork()\\n    except OSError:\\n        pass\\n"
    out["forkbomb"] = sb.run(m.Job(bomb)).status
    out["kill_grader"] = sb.run(m.Job(f"import os\\nos.kill({grader}, 9)\\nos.kill(-1, 9)\\nprint('x')")).status
    out["ok"] = sb.run(m.Job("print(int(input()) + 1)", stdin="1\\n")).stdout.strip()
    print(json.dumps(out))
    """
)


def test_non_root_grader_still_isolates(tmp_path):
    """The grader as an ordinary user (uid 65534): no uid switch, so isolation must come
    from unprivileged user namespaces (bwrap) and rlimits; it must survive its programs."""
    if not shutil.which("bwrap"):
        pytest.skip("bubblewrap not installed (apt-get install bubblewrap)")
    prefix = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("setpriv (util-linux) not installed")
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    userns = subprocess.run(prefix + ["unshare", "--user", "--net", "true"], capture_output=True)
    if userns.returncode != 0:
        pytest.skip(f"unprivileged user namespaces are not allowed here: {userns.stderr.decode().strip()}")
    # the grader's package, readable by the unprivileged user, run by the system Python
    # (the venv's interpreter lives in root's home, and p3 is not installed there)
    work = Path(tempfile.mkdtemp(prefix="p3-nonroot-"))
    try:
        shutil.copytree(Path(sbx.__file__).parent, work / "sandbox", ignore=shutil.ignore_patterns("__pycache__"))
        (work / "grader.py").write_text(NON_ROOT_SCRIPT)
        for folder, _, files in os.walk(work):
            os.chmod(folder, 0o755)
            for f in files:
                os.chmod(os.path.join(folder, f), 0o644)
        server = LoopbackServer()
        try:
            proc = subprocess.run(prefix + [SYSTEM_PYTHON, "-I", str(work / "grader.py"), str(work / "sandbox"),
                                            str(server.port)], capture_output=True, text=True, timeout=120,
                                  cwd=str(work), env={"PATH": "/usr/bin:/bin"})
        finally:
            server.close()
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        assert out["grader_uid"] != 0 or os.geteuid() != 0
        assert out["level"] == "bwrap"
        assert out["probe"] == [[False, False, False], False]  # no /work, /tmp, /etc; no network
        assert out["forkbomb"] == "timeout"
        assert out["kill_grader"] in ("ok", "runtime_error")  # and yet the grader lived on:
        assert out["ok"] == "2"
        assert server.connections == 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


FAKE_BWRAP = """#!/bin/bash
# Pretends to be bubblewrap: takes its options and runs the command with no isolation.
fd=
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  [ "$1" = --ro-bind-data ] && fd=$2
  shift
done
shift
args=()
for a in "$@"; do [ "$a" = /code/prog.py ] && a=/proc/self/fd/$fd; args+=("$a"); done
exec "${args[@]}"
"""


@pytest.fixture
def fake_bwrap(monkeypatch):
    """A `bwrap` first on PATH that isolates nothing (a broken or stubbed install)."""
    folder = tempfile.mkdtemp(prefix="p3-fake-bwrap-")
    os.chmod(folder, 0o755)
    path = os.path.join(folder, "bwrap")
    Path(path).write_text(FAKE_BWRAP)
    os.chmod(path, 0o755)
    monkeypatch.setenv("PATH", folder + os.pathsep + os.environ["PATH"])
    yield path
    shutil.rmtree(folder, ignore_errors=True)


def test_the_level_reported_is_the_one_the_canary_proves(fake_bwrap):
    """A `bwrap` that runs but isolates nothing must not be reported as `bwrap`: the
    canary reaches the host's network, the grader's command line and its temp folder."""
    with pytest.raises(RuntimeError, match="isolation proven here is 'none'"):
        Sandbox(isolation="bwrap")
    sb = Sandbox(isolation="bwrap", allow_weak=True)
    assert sb.bwrap == fake_bwrap and sb.mechanism == "bwrap"
    assert sb.level == "none"
    assert sb.findings["network"] and sb.findings["parent_cmdline"] and sb.findings["host_tmp"]
    assert sb.findings["other_uid_file"] is (os.geteuid() != 0)  # root switches to a slot uid
    # `auto` goes on to a mechanism that proves more, where there is one
    try:
        unshare = Sandbox(isolation="unshare", allow_weak=True).level
    except RuntimeError:
        unshare = None
    auto = Sandbox(allow_weak=True)
    assert (auto.mechanism, auto.level) == (("unshare", "unshare") if unshare == "unshare" else ("bwrap", "none"))


def test_canary_findings_of_the_real_levels(level):
    """What each real level lets the canary reach (docs/security.md, "Isolation levels")."""
    sb = _sandbox(level)
    reached = {k for k in sbx.CANARY_CHECKS if sb.findings[k]}
    expected = {"bwrap": set(), "unshare": set(),
                "none": {"network", "parent_cmdline", "host_tmp"} | ({"other_uid_file"} if os.geteuid() else set())}
    assert reached == expected[level]
    assert sb.level == level


def test_without_bubblewrap_the_best_level_is_refused_by_default(monkeypatch):
    """A fresh machine without bubblewrap: `auto` falls to what runs, and refuses it."""
    monkeypatch.setenv("PATH", "/nonexistent")  # no bwrap to find; the sandbox uses absolute paths otherwise
    with pytest.raises(RuntimeError) as err:
        Sandbox()
    msg = str(err.value)
    assert "bwrap unavailable: bubblewrap (bwrap) is not installed" in msg
    assert "not 'bwrap'" in msg and "install bubblewrap" in msg and "--allow-weak-isolation" in msg
    assert Sandbox(allow_weak=True).level in ("unshare", "none")
