"""APPS grading on the hand-written fixture set (both formats), comparison rules,
pass@k, and `p3 grade` end to end. Programs run in the real sandbox."""

import itertools
import json
import math
from importlib import resources

import pyarrow as pa
import pytest

from _sandbox_fixtures import grading_sandbox

from p3 import cli, storage
from p3.sandbox import Limits
from p3.sources import PrepareConfig, prepare
from p3.verify import apps as vapps
from p3.verify.grade import grade_completions, mean_pass_at_k, pass_at_k

FIXTURE = resources.files("p3") / "fixtures" / "apps_fixture.jsonl"

# Wrong solutions, per fixture problem: (code, expected status of the completion).
WRONG = {
    4001: [("a, b = map(int, input().split())\nprint(a - b)\n", "wrong_answer"),
           ("a, b = map(int, input().split()\nprint(a + b)\n", "compile_error")],
    4002: [("s = input()\nprint(s)\n", "wrong_answer")],
    4003: [("n = int(input())\na = list(map(int, input().split()))\nprint(min(a))\nprint(max(a))\n", "wrong_answer"),
           ("n = int(input())\na = list(map(int, input().split()))\nprint(a[n])\n", "runtime_error")],
    4004: [("n = int(input())\na = list(map(int, input().split()))\nprint(sum(a) // n)\n", "wrong_answer"),
           ("n = int(input())\na = list(map(int, input().split()))\nprint('%.2f' % (sum(a) / n))\n", "wrong_answer")],
    4005: [("t = int(input())\nfor _ in range(t):\n    w = input()\n    print('YES')\n", "wrong_answer")],
    4006: [("h, w = map(int, input().split())\ng = [input() for _ in range(h)]\nprint(sum(r.count('#') for r in g))\n",
            "wrong_answer")],
    4007: [("def digit_sum(n):\n    return str(sum(int(c) for c in str(n)))\n", "wrong_answer"),
           ("def digitsum(n):\n    return 0\n", "runtime_error")],
    4008: [("def sort_desc(arr):\n    return sorted(arr)\n", "wrong_answer")],
    4009: [("class Solution:\n    def twoSum(self, nums, target):\n        return [0, 1]\n", "wrong_answer"),
           ("class Solution:\n    def twoSum(self, nums, target):\n        while True: pass\n", "timeout")],
    4010: [("class Solution:\n    def isPalindrome(self, x):\n        return 1 if str(x) == str(x)[::-1] else 0\n",
            "wrong_answer")],
    4011: [("def circle_area(r):\n    return 3.14 * r * r\n", "wrong_answer")],
    4012: [("n = int(input())\nprint(' '.join(['1'] * n))\n", "wrong_answer")],
}


@pytest.fixture(scope="module")
def apps_problems(tmp_path_factory):
    out = tmp_path_factory.mktemp("apps") / "problems.parquet"
    prepare(PrepareConfig(task="apps", source=str(FIXTURE), out=str(out)))
    return storage.read_table(out)


@pytest.fixture(scope="module")
def sandbox():
    return grading_sandbox(workers=2, limits=Limits(timeout=2.0))


def _raw_rows():
    return [json.loads(line) for line in FIXTURE.read_text().splitlines() if line.strip()]


def test_fixture_covers_both_formats():
    rows = _raw_rows()
    assert 8 <= len(rows) <= 12
    kinds = {"stdin": 0, "function": 0, "leetcode": 0}
    for r in rows:
        io = json.loads(r["input_output"])
        assert len(io["inputs"]) == len(io["outputs"]) >= 2
        assert len(json.loads(r["solutions"])) >= 1
        if not io.get("fn_name"):
            kinds["stdin"] += 1
        elif "class Solution" in r["starter_code"]:
            kinds["leetcode"] += 1
        else:
            kinds["function"] += 1
    assert all(v >= 2 for v in kinds.values()), kinds
    assert set(WRONG) == {r["problem_id"] for r in rows}


