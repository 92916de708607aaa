"""``p3 grade``: score completions against problems (MATH answers, APPS programs).

Python API for the rollout scorer and the evaluator: :func:`grade_completions` (one row
per completion, never fewer) and :func:`pass_at_k` (the unbiased estimator of Chen et
al. 2021). The CLI reads a problems table and ``completions.jsonl`` rows
``{"id", "sample", "completion"}`` and writes ``results.parquet``:

    id · sample · score (MATH 0/1, APPS fraction of tests passed; tests after the first
    failed one are not run unless --all-tests, and count as not passed) · passed (bool)
    · status · tests (APPS per-test statuses) · answer (MATH: the extracted answer)
    · isolation (APPS: the sandbox level proven and used; MATH: null)

status: ok, wrong_answer, no_answer (no final answer found), compile_error,
runtime_error, timeout, memory_limit, output_limit, sandbox_error, and no_tests (the
problem has no tests / no gold answer: reported, never passed).
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, Optional

import pyarrow as pa

from p3 import checks, storage
from p3.contracts import ContractError
from p3.logs import get_logger, progress, step
from p3.sandbox import LEVELS, MIN_MEMORY_MB, Limits, Sandbox, sandbox_python
from p3.verify import apps as vapps
from p3.verify import math as vmath
from p3.verify.answers import extract_answer

log = get_logger("grade")


RESULTS = pa.schema(
    [
        ("id", pa.string()),
        ("sample", pa.int64()),
        ("score", pa.float64()),
        ("passed", pa.bool_()),
        ("status", pa.string()),
        ("tests", pa.list_(pa.string())),
        ("answer", pa.string()),
        ("isolation", pa.string()),  # APPS: the sandbox level proven and used; MATH: null (no program runs)
    ]
)


@dataclass
class GradeConfig:
    problems: str = field(metadata={"io": "in", "help": "problems table (Parquet, local path or URI)"})
    completions: str = field(metadata={"io": "in", "help": "completions JSONL: one {id, sample, completion} per line"})
    out: str = field(metadata={"io": "out", "help": "where to write results.parquet"})
    timeout: float = field(default=4.0, metadata={"gt": 0.0, "help": "wall-clock seconds per APPS test run"})
    workers: int = field(default_factory=lambda: os.cpu_count() or 1,
                         metadata={"min": 1, "max": 1024, "help": "parallel sandbox runs / math-verify processes"})
    math_timeout: float = field(default=10.0, metadata={"gt": 0.0, "help": "seconds per MATH answer comparison"})
    memory_mb: int = field(default=1024, metadata={
        "min": MIN_MEMORY_MB, "help": "address-space limit of a program run (MiB; the interpreter alone needs ~30)"})
    budget: float = field(default=30.0, metadata={"gt": 0.0,
        "help": "wall-clock seconds for all test runs of one APPS completion; tests past it count as timeout"})
    all_tests: bool = field(default=False, metadata={
        "help": "run every test of an APPS completion (default: stop at the first failed test; the rest are not_run)"})
    isolation: str = field(default="auto", metadata={"help": "sandbox isolation level (auto = best available)",
                                                     "choices": ["auto", *LEVELS]})
    allow_weak_isolation: bool = field(default=False, metadata={
        "help": "grade APPS programs even when the sandbox cannot prove full isolation (bwrap); the level used "
                "is recorded in the results (default: refuse)"})
    sandbox_python: str = field(default="", metadata={
        "help": "interpreter for untrusted programs (default $P3_SANDBOX_PYTHON, else the system python3)"})

    def __post_init__(self) -> None:
        checks.validate(self)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c passed: 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"pass@k needs 0 <= c <= n and k >= 1, got n={n} c={c} k={k}")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    # the product form avoids huge binomials (Chen et al. 2021, Codex paper)
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def mean_pass_at_k(results: Iterable[dict], k: int) -> float:
    """pass@k averaged over problems, from graded rows (id, passed)."""
    per: dict[str, list[bool]] = defaultdict(list)
    for r in results:
        per[r["id"]].append(bool(r["passed"]))
    if not per:
        return 0.0
    return sum(pass_at_k(len(v), sum(v), k) for v in per.values()) / len(per)


def grade_completions(
    problems: pa.Table,
    completions: list[dict],
    timeout: float = 4.0,
    workers: int = 2,
    *,
    math_timeout: float = 10.0,
    sandbox: Optional[Sandbox] = None,
    limits: Optional[Limits] = None,
    isolation: str = "auto",
    allow_weak_isolation: bool = False,
    python: Optional[str] = None,
    budget: Optional[float] = None,
    all_tests: bool = False,
) -> list[dict]:
    """Grade every completion; one result row per completion, in input order.

    ``problems`` follows the problems contract (id, task, answer, tests, starter_code,
    solution); each completion is a dict with id, sample, completion. A failure inside
    the grader for one row is that row's ``sandbox_error``, never a lost row. Any APPS
    completion needs a sandbox; below full isolation that raises RuntimeError before any
    program runs, unless ``allow_weak_isolation``. ``budget``: wall-clock seconds for all
    test runs of one completion; ``all_tests``: do not stop at the first failed test.
    """
    n_problems = problems.num_rows
    cols = {c: problems.column(c).to_pylist() if c in problems.column_names else [None] * n_problems
            for c in ("id", "task", "answer", "tests", "starter_code", "solution")}
    index = {pid: i for i, pid in enumerate(cols["id"])}
    for n, c in enumerate(completions):
        if c.get("id") not in index:
            raise ValueError(f"completion {n + 1}: unknown problem id {c.get('id')!r}")
    tasks = {cols["task"][index[c["id"]]] for c in completions}
    if tasks - {"math", "apps"}:
        raise ValueError(f"cannot grade task(s) {sorted(tasks - {'math', 'apps'})}: only math and apps")
    lim = limits or Limits(timeout=timeout)
    if "apps" in tasks and sandbox is None:
        sandbox = shared_sandbox(workers, python, isolation, allow_weak_isolation)
    mpool = vmath.pool(workers) if "math" in tasks else None
    # each problem's tests parsed once, not once per completion (APPS tests run to megabytes)
    tests = {i: vapps.load_tests(cols["tests"][i])
             for i in {index[c["id"]] for c in completions} if cols["task"][i] == "apps"}

    def one(c: dict) -> dict:
        i = index[c["id"]]
        row = {"id": c["id"], "sample": int(c.get("sample", 0)), "score": 0.0, "passed": False,
               "status": "sandbox_error", "tests": [], "answer": None,
               "isolation": sandbox.level if cols["task"][i] == "apps" else None}
        try:
            if cols["task"][i] == "math":
                row.update(_grade_math(mpool, c["completion"], cols, i, math_timeout))
            else:
                row.update(vapps.grade_program(sandbox, c["completion"], tests[i], cols["starter_code"][i], lim,
                                               budget=budget, all_tests=all_tests))
        except Exception as exc:  # keep the row; say what went wrong
            log.error(f"grading {c['id']}/{row['sample']} failed: {type(exc).__name__}: {exc}")
        return row

    with ThreadPoolExecutor(max(1, workers)) as ex:
        rows = list(progress(ex.map(one, completions), desc="grade", total=len(completions)))
    untested = sorted({r["id"] for r in rows if r["status"] == "no_tests"})
    if untested:
        log.warning(f"{len(untested)} problem(s) have no tests / no gold answer; their completions are reported "
                    f"as no_tests, never passed: {', '.join(untested[:10])}{' …' if len(untested) > 10 else ''}")
    return rows


_SANDBOXES: dict[tuple, Sandbox] = {}
_SANDBOXES_LOCK = threading.Lock()


def shared_sandbox(workers: int, python: Optional[str] = None, isolation: str = "auto",
                   allow_weak_isolation: bool = False) -> Sandbox:
    """One Sandbox per setting for the whole process: the scorer grades every epoch, and the
    isolation proof (and its log line) need not run each time. Limits are given per call."""
    key = (workers, python or sandbox_python(), isolation, allow_weak_isolation)
    with _SANDBOXES_LOCK:
        if key not in _SANDBOXES:
            _SANDBOXES[key] = Sandbox(workers=workers, python=python, isolation=isolation,
                                      allow_weak=allow_weak_isolation)
        return _SANDBOXES[key]


def _grade_math(mpool: vmath.MathPool, completion: str, cols: dict, i: int, timeout: float) -> dict:
    gold = cols["answer"][i] or extract_answer(cols["solution"][i])
    pred = extract_answer(completion)
    if not gold:
        return {"status": "no_tests", "answer": pred}
    if pred is None:
        return {"status": "no_answer"}
    ok = mpool.equivalent(gold, pred, timeout)
    return {"score": float(ok), "passed": ok, "status": "ok" if ok else "wrong_answer", "answer": pred}


def read_completions(path: str) -> list[dict]:
    """Read completions JSONL; bad rows stop with an error naming the line and field."""
    rows = []
    with storage.open_file(path, "rb") as fh:
        for n, raw in enumerate(fh, start=1):
            line = raw.decode("utf-8").strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise ContractError(path, "-", f"not valid JSON: {exc}", row=n) from None
            if not isinstance(obj, dict):
                raise ContractError(path, "-", "must be a JSON object", row=n)
            if not isinstance(obj.get("id"), str) or not obj["id"]:
                raise ContractError(path, "id", "missing or not a string", row=n)
            if not isinstance(obj.get("sample", 0), int) or isinstance(obj.get("sample"), bool):
                raise ContractError(path, "sample", "must be an integer", row=n)
            if not 0 <= obj.get("sample", 0) <= checks.INT64:  # the results table holds int64
                raise ContractError(path, "sample", f"must be in 0..2^63-1, got {obj['sample']}", row=n)
            if not isinstance(obj.get("completion"), str):
                raise ContractError(path, "completion", "missing or not a string", row=n)
            obj.setdefault("sample", 0)
            obj["_line"] = n
            rows.append(obj)
    return rows


def grade(cfg: GradeConfig) -> pa.Table:
    """CLI entry: read problems + completions, grade, write results atomically."""
    from p3.problems import load_problems

    problems = load_problems(cfg.problems)
    completions = read_completions(cfg.completions)
    known = set(problems.column("id").to_pylist())
    for c in completions:
        if c["id"] not in known:
            raise ContractError(cfg.completions, "id", f"unknown problem id {c['id']!r} (not in {cfg.problems})",
                                row=c["_line"])
    limits = Limits(timeout=cfg.timeout, memory_mb=cfg.memory_mb)
    with step(log, "grade") as counts:
        # the sandbox (and its isolation log line) only when an APPS completion needs it
        rows = grade_completions(problems, completions, timeout=cfg.timeout, workers=cfg.workers,
                                 math_timeout=cfg.math_timeout, limits=limits, isolation=cfg.isolation,
                                 allow_weak_isolation=cfg.allow_weak_isolation, python=cfg.sandbox_python or None,
                                 budget=cfg.budget, all_tests=cfg.all_tests)
        table = pa.Table.from_pylist(rows, schema=RESULTS)
        storage.write_table(table, cfg.out)
        counts["n"] = len(rows)
        counts["passed"] = sum(r["passed"] for r in rows)
        counts.update(sorted(Counter(r["status"] for r in rows).items()))
        levels = sorted({r["isolation"] for r in rows if r["isolation"]})
        if levels:
            counts["isolation"] = ",".join(levels)
    return table
