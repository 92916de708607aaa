"""The program's side of a run: the interpreter it gets and the trusted prologue
(``RUNNER``) that isolates it, limits it and runs it."""

from __future__ import annotations

import os
import shutil
import sys

# The sandbox uid cannot execute a virtualenv interpreter that resolves into root's home,
# and untrusted programs need only the standard library: use the system interpreter.
DEFAULT_PYTHON = "/usr/bin/python3"


def sandbox_python() -> str:
    """The interpreter for untrusted programs: $P3_SANDBOX_PYTHON, else the system python3
    (/usr/bin/python3, or /usr/local/bin/python3 as in the python:*-slim images), else the
    first python3 on PATH."""
    env = os.environ.get("P3_SANDBOX_PYTHON")
    if env:
        return env
    for candidate in (DEFAULT_PYTHON, "/usr/local/bin/python3"):
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("python3") or sys.executable


LEVELS = ("bwrap", "unshare", "none")  # strongest first: the order "auto" tries them in
MODES = {"none": 0, "unshare": 1, "bwrap": 2}  # the runner's first argument

# Exit codes the runner uses for its own outcomes (a program may fake them; that only
# makes it fail, since the parent never trusts a claim of success).
RC_COMPILE_ERROR = 97
RC_SANDBOX_ERROR = 96

# Writable by everyone on a Debian/Ubuntu host: what a weakly isolated program could leave
# files, sockets and fillers in. ``unshare`` mounts a private tmpfs over each; as root the
# grader also sweeps whatever the slot uid owns there after every run.
SHARED_TMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")