def test_every_correct_solution_passes_and_every_wrong_one_fails(apps_problems, sandbox):
    rows = _raw_rows()
    completions, expected = [], []
    for r in rows:
        pid = f"apps-{r['problem_id']}"
        # a model's answer: prose around a fenced block, as generated
        sol = json.loads(r["solutions"])[0]
        completions.append({"id": pid, "sample": 0, "completion": f"Here is my solution.\n```python\n{sol}```\nDone."})
        expected.append("ok")
        for k, (code, status) in enumerate(WRONG[r["problem_id"]], start=1):
            completions.append({"id": pid, "sample": k, "completion": f"```python\n{code}```"})
            expected.append(status)
    results = grade_completions(apps_problems, completions, timeout=2.0, workers=2, sandbox=sandbox)
    assert len(results) == len(completions)
    for c, r, want in zip(completions, results, expected):
        assert (r["id"], r["sample"]) == (c["id"], c["sample"])
        assert r["status"] == want, (c, r)
        assert r["passed"] is (want == "ok")
        if want == "ok":
            assert r["score"] == 1.0 and set(r["tests"]) == {"ok"}
        else:
            assert r["score"] < 1.0


def test_partial_score_is_fraction_of_tests(apps_problems, sandbox):
    # right on two of the three tests of 4001 (fails only when a == -5)
    code = "a, b = map(int, input().split())\nprint(a + b if a != -5 else 1)\n"
    comp = [{"id": "apps-4001", "sample": 0, "completion": code}]
    [r] = grade_completions(apps_problems, comp, sandbox=sandbox, all_tests=True)
    assert r["tests"] == ["ok", "wrong_answer", "ok"]
    assert r["score"] == pytest.approx(2 / 3) and r["passed"] is False and r["status"] == "wrong_answer"
    # by default grading stops at the first failed test: the rest are not run, not passed
    [r] = grade_completions(apps_problems, comp, sandbox=sandbox)
    assert r["tests"] == ["ok", "wrong_answer", "not_run"]
    assert r["score"] == pytest.approx(1 / 3) and r["passed"] is False and r["status"] == "wrong_answer"


def test_problem_without_tests_is_reported_not_passed(sandbox):
    problems = pa.table({"id": ["p"], "task": ["apps"], "prompt": ["x"], "solution": [""], "answer": [None],
                         "tests": pa.array([None], pa.string()), "starter_code": pa.array([None], pa.string())})
    [r] = grade_completions(problems, [{"id": "p", "sample": 0, "completion": "print(1)"}], sandbox=sandbox)
    assert r["status"] == "no_tests" and r["passed"] is False and r["score"] == 0.0


@pytest.mark.parametrize(
    "text,code",
    [
        ("```python\nprint(1)\n```", "print(1)\n"),
        ("a\n```\nx=1\n```\nthen\n```py\nprint(2)\n```\n", "print(2)\n"),
        ("print(3)", "print(3)"),
        ("```python\nprint(4)\n", "print(4)\n"),  # cut off before the closing fence
        ("", ""),
    ],
)
def test_extract_code(text, code):
    assert vapps.extract_code(text) == code


@pytest.mark.parametrize(
    "out,expected,ok",
    [
        ("3\n", "3\n", True),
        ("3", "3\n", True),
        ("1 2\n3\n", "1 2\n3", True),
        ("1  2 \n\n3\n", "1 2\n3\n", True),
        ("1\n2\n", ["1", "2"], True),
        ("2.5000001\n", "2.500000000\n", True),
        ("2.51\n", "2.500000000\n", False),
        ("1000001\n", "1000000\n", False),  # integers are exact
        ("3.0\n", "3\n", False),
        ("YES\n", "yes\n", False),
        ("1 2\n", "1 2 3\n", False),
        ("nan\n", "0.5\n", False),
        ("", "0\n", False),
    ],
)
def test_compare_stdout(out, expected, ok):
    assert vapps.compare_stdout(out, expected) is ok


@pytest.mark.parametrize(
    "got,expected,ok",
    [
        (3, [3], True),
        ([0, 1], [[0, 1]], True),
        ([0, 1], [0, 1], True),
        (0, [0, 1], False),  # the APPS harness's `output == expected[0]` would pass this
        (True, [True], True),
        (1, [True], False),
        ("3", [3], False),
        (3.1415926535, [3.141592653589793], True),
        (3.14, [3.141592653589793], False),
        ({"a": 1}, [{"a": 1}], True),
        (None, [None], True),
    ],
)
def test_compare_call(got, expected, ok):
    assert vapps.compare_call(got, expected) is ok


