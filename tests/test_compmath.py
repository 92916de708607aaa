"""comp-MATH: levels that compose the levels below, in mini-MATH's format."""

import json
import random

import pytest

from p3 import prompts
from p3.compmath import comp_problems, expression_and_steps
from p3.minimath import mini_split
from p3.problems import check_problems
from p3.verify.answers import last_boxed


def _value(expr: str) -> int:
    a = expr.replace(" ", "")
    return int(eval(a, {"__builtins__": {}}))  # the expressions are digits, + and * only


@pytest.mark.parametrize("level", [1, 2, 3, 4, 5])
def test_every_line_is_true_and_the_answer_is_the_expression(level):
    rng = random.Random(level)
    for _ in range(200):
        expr, lines = expression_and_steps(level, rng)
        for line in lines:
            lhs, rhs = line.split(" = ")
            assert _value(lhs) == int(rhs), line
        assert int(lines[-1].split(" = ")[1]) == _value(expr)


def test_levels_compose_the_steps_of_the_levels_below():
    rng = random.Random(0)
    _, l3 = expression_and_steps(3, rng)
    _, l4 = expression_and_steps(4, rng)
    _, l5 = expression_and_steps(5, rng)
    assert len(l3) == 2 and all(" + " in s for s in l3)  # tens, then ones
    assert " * " in l4[0] and len(l4) == 3 and all(" + " in s for s in l4[1:])  # a product, then level 3
    assert " * " in l5[0] and " * " in l5[1] and l5[0].split(" = ")[1] == l5[1].split(" * ")[0]  # level 4's product reused
    assert all(" + " in s for s in l5[2:])


def test_table_is_deterministic_valid_split_and_follows_the_shares():
    t = comp_problems(200, "1-5", seed=3, split="test", shares=[1, 2, 2, 2, 2])
    assert t.equals(comp_problems(200, "1-5", seed=3, split="test", shares=[1, 2, 2, 2, 2]))
    check_problems(t, "comp")
    rows = t.to_pylist()
    levels = [json.loads(r["meta"])["level"] for r in rows]
    assert [levels.count(lv) for lv in range(1, 6)] == [22, 45, 45, 44, 44]  # largest remainder: exactly 200
    assert all(mini_split(r["prompt"]) == "test" for r in rows) and len({r["id"] for r in rows}) == 200
    for r in rows:
        assert last_boxed(r["solution"]) == r["answer"]
        assert prompts.solution_steps(r["solution"])[-1].endswith(f"\\boxed{{{r['answer']}}}")


def test_asking_for_more_distinct_problems_than_exist_is_a_clear_error():
    with pytest.raises(ValueError, match="level 1: found only"):
        comp_problems(2000, "1", split="test")