# The trusted prologue, run as `python3 -I -S -B -c RUNNER mode cpu as fsize nofile nproc
# method dedicated_uid tmpfs_bytes grader_pid prog fn_name`. Any Python 3.8+; standard library only,
# and as little of it as possible at level bwrap (json alone costs ~10 ms of start-up,
# more than the whole trivial program).
#
# mode 2 (bwrap): bwrap made the namespaces and ties the program's life to the grader.
# mode 1 (unshare): the runner makes new user, network, ipc, mount, uts and pid namespaces
#   and forks the program as pid 1 of the new pid namespace, with private tmpfs over the
#   shared temp folders and a /proc of its own: nothing it starts or writes outlives it.
# mode 0 (none): no namespaces. The runner stays as a keeper: a child subreaper (orphaned
#   descendants come back to it, and it reaps them), signalled by the kernel when the
#   grader dies, that kills every descendant when the program ends or the grader goes.
#   With a root grader the keeper stays root (``dedicated_uid`` is the slot uid the
#   program gets), so that the program cannot kill it and leave zombies to an init that
#   may never reap them (a container's pid 1).
# In modes 0 and 1 the runner dies with the grader (PR_SET_PDEATHSIG), even on kill -9.
RUNNER = r"""
import sys, os, resource
mode, cpu, mem, fsize, nofile, nproc, is_method, dedicated, tmpfs, grader = (int(x) for x in sys.argv[1:11])
prog, fn_name = sys.argv[11], sys.argv[12]
R = resource
if mode < 2:
    import ctypes, signal
    libc = ctypes.CDLL(None, use_errno=True)
    def fail(what):
        os.write(2, b"p3-sandbox: " + what + b" failed\n")
        os._exit(96)
    R.setrlimit(R.RLIMIT_CORE, (0, 0))
    with open(prog, "rb") as fh:
        source = fh.read()
    if mode == 1:
        uid, gid = os.geteuid(), os.getegid()
        # CLONE_NEWUSER | NEWNET | NEWIPC | NEWNS | NEWUTS | NEWPID
        if libc.unshare(0x10000000 | 0x40000000 | 0x08000000 | 0x00020000 | 0x04000000 | 0x20000000) != 0:
            fail(b"unshare")
        for name, text in (("setgroups", "deny"), ("uid_map", "%d %d 1" % (uid, uid)), ("gid_map", "%d %d 1" % (gid, gid))):
            with open("/proc/self/" + name, "w") as fh:
                fh.write(text)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: the grader's death kills this keeper...
    else:
        libc.prctl(36, 1)  # PR_SET_CHILD_SUBREAPER
        libc.prctl(1, signal.SIGTERM)  # ...here the keeper first kills what the program left
    if os.getppid() != grader:
        os._exit(96)  # the grader died before the death signal was armed
    def sweep(*_):
        if dedicated:  # as the slot uid, kill(-1) reaches every process it has, at once
            helper = os.fork()
            if not helper:
                try:
                    os.setuid(dedicated)
                    os.kill(-1, 9)
                finally:
                    os._exit(0)
            os.waitpid(helper, 0)
        for _ in range(10000):
            kids = []
            for tid in os.listdir("/proc/self/task"):
                try:
                    with open("/proc/self/task/%s/children" % tid) as fh:
                        kids += fh.read().split()
                except OSError:
                    pass
            if not kids:
                break
            for k in kids:
                try:
                    os.kill(int(k), 9)
                except OSError:
                    pass
            try:  # block until one is gone: a busy loop would starve the dying on a loaded host
                os.waitpid(-1, 0)
                while os.waitpid(-1, os.WNOHANG)[0]:
                    pass
            except ChildProcessError:
                break
    def orphaned(*_):  # the grader is gone and cannot remove the work folder itself
        sweep()
        import shutil
        shutil.rmtree(os.getcwd(), ignore_errors=True)
        os._exit(137)
    if mode == 0:
        signal.signal(signal.SIGTERM, orphaned)
    child = os.fork()
    if child:
        _, status = os.waitpid(child, 0)
        if mode == 0:
            sweep()
        os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))
    if dedicated:  # mode 0 of a root grader: the keeper stays root, out of the program's reach
        os.setgroups([])
        os.setgid(dedicated)
        os.setuid(dedicated)
    libc.prctl(1, signal.SIGKILL)  # the program dies with its keeper
    if mode == 0:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    else:  # pid 1 of the new namespaces: its death takes every process in them
        libc.mount.argtypes = (ctypes.c_char_p,) * 3 + (ctypes.c_ulong, ctypes.c_char_p)
        if libc.mount(None, b"/", None, 0x4000 | 0x40000, None) != 0:  # MS_REC | MS_PRIVATE
            fail(b"mount --make-rprivate")
        for d in TMP_DIRS:
            if os.path.isdir(d) and libc.mount(b"tmpfs", d.encode(), b"tmpfs", 0x2 | 0x4, b"size=%d,mode=1777" % tmpfs) != 0:
                fail(b"tmpfs on " + d.encode())
        libc.mount(b"proc", b"/proc", b"proc", 0x2 | 0x4 | 0x8, None)  # best effort; the probe says if it failed
        os.chdir("/tmp")
        # no capability may survive into the program (it could unmount its tmpfs)
        hdr = (ctypes.c_uint32 * 2)(0x20080522, 0)
        if libc.capset(hdr, (ctypes.c_uint32 * 6)()) != 0 or libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
            fail(b"dropping capabilities")
    del ctypes, libc, signal, sweep, orphaned
for lim, value in ((R.RLIMIT_CORE, 0), (R.RLIMIT_CPU, cpu), (R.RLIMIT_AS, mem), (R.RLIMIT_FSIZE, fsize),
                   (R.RLIMIT_NOFILE, nofile), (R.RLIMIT_NPROC, nproc)):
    R.setrlimit(lim, (value, value + 1 if lim == R.RLIMIT_CPU else value))  # SIGXCPU, then SIGKILL
del R, lim, value
import builtins
builtins.exit = builtins.quit = sys.exit  # -S drops site's exit(); programs use it
try:
    if mode == 2:
        with open(prog, "rb") as fh:
            source = fh.read()
    code = compile(source, "solution.py", "exec")
except BaseException as exc:
    os.write(2, ("%s: %s\n" % (type(exc).__name__, exc)).encode("utf-8", "replace"))
    os._exit(97)
del source
g = {"__name__": "__main__", "__builtins__": builtins, "__file__": "solution.py"}
if not fn_name:
    exec(code, g)
else:
    import io, json
    _dumps, _write, _exit = json.dumps, os.write, os._exit
    args = json.loads(sys.stdin.read())
    sys.stdin = io.StringIO("")
    out = os.dup(1)
    os.dup2(2, 1)  # the program's prints go to stderr; stdout carries only the answer
    exec(code, g)
    if (is_method or fn_name not in g) and "Solution" in g:
        fn = getattr(g["Solution"](), fn_name)  # LeetCode style
    else:
        fn = g[fn_name]
    data = _dumps(fn(*args)).encode("utf-8")
    sys.stdout.flush()
    while data:
        data = data[_write(out, data):]
    _exit(0)
""".replace("TMP_DIRS", repr(SHARED_TMP_DIRS))
