"""``p3 data synth``: mini-MATH, a deterministic synthetic MATH-style problems table
small enough for a tiny model on a CPU (docs/design.md §4).
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from typing import Callable, Optional

import pyarrow as pa

from p3 import checks, storage
from p3.contracts import PROBLEMS
from p3.logs import get_logger, step
from p3.problems import check_problems

log = get_logger("data")


# --------------------------------------------------------------------------- mini-MATH
#
# A level is a number of short steps: level L takes about L lines (L5: 4–6), and the
# numbers grow from one digit to two-digit products. Each line is one easy operation
# ("47 + 30 = 77", "6 * 7 = 42"): a two-digit addend is always added as tens, then ones,
# so a tiny character-level model can learn every step and harder levels are harder
# because errors compound over more steps, as in the likelihood difficulty of P3.

MINI_TYPES = ("Arithmetic", "Algebra", "Number Theory", "Word Problems")
NAMES = ("Ann", "Ben", "Cara", "Dan", "Eve", "Finn", "Gia", "Hal")
TWO_DIGIT = [n for n in range(11, 100) if n % 10]  # tens and ones both non-zero: always two steps
ONE_DIGIT = range(1, 10)  # rng.choice(ONE_DIGIT) draws exactly what rng.randint(1, 9) draws


def _add(a: int, b: int, lines: list[str], op: str = "+") -> int:
    """a + b (or a - b with op="-"), a two-digit b as tens then ones (one line each)."""
    sign = 1 if op == "+" else -1
    tens, ones = b - b % 10, b % 10
    if tens and ones:
        lines.append(f"{a} {op} {tens} = {a + sign * tens}")
        lines.append(f"{a + sign * tens} {op} {ones} = {a + sign * b}")
    else:
        lines.append(f"{a} {op} {b} = {a + sign * b}")
    return a + sign * b


def _mod(s: int, m: int, lines: list[str]) -> int:
    """s mod m as the largest multiple of m (at most 9 m) and a subtraction."""
    q = s // m
    lines.append(f"{m} * {q} = {m * q}")
    lines.append(f"{s} - {m * q} = {s - m * q}")
    return s - m * q


def _product_plus(rng: random.Random, lines: list[str], addends=TWO_DIGIT) -> tuple[int, int, int]:
    """Draw a, b in 2..9 and c from ``addends``; solve a * b + c: the product, then the sum."""
    a, b, c = rng.randint(2, 9), rng.randint(2, 9), rng.choice(addends)
    lines.append(f"{a} * {b} = {a * b}")
    _add(a * b, c, lines)
    return a, b, c


def _sum_of_products(rng: random.Random, lines: list[str]) -> tuple[int, int, int, int]:
    """Draw a, b, c, d in 2..9; solve a * b + c * d: both products, then their sum."""
    a, b, c, d = (rng.randint(2, 9) for _ in range(4))
    lines += [f"{a} * {b} = {a * b}", f"{c} * {d} = {c * d}"]
    _add(a * b, c * d, lines)
    return a, b, c, d


def _arithmetic(level: int, rng: random.Random) -> Optional[tuple[str, list[str]]]:
    lines: list[str] = []
    if level == 1:
        a, b, op = rng.randint(0, 9), rng.randint(0, 9), rng.choice("+-")
        if op == "-" and a < b:
            a, b = b, a
        r = a + b if op == "+" else a - b
        return f"What is {a} {op} {b}?", [f"{a} {op} {b} = {r}"]
    if level == 2:
        a, b, op = rng.randint(10, 99), rng.choice(TWO_DIGIT), rng.choice("+-")
        if op == "-" and a < b:
            return None
        _add(a, b, lines, op)
        return f"What is {a} {op} {b}?", lines
    if level == 3:
        a, b, c = _product_plus(rng, lines)
        return f"What is {a} * {b} + {c}?", lines
    if level == 4:
        a, b, c, d = _sum_of_products(rng, lines)
        if c * d not in TWO_DIGIT:
            return None
        return f"What is {a} * {b} + {c} * {d}?", lines
    a, c, d = rng.choice(TWO_DIGIT), rng.randint(2, 9), rng.choice(TWO_DIGIT)
    tens, ones = a - a % 10, a % 10
    lines += [f"{tens} * {c} = {tens * c}", f"{ones} * {c} = {ones * c}", f"{tens * c} + {ones * c} = {a * c}"]
    _add(a * c, d, lines)
    return f"What is {a} * {c} + {d}?", lines


def _algebra(level: int, rng: random.Random) -> Optional[tuple[str, list[str]]]:
    lines: list[str] = []
    x = rng.randint(1, 9)
    if level == 1:
        a = rng.randint(1, 9)
        if rng.random() < 0.5:
            return f"Solve for x: x + {a} = {x + a}.", [f"x = {x + a} - {a} = {x}"]
        if x < a:
            return None
        return f"Solve for x: x - {a} = {x - a}.", [f"x = {x - a} + {a} = {x}"]
    a = rng.randint(2, 9)
    if level == 2:
        b = rng.randint(1, 9)
        lines += [f"{a}x = {a * x + b} - {b} = {a * x}", f"x = {a * x} / {a} = {x}"]
        return f"Solve for x: {a}x + {b} = {a * x + b}.", lines
    if level == 3:
        b = rng.choice(TWO_DIGIT)
        _add(a * x + b, b, lines, "-")
        lines.append(f"x = {a * x} / {a} = {x}")
        return f"Solve for x: {a}x + {b} = {a * x + b}.", lines
    if level == 4:
        a = rng.randint(3, 9)
        c, b = rng.randint(1, a - 1), rng.choice(TWO_DIGIT)
        k = a - c
        d = k * x + b
        lines.append(f"{a} - {c} = {k}")
        _add(d, b, lines, "-")
        lines.append(f"x = {k * x} / {k} = {x}")
        cx = "x" if c == 1 else f"{c}x"
        return f"Solve for x: {a}x + {b} = {cx} + {d}.", lines
    b, c = rng.randint(1, 9), rng.choice(TWO_DIGIT)
    d = a * (x + b) - c
    if d < 0:
        return None
    _add(d, c, lines)
    lines += [f"x + {b} = {a * (x + b)} / {a} = {x + b}", f"x = {x + b} - {b} = {x}"]
    return f"Solve for x: {a}(x + {b}) - {c} = {d}.", lines


def _number_theory(level: int, rng: random.Random) -> Optional[tuple[str, list[str]]]:
    lines: list[str] = []
    m = rng.randint(2, 9)
    if level == 1:
        a = rng.randint(10, 10 * m - 1)
        return f"What is {a} mod {m}?", [f"{a} = {a // m} * {m} + {a % m}"]
    if level == 2:
        a = rng.randint(10, 99)
        lines += [f"{a % 10} * {m} = {a % 10 * m}", f"{a % 10 * m} mod 10 = {a % 10 * m % 10}"]
        return f"What is the units digit of {a} * {m}?", lines
    if level == 3:
        a, b = rng.choice(TWO_DIGIT), rng.randint(1, 9)
        s = a + b
        if not m <= s < 10 * m:
            return None
        lines.append(f"{a} + {b} = {s}")
        _mod(s, m, lines)
        return f"What is ({a} + {b}) mod {m}?", lines
    if level == 4:
        a, b, c = _product_plus(rng, lines, ONE_DIGIT)
        s, expression = a * b + c, f"{a} * {b} + {c}"
    else:
        a, b, c, d = _sum_of_products(rng, lines)
        s, expression = a * b + c * d, f"{a} * {b} + {c} * {d}"
    if not m <= s < 10 * m:
        return None
    _mod(s, m, lines)
    return f"What is ({expression}) mod {m}?", lines


def _word(level: int, rng: random.Random) -> Optional[tuple[str, list[str]]]:
    lines: list[str] = []
    name = rng.choice(NAMES)
    if level == 1:
        a, b = rng.randint(2, 9), rng.randint(1, 9)
        return f"{name} has {a} apples and gets {b} more. How many apples now?", [f"{a} + {b} = {a + b}"]
    if level == 2:
        a, b = rng.randint(20, 99), rng.choice(TWO_DIGIT)
        if a < b:
            return None
        _add(a, b, lines, "-")
        return f"{name} has {a} coins and spends {b}. How many are left?", lines
    if level == 3:
        a, b, c = _product_plus(rng, lines)
        return f"{name} buys {a} bags of {b} pens and has {c} pens. How many pens?", lines
    if level == 4:
        a, b, c, d = _sum_of_products(rng, lines)
        if c * d not in TWO_DIGIT:
            return None
        return f"{name} buys {a} boxes of {b} eggs and {c} boxes of {d}. How many eggs?", lines
    a, b, _, _ = (rng.randint(2, 9) for _ in range(4))  # two unused draws: a seed keeps making the same table
    have, gets = rng.choice(TWO_DIGIT), rng.choice(TWO_DIGIT)
    if have < a * b:
        return None
    lines.append(f"{a} * {b} = {a * b}")
    left = _add(have, a * b, lines, "-")
    _add(left, gets, lines)
    return f"{name} has {have} cards, sells {a} packs of {b}, then gets {gets}. How many now?", lines


MINI_GENERATORS: dict[str, Callable[[int, random.Random], Optional[tuple[str, list[str]]]]] = {
    "Arithmetic": _arithmetic,
    "Algebra": _algebra,
    "Number Theory": _number_theory,
    "Word Problems": _word,
}


def parse_levels(levels: "str | list[int]") -> list[int]:
    """``"1-5"``, ``"1,3,5"``, ``"2"`` or a list -> sorted distinct levels in 1..5."""
    if isinstance(levels, str):
        out: set[int] = set()
        for part in levels.replace(" ", "").split(","):
            lo, _, hi = part.partition("-")
            if not lo.isdigit() or (hi and not hi.isdigit()):
                raise ValueError(f"levels must look like 1-5 or 1,3,5, got {levels!r}")
            if not 1 <= int(lo) <= int(hi or lo) <= 5:  # before building the range (1-999999999)
                raise ValueError(f"levels must be within 1..5, got {levels!r}")
            out.update(range(int(lo), int(hi or lo) + 1))
        levels = sorted(out)
    if not levels or any(not 1 <= lv <= 5 for lv in levels):
        raise ValueError(f"levels must be within 1..5, got {levels!r}")
    return sorted(set(levels))


def mini_split(prompt: str) -> str:
    """The split a mini-MATH prompt belongs to, fixed by the prompt alone (1 in 5 is test).

    Train and test sets therefore never share a prompt, whatever seeds made them.
    """
    return "test" if int(hashlib.sha1(prompt.encode()).hexdigest()[:8], 16) % 5 == 0 else "train"


def _boxed_last(lines: list[str]) -> tuple[list[str], str]:
    """Box the value that ends the last line; return the lines and the answer."""
    head, _, answer = lines[-1].rpartition(" ")
    return lines[:-1] + [f"{head} \\boxed{{{answer}}}"], answer


def synth_problems(n: int, levels: "str | list[int]" = "1-5", seed: int = 0, split: str = "train") -> pa.Table:
    """``n`` distinct mini-MATH problems of ``split``, spread evenly over ``levels``; deterministic.

    MATH schema: prompt, a solution of one step per line whose last line holds
    ``\\boxed{answer}``, and meta with level, type and steps.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be train or test, got {split!r}")
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    levels = parse_levels(levels)
    rng = random.Random(seed)
    quotas = [n // len(levels) + (i < n % len(levels)) for i in range(len(levels))]

    def draw(level: int) -> Optional[tuple[str, list[str], str]]:
        kind = rng.choice(MINI_TYPES)
        made = MINI_GENERATORS[kind](level, rng)
        return None if made is None else (*made, kind)

    return distinct_problems(zip(levels, quotas), draw, rng, split, seed, "mini-math", "mini-")


def distinct_problems(quotas, draw: Callable, rng: random.Random, split: str, seed: int, source: str,
                      prefix: str) -> pa.Table:
    """A synthetic MATH-format table: ``quota`` distinct problems of ``split`` per level.

    ``draw(level)`` gives (prompt, solution lines, type) or None (no valid problem this
    try); the last line's final value is boxed as the answer. Rows are shuffled, so
    that any prefix of the table is a fair sample of its levels.
    """
    seen: set[str] = set()
    rows = []
    for level, quota in quotas:
        made, attempts = 0, 0
        while made < quota:
            attempts += 1
            if attempts > 200 * quota + 10_000:
                raise ValueError(
                    f"level {level}: found only {made} distinct {split} problems of {quota} wanted; lower --n"
                )
            drawn = draw(level)
            if drawn is None:
                continue
            prompt, steps, kind = drawn
            if prompt in seen or mini_split(prompt) != split:
                continue
            seen.add(prompt)
            steps, answer = _boxed_last(steps)
            meta = {"level": level, "type": kind, "source": source, "split": split, "seed": seed,
                    "steps": len(steps)}
            rows.append({
                "id": prefix + hashlib.sha1(prompt.encode()).hexdigest()[:12],
                "task": "math",
                "prompt": prompt,
                "solution": "\n".join(steps),
                "answer": answer,
                "tests": None,
                "starter_code": None,
                "meta": json.dumps(meta),
            })
            made += 1
    rng.shuffle(rows)  # levels interleaved, so that any prefix is a fair sample
    return pa.Table.from_pylist(rows, schema=PROBLEMS)


@dataclass
class SynthConfig:
    """Options of ``p3 data synth``."""

    out: str = field(metadata={"io": "out", "help": "output problems table (.parquet, local or s3://)"})
    n: int = field(default=500, metadata={"min": 1, "max": 1_000_000, "help": "number of problems (spread evenly over the levels)"})
    levels: str = field(default="1-5", metadata={"check": lambda v: parse_levels(v), "help": "levels to generate: a range 1-5 or a list 1,3,5"})
    seed: int = field(default=0, metadata={"min": 0, "help": "random seed (same seed, same table)"})
    split: str = field(
        default="train", metadata={"help": "which side of the fixed train/test partition", "choices": ["train", "test"]}
    )

    def __post_init__(self) -> None:
        checks.validate(self)


def synth(cfg: SynthConfig) -> pa.Table:
    """Write the mini-MATH table of ``cfg`` atomically to ``cfg.out`` and return it."""
    with step(log, "synth") as counts:
        table = check_problems(synth_problems(cfg.n, cfg.levels, cfg.seed, cfg.split), cfg.out)
        storage.write_table(table, cfg.out)
        counts.update(rows=table.num_rows, split=cfg.split, out=cfg.out)
    return table
