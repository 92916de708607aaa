"""comp-MATH: mini-MATH's format with levels that compose the skills of the levels below.

A benchmark can only see data selection work if some training problems teach the model
more than others. mini-MATH's 20 independent templates cannot show that; here every
level reuses the previous levels' steps and adds one new skill, so a model that has
mastered the low levels has a *frontier* (the next level: its new step is one short
skill on top of known ones) and problems *out of reach* (their new steps need a skill
the frontier has not taught yet). Levels (one operation per solution line, as in
mini-MATH; the last line holds ``\\boxed{answer}``):

1. ``a + b``                 one-digit sum                        ``7 + 5 = 12``
2. ``A + b``                 two-digit + one-digit (level 1 + carry) ``47 + 5 = 52``
3. ``A + B``                 tens first, then level 2              ``47 + 30 = 77``, ``77 + 5 = 82``
4. ``a * b + C``             a one-digit product, then level 3     ``6 * 7 = 42``, ``42 + 30 = 72``, …
5. ``a * b * c + D``         level 4's product, then a two-digit × one-digit product in one line
                             (``42 * 3 = 126``), then level 3

With a model warmed up on levels 1–3, level 4 is the frontier (one new, small skill: the
64 one-digit products) and level 5 is out of reach (its second product needs far more
than a fine-tuning budget teaches), though its first line is level 4's skill.

Prompts are worded eight ways, so the low levels have enough distinct problems and the
wording varies as real problems' does. The train/test partition is mini-MATH's: fixed
by the prompt alone (:func:`p3.minimath.mini_split`), so no test prompt is ever a training one.
"""

from __future__ import annotations

import random

import pyarrow as pa

from p3.minimath import distinct_problems, parse_levels

WORDINGS = ("What is {}?", "Compute {}.", "Find the value of {}.", "Evaluate {}.", "Calculate {}.", "Work out {}.",
            "Simplify {}.", "Determine {}.")
SOURCE = "comp-math"


def _tens_then_ones(a: int, b: int, lines: list[str]) -> int:
    """a + b for a two-digit b as two lines (tens, then ones: the level-3 skill)."""
    tens, ones = b - b % 10, b % 10
    lines.append(f"{a} + {tens} = {a + tens}")
    lines.append(f"{a + tens} + {ones} = {a + b}")
    return a + b


def _two_digit(rng: random.Random) -> int:
    """A two-digit number with non-zero tens and ones (so tens-then-ones is always two lines)."""
    return rng.randint(1, 9) * 10 + rng.randint(1, 9)


def expression_and_steps(level: int, rng: random.Random) -> tuple[str, list[str]]:
    """One problem of ``level``: the expression and its solution lines (unboxed)."""
    if level == 1:
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        return f"{a} + {b}", [f"{a} + {b} = {a + b}"]
    if level == 2:
        a, b = rng.randint(10, 98), rng.randint(1, 9)
        return f"{a} + {b}", [f"{a} + {b} = {a + b}"]
    lines: list[str] = []
    if level == 3:
        a, b = rng.randint(10, 89), _two_digit(rng)
        _tens_then_ones(a, b, lines)
        return f"{a} + {b}", lines
    if level == 4:
        a, b, c = rng.randint(2, 9), rng.randint(2, 9), _two_digit(rng)
        lines.append(f"{a} * {b} = {a * b}")
        _tens_then_ones(a * b, c, lines)
        return f"{a} * {b} + {c}", lines
    if level == 5:
        a, b, c, d = rng.randint(2, 9), rng.randint(2, 9), rng.randint(2, 9), _two_digit(rng)
        lines += [f"{a} * {b} = {a * b}", f"{a * b} * {c} = {a * b * c}"]
        _tens_then_ones(a * b * c, d, lines)
        return f"{a} * {b} * {c} + {d}", lines
    raise ValueError(f"comp-MATH levels are 1..5, got {level}")


def comp_problems(n: int, levels: "str | list[int]" = "1-5", seed: int = 0, split: str = "train",
                  shares: "list[float] | None" = None) -> pa.Table:
    """``n`` distinct comp-MATH problems of ``split`` over ``levels``; deterministic.

    ``shares`` (one per level, summing to any positive total) sets the level mix; the
    default is even. Same schema and solution layout as mini-MATH (docs/design.md §3), with
    meta ``{"level", "type": "Level L", "source": "comp-math", "split", "seed", "steps"}``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be train or test, got {split!r}")
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    levels = parse_levels(levels)
    shares = list(shares) if shares is not None else [1.0] * len(levels)
    if len(shares) != len(levels) or min(shares) < 0 or sum(shares) <= 0:
        raise ValueError(f"need one non-negative share per level ({len(levels)}), got {shares}")
    # largest-remainder quotas: exactly n problems, as close to the shares as integers allow
    exact = [n * s / sum(shares) for s in shares]
    quotas = [int(x) for x in exact]
    for i in sorted(range(len(levels)), key=lambda i: quotas[i] - exact[i])[: n - sum(quotas)]:
        quotas[i] += 1
    rng = random.Random(seed)

    def draw(level: int) -> tuple[str, list[str], str]:
        expr, steps = expression_and_steps(level, rng)
        return rng.choice(WORDINGS).format(expr), steps, f"Level {level}"

    return distinct_problems(zip(levels, quotas), draw, rng, split, seed, SOURCE, "comp-")