def test_pass_at_k_matches_enumeration():
    for n, c, k in [(5, 0, 1), (5, 2, 1), (5, 2, 3), (6, 6, 2), (10, 3, 5), (4, 1, 4)]:
        subsets = list(itertools.combinations([True] * c + [False] * (n - c), k))
        brute = sum(any(s) for s in subsets) / len(subsets)
        assert pass_at_k(n, c, k) == pytest.approx(brute)
    assert pass_at_k(200, 10, 1) == pytest.approx(10 / 200)
    assert 0.0 < pass_at_k(1000, 1, 100) < 1.0 and math.isfinite(pass_at_k(1000, 1, 100))
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 5)
    rows = [{"id": "a", "passed": True}, {"id": "a", "passed": False}, {"id": "b", "passed": False},
            {"id": "b", "passed": False}]
    assert mean_pass_at_k(rows, 1) == pytest.approx(0.25)


def test_cli_grade_end_to_end(tmp_path, apps_problems, capsys):
    math_rows = [
        {"id": "m1", "task": "math", "prompt": "1+1?", "solution": "\\boxed{2}", "answer": "2", "meta": "{}"},
        {"id": "m2", "task": "math", "prompt": "half?", "solution": "\\boxed{\\frac12}", "answer": "\\frac{1}{2}",
         "meta": "{}"},
    ]
    problems = pa.concat_tables([apps_problems, pa.Table.from_pylist(math_rows, schema=apps_problems.schema)])
    storage.write_table(problems, tmp_path / "problems.parquet")
    comps = [
        {"id": "apps-4001", "sample": 0, "completion": "```python\na,b=map(int,input().split())\nprint(a+b)\n```"},
        {"id": "apps-4001", "sample": 1, "completion": "print(0)"},
        {"id": "m1", "sample": 0, "completion": "So $1+1=\\boxed{2}$."},
        {"id": "m2", "sample": 0, "completion": "The final answer is 0.5."},
        {"id": "m2", "sample": 1, "completion": "I don't know."},
    ]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(c) + "\n" for c in comps))
    out = tmp_path / "results.parquet"
    level = grading_sandbox(workers=1).level  # bwrap where installed; weak levels must be asked for
    weak_ok = [] if level == "bwrap" else ["--allow-weak-isolation"]
    rc = cli.main(["grade", "--problems", str(tmp_path / "problems.parquet"), "--completions",
                   str(tmp_path / "c.jsonl"), "--out", str(out), "--timeout", "2", "--workers", "2", *weak_ok])
    assert rc == 0
    res = storage.read_table(out).to_pylist()
    assert [(r["id"], r["sample"], r["status"], r["passed"]) for r in res] == [
        ("apps-4001", 0, "ok", True), ("apps-4001", 1, "wrong_answer", False),
        ("m1", 0, "ok", True), ("m2", 0, "ok", True), ("m2", 1, "no_answer", False)]
    assert res[0]["tests"] == ["ok", "ok", "ok"] and res[3]["answer"] == "0.5"

    # bad input: one line naming the file, row and field; no output written
    (tmp_path / "bad.jsonl").write_text(json.dumps(comps[0]) + "\n" + json.dumps({"id": "nope", "completion": "x"}) + "\n")
    rc = cli.main(["grade", "--problems", str(tmp_path / "problems.parquet"), "--completions",
                   str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "r2.parquet")])
    assert rc == 1
    err = capsys.readouterr().err
    assert "bad.jsonl, row 2, field 'id'" in err and not (tmp_path / "r2.parquet").exists()

    # the isolation level the programs ran at is recorded per row; MATH runs none
    assert [r["isolation"] for r in res] == [level, level, None, None, None]

    # refusing weak isolation is about programs: MATH completions alone need no sandbox,
    # even from a table that holds APPS rows; an APPS completion is refused by default
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(c) + "\n" for c in comps[2:]))
    weak = ["--isolation", "none"]
    rc = cli.main(["grade", "--problems", str(tmp_path / "problems.parquet"), "--completions",
                   str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "m.parquet"), *weak])
    assert rc == 0 and storage.read_table(tmp_path / "m.parquet").num_rows == 3
    rc = cli.main(["grade", "--problems", str(tmp_path / "problems.parquet"), "--completions",
                   str(tmp_path / "c.jsonl"), "--out", str(tmp_path / "a.parquet"), *weak])
    assert rc == 1 and not (tmp_path / "a.parquet").exists()
    assert "--allow-weak-isolation" in capsys.readouterr().err


