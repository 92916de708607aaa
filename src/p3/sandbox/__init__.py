"""Run one untrusted Python program, once, in a fresh sandboxed process (docs/design.md §6).

Every run is a new process that:

- starts in its own session and process group (``start_new_session``), with an empty
  environment and a private working directory that is gone afterwards (a tmpfs inside
  the namespaces under bwrap and unshare, else a host temp dir that is removed); its code and stdin
  come in through read-only in-memory files;
- runs as an unprivileged uid when the grader is root (RLIMIT_NPROC does not bind root):
  one uid per worker slot, leased from a host-wide range under a lock, so that parallel
  runs, and other graders on the host, cannot signal or count against each other;
- is isolated by the best mechanism this machine allows:
  ``bwrap``    bubblewrap: new user, network, pid, mount, ipc and uts namespaces, no
               nested user namespaces; the program sees only /usr (read-only), a
               size-limited tmpfs as cwd and /dev/shm, its own /proc and a minimal /dev.
               The program is pid 1 of its namespace (``--as-pid-1``): when it ends,
               every process it left behind dies with the namespace.
               Works for a non-root grader too (unprivileged user namespaces).
  ``unshare``  no bubblewrap: new user, network, ipc, mount, uts and pid namespaces made
               by the runner itself, private tmpfs over the shared temp folders, its own
               /proc; the rest of the host's files are protected by permissions only.
  ``none``     rlimits (and the uid switch when root) only; a keeper process (subreaper)
               kills whatever the program leaves behind;
- is proven, not assumed: at start a canary program (:data:`CANARY`) tries the network,
  a file of the grader's uid, the grader's command line in /proc and the host's temp
  folder; the level reported is the one its findings prove (:func:`proven_level`).
  Anything below ``bwrap`` is refused (RuntimeError) unless ``allow_weak`` is set;
- dies with the grader, even on kill -9 (bwrap ``--die-with-parent``, else the runner's
  PR_SET_PDEATHSIG); below bwrap, what the slot uid left in the shared temp folders and
  its SysV IPC objects are removed after every run;
- sets rlimits (CPU, address space, file size, open files, processes, core=0) from a
  small trusted prologue (``RUNNER``) before compiling the program, so that no
  ``preexec_fn`` runs in the (multi-threaded) grader;
- is killed whole (process group, and the pid namespace with it) at the wall-clock limit;
  stdout/stderr are capped while they are read.

Expected outputs never enter the sandbox: the parent compares. Call-based answers come
back as JSON text, so an object with a lying ``__eq__`` cannot pass.

The package uses the standard library and relative imports only (no p3 imports), so that a
test can copy it and load it with the system Python under an unprivileged uid. One job a
module, each importing only those listed before it:

  runner.py   the interpreter and the trusted prologue (RUNNER) that starts the program
  jobs.py     what goes into one run (Job, Limits) and what comes back (RunResult)
  canary.py   the canary program, and the level its findings prove
  uids.py     slot uids, leased host-wide under a lock
  cleanup.py  what runs leave on the host below bwrap: processes, files, IPC, work folders
  process.py  one process: started, read under caps, killed whole, its exit classified
  pool.py     Sandbox: proves the level at start, then runs jobs ``workers`` at a time
"""

from .canary import CANARY, CANARY_CHECKS, describe_findings, proven_level, weak_isolation_message
from .jobs import MIN_MEMORY_MB, Job, Limits, RunResult, decode_call_result, validate_limits
from .pool import Sandbox
from .runner import (DEFAULT_PYTHON, LEVELS, MODES, RC_COMPILE_ERROR, RC_SANDBOX_ERROR, RUNNER, SHARED_TMP_DIRS,
                     sandbox_python)
from .uids import DEFAULT_UID_BASE, UID_RANGE

__all__ = [
    "CANARY", "CANARY_CHECKS", "DEFAULT_PYTHON", "DEFAULT_UID_BASE", "LEVELS", "MIN_MEMORY_MB", "MODES",
    "RC_COMPILE_ERROR", "RC_SANDBOX_ERROR", "RUNNER", "SHARED_TMP_DIRS", "UID_RANGE", "Job", "Limits", "RunResult",
    "Sandbox", "decode_call_result", "describe_findings", "proven_level", "sandbox_python", "validate_limits",
    "weak_isolation_message",
]
