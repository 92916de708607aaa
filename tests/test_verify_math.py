"""MATH answer extraction and equivalence: a regression table of (gold, pred, expected).

The comparison runs in the math-verify worker process, with a timeout, as in grading.
"""

import time

import pytest

from p3.verify import math as vm
from p3.verify.answers import extract_answer

# (gold, prediction, equivalent?)
TABLE = [
    # plain equal forms
    ("5", "5", True),
    ("5", "5.0", True),
    ("\\frac{1}{2}", "0.5", True),
    ("\\frac12", "\\dfrac{1}{2}", True),
    ("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2", True),
    ("x^2+1", "1+x^2", True),
    ("2\\sqrt{3}", "\\sqrt{12}", True),
    ("-3", "-3", True),
    ("5", "6", False),
    ("\\frac{1}{3}", "0.333", False),  # an approximation is not the exact answer
    ("\\frac{1}{3}", "\\frac{2}{6}", True),
    ("\\pi", "3.14", False),
    ("x+1", "x-1", False),
    # normalisation math-verify lacks or gets wrong
    ("3125", "3,\\!125", True),
    ("1000", "1,000", True),
    ("1000000", "1{,}000{,}000", True),
    ("12345", "12\\,345", True),
    ("5", "5\\text{ cm}", True),
    ("36", "36 \\text{ square units}", True),
    ("12", "12\\mbox{ inches}", True),
    ("6", "6 \\text{cm}^2", True),
    ("30", "30^\\circ", True),
    ("45^\\circ", "45", True),
    ("90", "90^{\\circ}", True),
    ("5", "\\$5", True),
    ("\\$2.50", "2.50", True),
    ("10\\%", "10", True),
    ("\\text{Tuesday}", "Tuesday", True),
    ("\\text{(C)}", "(C)", True),
    # several parts: tuples, intervals (bracket type), lists, sets
    ("(1,2)", "(1,2)", True),
    ("(1,2)", "(2,1)", False),
    ("(1,2)", "1,2", False),
    ("(3,-1)", "\\left(3,-1\\right)", True),
    ("(1,2,3)", "(1,2)", False),
    ("[1,2)", "[1,2]", False),
    ("[1,2)", "[1,2)", True),
    ("(-\\infty,3]", "(-\\infty,3)", False),
    ("(-\\infty,3]", "(-\\infty, 3]", True),
    ("(-\\infty,1)\\cup(2,\\infty)", "(-\\infty,1)\\cup(2,\\infty)", True),
    ("1,2", "2,1", True),
    ("1,2", "1", False),
    ("2", "1,2", False),
    ("1,2,3", "1,2,2", False),
    ("\\{1,2\\}", "\\{2,1\\}", True),
    ("1,2", "\\{1,2\\}", True),  # a list of solutions written as a set
    ("\\{1,2\\}", "(1,2)", False),
    ("-2, 5", "5, -2", True),
    # plus-minus: math-verify's known false positive
    ("\\pm 2", "2", False),
    ("2", "\\pm 2", False),
    ("\\pm 2", "\\pm 2", True),
    ("1\\pm\\sqrt{3}", "1+\\sqrt{3}", False),
    # numbers close in absolute terms but different: math-verify's known false positive
    ("\\frac{1}{2004!}", "\\frac{1}{2006!}", False),
    ("\\frac{1}{2004!}", "\\frac{1}{2004!}", True),
    ("10^{-20}", "2\\cdot 10^{-20}", False),
    # equations and junk
    ("2", "x=2", True),
    ("5", "", False),
    ("5", "hello", False),
]


@pytest.mark.parametrize("gold,pred,expected", TABLE, ids=[f"{g}|{p}" for g, p, _ in TABLE])
def test_regression_table(gold, pred, expected):
    assert vm.is_equivalent(gold, pred) is expected


@pytest.mark.parametrize(
    "text,answer",
    [
        ("so the area is $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
        ("first \\boxed{1} then \\boxed{\\{1,2\\}}", "\\{1,2\\}"),
        ("nested \\boxed{\\frac{a}{\\sqrt{b}}} end", "\\frac{a}{\\sqrt{b}}"),
        ("\\fbox{42}", "42"),
        ("The final answer is $7$. I hope it is correct.", "7"),
        ("Thus the final answer is 3\\sqrt{2}.\nDone", "3\\sqrt{2}"),
        ("no answer here", None),
        ("truncated \\boxed{\\frac{1}{2", None),
        ("", None),
    ],
)
def test_extract_answer(text, answer):
    assert extract_answer(text) == answer


def test_pathological_comparison_is_bounded():
    """A huge power tower must not hang grading: it ends within the timeout, as wrong."""
    start = time.monotonic()
    assert vm.is_equivalent("2", "10^{10^{10^{10^{10}}}}", timeout=3.0) is False
    assert time.monotonic() - start < 30
    assert vm.is_equivalent("\\frac{4}{2}", "2", timeout=10.0)  # the pool recovered (this needs a worker)


def test_split_parts():
    assert vm.split_parts("(1,2]") == ("(", "]", ["1", "2"])
    assert vm.split_parts("(1,2)\\cup(3,4)") == (None, None, ["(1,2)\\cup(3,4)"])
    assert vm.split_parts("1, (2,3)") == (None, None, ["1", "(2,3)"])


def test_worker_is_killed_at_the_timeout_and_restarted():
    pool = vm.MathPool(1)
    try:
        assert pool.equivalent("x^2+2x+1", "(x+1)^2", timeout=1e-4) is False  # killed mid-comparison
        assert pool._all[0].proc is None
        assert pool.equivalent("x^2+2x+1", "(x+1)^2", timeout=60) is True  # a fresh worker
    finally:
        pool.close()