def test_no_row_is_lost_on_odd_completions(apps_problems, sandbox):
    odd = ["", "\x00print(3)", "print('\ud800')", "```python\n" + "x = 1\n" * 20000 + "print(3)\n```",
           "```\n```", "import sys; sys.stdout.buffer.write(b'\\xff\\xfe')", "def (", "🙂" * 1000]
    comps = [{"id": "apps-4001", "sample": i, "completion": c} for i, c in enumerate(odd)]
    res = grade_completions(apps_problems, comps, timeout=2.0, workers=2, sandbox=sandbox)
    assert [r["sample"] for r in res] == list(range(len(odd)))
    # graded, not crashed: sandbox_error is also what a grader failure leaves
    assert all(r["passed"] is False and r["status"] in vapps.FAIL_STATUSES and r["status"] != "sandbox_error"
               for r in res), res
    assert res[1]["status"] == "compile_error" and res[6]["status"] == "compile_error"


def _problem(tests: dict, pid: str = "p") -> pa.Table:
    return pa.table({"id": [pid], "task": ["apps"], "prompt": ["x"], "solution": [""], "answer": [None],
                     "tests": [json.dumps(tests)], "starter_code": pa.array([None], pa.string())})


def test_grading_stops_at_the_first_failure_and_keeps_to_its_budget(sandbox):
    """Before: a wrong program sleeping on each of 30 tests ran all 30 (55.7 s with
    --timeout 2): no overall limit, no early stop."""
    problems = _problem({"inputs": [f"{i}\n" for i in range(10)], "outputs": ["-1\n"] * 10})
    comp = [{"id": "p", "sample": 0, "completion": "import time\ntime.sleep(0.5)\nprint(0)\n"}]
    [r] = grade_completions(problems, comp, sandbox=sandbox, limits=Limits(timeout=2.0))
    assert r["tests"] == ["wrong_answer"] + ["not_run"] * 9 and r["status"] == "wrong_answer"
    # every verdict asked for: each run gets what is left of the budget, the rest time out
    # although no single run reached the 2 s per-test limit
    [r] = grade_completions(problems, comp, sandbox=sandbox, limits=Limits(timeout=2.0), budget=1.2, all_tests=True)
    k = r["tests"].index("timeout")
    assert 1 <= k < 10 and r["tests"] == ["wrong_answer"] * k + ["timeout"] * (10 - k), r["tests"]


def test_an_answer_too_deep_to_parse_is_the_programs_fault(sandbox):
    """Before: 200,000 nested brackets on the answer channel raised RecursionError in the
    grader, reported as sandbox_error (the grader's fault)."""
    problems = _problem({"fn_name": "f", "inputs": [[1]], "outputs": [[1]]})
    forge = ("import os\ndef f(x):\n    for fd in range(3, 20):\n        try:\n"
             "            os.write(fd, b'[' * 200000 + b']' * 200000)\n        except OSError:\n            pass\n"
             "    os._exit(0)\n")
    [r] = grade_completions(problems, [{"id": "p", "sample": 0, "completion": forge}], sandbox=sandbox)
    assert r["status"] == "wrong_answer" and r["passed"] is False


@pytest.mark.parametrize("option,value", [("--timeout", "0"), ("--timeout", "-1"), ("--timeout", "nan"),
                                          ("--timeout", "inf"), ("--memory-mb", "1"), ("--budget", "0")])
def test_limits_no_program_can_meet_are_rejected_at_parse_time(option, value, capsys):
    """Before: accepted, and every correct program then "failed" with exit 0."""
    rc = cli.main(["grade", "--problems", "missing.parquet", "--completions", "missing.jsonl", "--out", "r.parquet",
                   option, value])
    assert rc == 2  # a usage error, before the (missing) inputs are even looked at
    assert f"{option}: must be" in capsys.readouterr().err
