"""APPS grading: run a completion's program on every test case in the sandbox and
compare its output in the parent, with the APPS reference harness's rules.

Both APPS formats: standard input/output, and call-based (``fn_name``; a LeetCode-style
``class Solution`` when the starter code has one). Comparison of printed output:
exact, then insensitive to whitespace and line breaks, then numeric tolerance
(``|a-b| <= 1e-8 + 1e-5·|b|``, numpy.allclose's rule) where the expected token is a
float. Call-based return values come back as JSON and are compared structurally here
(APPS wraps each expected return value in a one-element list; both forms are accepted).

Deliberately stricter than the reference harness: no order-insensitive set comparison
of lines, and an expected one-element list only matches its element, never ``[0]`` of a
longer list.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import replace
from typing import Any, Optional

from p3.problems import parse_tests
from p3.sandbox import Job, Limits, RunResult, Sandbox, decode_call_result

# A fenced block: ```lang\n ... ``` ; an unterminated last fence (a cut-off generation)
# counts up to the end of the text.
_FENCE = re.compile(r"```[^\n`]*\n(.*?)(?:```|\Z)", re.DOTALL)
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_FLOAT = re.compile(r"[+-]?(?:\d+\.\d*|\.\d+|\d+(?=[eE]))(?:[eE][+-]?\d+)?")

# The statuses of a failed test; a completion's status is that of its first failed test.
# Tests after the first failure are ``not_run`` unless every verdict is asked for.
FAIL_STATUSES = ("compile_error", "runtime_error", "timeout", "memory_limit", "output_limit", "wrong_answer", "sandbox_error")


def extract_code(text: Optional[str]) -> str:
    """The completion's last fenced code block, or the whole text when there is none."""
    if not text:
        return ""
    blocks = _FENCE.findall(text)
    return blocks[-1] if blocks else text


def load_tests(tests: Any) -> Optional[dict]:
    """The ``input_output`` JSON as a dict, or None when there are no usable tests
    (what :func:`p3.problems.parse_tests` would refuse)."""
    if tests is None or tests == "":
        return None
    try:
        return parse_tests(tests)
    except ValueError:
        return None


def _as_text(value: Any) -> str:
    if isinstance(value, list):
        return "\n".join(str(v) for v in value)
    return str(value)


def compare_stdout(output: str, expected: Any) -> bool:
    """Printed output vs the expected output (a string, or a list of lines)."""
    exp = _as_text(expected)
    if output == exp:
        return True
    out_tokens, exp_tokens = output.split(), exp.split()
    if out_tokens == exp_tokens:
        return True  # whitespace- and line-insensitive
    if len(out_tokens) != len(exp_tokens):
        return False
    return all(a == b or _close_tokens(a, b) for a, b in zip(out_tokens, exp_tokens))


def _close_tokens(got: str, want: str) -> bool:
    if not (_FLOAT.fullmatch(want) and _NUMBER.fullmatch(got)):
        return False
    return _close(float(got), float(want))


def _close(got: float, want: float) -> bool:
    return math.isfinite(got) and math.isfinite(want) and abs(got - want) <= 1e-8 + 1e-5 * abs(want)


def values_equal(got: Any, want: Any) -> bool:
    """Structural equality of JSON values: bools only equal bools, floats with tolerance."""
    if isinstance(want, bool) or isinstance(got, bool):
        return isinstance(want, bool) and isinstance(got, bool) and got == want
    if isinstance(want, (int, float)) and isinstance(got, (int, float)):
        if isinstance(want, int) and isinstance(got, int):
            return got == want
        return _close(float(got), float(want))
    if isinstance(want, list) and isinstance(got, list):
        return len(got) == len(want) and all(values_equal(a, b) for a, b in zip(got, want))
    if isinstance(want, dict) and isinstance(got, dict):
        return got.keys() == want.keys() and all(values_equal(got[k], want[k]) for k in want)
    return type(got) is type(want) and got == want


def compare_call(got: Any, expected: Any) -> bool:
    """A call-based return value vs APPS's expected output (often wrapped in a list)."""
    if values_equal(got, expected):
        return True
    return isinstance(expected, list) and len(expected) == 1 and values_equal(got, expected[0])


def jobs_for(code: str, tests: dict, starter_code: Optional[str]) -> list[Job]:
    """One sandbox job per test case."""
    fn_name = tests.get("fn_name")
    if fn_name:
        method = "class Solution" in (starter_code or "") or "class Solution" in code
        args_list = [a if isinstance(a, list) else [a] for a in tests["inputs"]]
        return [Job(code, fn_name=fn_name, args=args, method=method) for args in args_list]
    return [Job(code, stdin=_as_text(i)) for i in tests["inputs"]]


def test_status(res: RunResult, expected: Any, call_based: bool) -> str:
    """ok / wrong_answer / the run's failure status, for one test case."""
    if res.status != "ok":
        return res.status
    try:
        if call_based:
            ok, value = decode_call_result(res)
            return "ok" if ok and compare_call(value, expected) else "wrong_answer"
        return "ok" if compare_stdout(res.stdout, expected) else "wrong_answer"
    except RecursionError:  # an answer nested deeper than the grader parses: the program's doing
        return "wrong_answer"


def grade_program(sandbox: Sandbox, completion: str, tests: Any, starter_code: Optional[str] = None,
                  limits: Optional[Limits] = None, budget: Optional[float] = None, all_tests: bool = False) -> dict:
    """Grade one completion: {score, passed, status, tests (per-test statuses)}.

    Tests run one after another, each in a fresh sandbox process. The first failed test
    ends the grading (the rest are ``not_run``; ``all_tests`` runs them all). A compile
    error fails every test without rerunning; after the first timeout the remaining tests
    are not run and count as ``timeout`` (a program that hangs once would cost timeout ×
    tests). ``budget`` bounds the wall-clock time of all runs together: each run gets at
    most what is left of it, and tests past it count as ``timeout``.
    """
    parsed = load_tests(tests)
    if parsed is None:
        return {"score": 0.0, "passed": False, "status": "no_tests", "tests": []}
    code = extract_code(completion)
    call_based = bool(parsed.get("fn_name"))
    jobs = jobs_for(code, parsed, starter_code)
    lim = limits or sandbox.limits
    deadline = time.monotonic() + budget if budget else math.inf
    statuses: list[str] = []
    for job, expected in zip(jobs, parsed["outputs"]):
        left = deadline - time.monotonic()
        if left <= 0:
            statuses += ["timeout"] * (len(jobs) - len(statuses))
            break
        st = test_status(sandbox.run(job, replace(lim, timeout=min(lim.timeout, left))), expected, call_based)
        statuses.append(st)
        if st in ("compile_error", "timeout"):
            statuses += [st] * (len(jobs) - len(statuses))
            break
        if st != "ok" and not all_tests:
            statuses += ["not_run"] * (len(jobs) - len(statuses))
            break
    n_ok = statuses.count("ok")
    failed = [s for s in statuses if s not in ("ok", "not_run")]
    return {
        "score": n_ok / len(statuses),
        "passed": n_ok == len(statuses),
        "status": failed[0] if failed else "ok",
        "tests": statuses,
    }
