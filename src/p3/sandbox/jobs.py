"""What goes into one sandboxed run and what comes back: the job, its limits, the outcome."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

MIN_MEMORY_MB = 64  # below this the interpreter itself cannot start: every program would "fail"


@dataclass
class Limits:
    """Resource limits of one run."""

    timeout: float = 4.0  # wall clock, seconds; the whole process group is killed after it
    cpu: int | None = None  # CPU seconds; None = int(timeout) + 2
    memory_mb: int = 1024  # address space (Python itself needs ~30 MB)
    file_mb: int = 16  # largest file the program may write
    tmpfs_mb: int = 64  # size of the working directory (bwrap level)
    nofile: int = 64  # open files
    nproc: int = 32  # processes + threads (per user namespace under bwrap)
    stdout_bytes: int = 8 << 20  # capped while read; more = output_limit
    stderr_bytes: int = 64 << 10  # kept for diagnostics; more = output_limit

    def __post_init__(self):
        validate_limits(self.timeout, self.memory_mb)


def validate_limits(timeout: float, memory_mb: int) -> None:
    """Refuse limits under which every program fails (a zero, negative, NaN or infinite
    timeout; less memory than the interpreter needs): one clear error before any run."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (0 < timeout < math.inf):
        raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")
    if isinstance(memory_mb, bool) or not isinstance(memory_mb, int) or memory_mb < MIN_MEMORY_MB:
        raise ValueError(f"memory_mb must be an integer >= {MIN_MEMORY_MB} (the interpreter alone needs ~30 MB), "
                         f"got {memory_mb!r}")


@dataclass
class RunResult:
    """Outcome of one run. ``status``: ok, compile_error, runtime_error, timeout,
    memory_limit, output_limit or sandbox_error (``ok`` = exited 0, not "correct")."""

    status: str
    stdout: str = ""
    stderr: str = ""
    returncode: int | None = None
    wall: float = 0.0


@dataclass
class Job:
    """One program run: source code, stdin text, and for call-based problems the
    function name, its JSON argument list and whether it is a ``class Solution`` method."""

    code: str
    stdin: str = ""
    fn_name: str | None = None
    args: list = field(default_factory=list)
    method: bool = False



def decode_call_result(res: RunResult) -> tuple[bool, Any]:
    """The return value of a call-based run, parsed from its JSON stdout: (ok, value)."""
    if res.status != "ok":
        return False, None
    try:
        return True, json.loads(res.stdout)
    except ValueError:
        return False, None
