"""Problem tables: convert MATH / APPS sources to the problems contract, and mini-MATH.

``prepare`` reads a source in the dataset's own raw schema (a local or ``s3://``
.jsonl/.json/.parquet file, or a Hugging Face dataset name or folder) and writes the
problems table of DESIGN.md §3. ``synth`` writes mini-MATH, a deterministic synthetic
MATH-style set small enough for a tiny model on a CPU. ``load_problems`` is how every
other step reads a problems table.

Bad input stops with a :class:`~p3.contracts.ContractError` naming the file, the row
(the 1-based line number for JSONL, the 1-based record otherwise) and the field; with
``skip_invalid`` such rows are dropped and counted instead. Outputs are written with
:func:`p3.storage.write_table`, so a failed run never leaves a partial file.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from p3 import checks, contracts, storage
from p3.contracts import PROBLEMS, ContractError
from p3.logs import get_logger, step
from p3.verify.answers import boxed_answer

log = get_logger("data")

TASKS = ("math", "apps")
HUB_PREFIX = "hf:"  # a source on the Hugging Face hub; anything else is a path that must exist
FILE_SUFFIXES = (".jsonl", ".json", ".parquet")


# --------------------------------------------------------------------------- reading tables


def check_problems(table: pa.Table, path: str) -> pa.Table:
    """Validate a problems table beyond its schema; return it cast to PROBLEMS.

    Schema, nulls and unique non-empty ids (contracts.validate), then per row: a known
    task, a non-empty prompt, meta a JSON object, MATH rows with an answer, APPS rows
    with parsable tests.
    """
    table = contracts.validate(table, PROBLEMS, path)
    cols = {name: table.column(name).to_pylist() for name in ("task", "prompt", "answer", "tests", "meta")}
    for i in range(table.num_rows):
        row = i + 1
        task = cols["task"][i]
        if task not in TASKS:
            raise ContractError(path, "task", f"must be one of {', '.join(TASKS)}, got {task!r}", row=row)
        if not cols["prompt"][i].strip():
            raise ContractError(path, "prompt", "is empty", row=row)
        try:
            meta = json.loads(cols["meta"][i])
        except ValueError as exc:
            raise ContractError(path, "meta", f"not valid JSON: {exc}", row=row) from None
        if not isinstance(meta, dict):
            raise ContractError(path, "meta", "must be a JSON object", row=row)
        if task == "math" and not (cols["answer"][i] or "").strip():
            raise ContractError(path, "answer", "a math problem needs an answer", row=row)
        if task == "apps":
            if cols["tests"][i] is None:
                raise ContractError(path, "tests", "an apps problem needs tests", row=row)
            try:
                parse_tests(cols["tests"][i])
            except ValueError as exc:
                raise ContractError(path, "tests", str(exc), row=row) from None
    return table


def load_problems(path: str) -> pa.Table:
    """Read and validate a problems table (local path or URI). Every step reads problems
    here, and every step needs at least one problem: an empty table is an error."""
    table = check_problems(contracts.read(str(path), PROBLEMS), str(path))
    if table.num_rows == 0:
        raise ContractError(str(path), "-", "the problems table has no rows")
    return table


def problem_meta(table: pa.Table) -> list[dict]:
    """The parsed ``meta`` JSON of every row, in row order."""
    return [json.loads(m) for m in table.column("meta").to_pylist()]


def meta_by_id(table: pa.Table) -> dict[str, dict]:
    """id -> parsed ``meta`` JSON, in row order."""
    return dict(zip(table.column("id").to_pylist(), problem_meta(table)))


def parse_tests(tests: Any) -> dict:
    """Parse and check an APPS ``input_output`` value (JSON string or dict).

    Must hold lists ``inputs`` and ``outputs`` of equal, non-zero length; ``fn_name``
    (call-based problems) is optional and must then be a non-empty string.
    """
    if isinstance(tests, str):
        try:
            tests = json.loads(tests)
        except ValueError as exc:
            raise ValueError(f"not valid JSON: {exc}") from None
    if not isinstance(tests, dict):
        raise ValueError("must be a JSON object with 'inputs' and 'outputs'")
    inputs, outputs = tests.get("inputs"), tests.get("outputs")
    if not isinstance(inputs, list) or not isinstance(outputs, list):
        raise ValueError("needs lists 'inputs' and 'outputs'")
    if len(inputs) != len(outputs):
        raise ValueError(f"{len(inputs)} inputs but {len(outputs)} outputs")
    if not inputs:
        raise ValueError("has no test cases")
    fn_name = tests.get("fn_name")
    if fn_name is not None and (not isinstance(fn_name, str) or not fn_name):
        raise ValueError("'fn_name' must be a non-empty string")
    return tests


# --------------------------------------------------------------------------- prepare


@dataclass
class PrepareConfig:
    """Options of ``p3 data prepare``."""

    task: str = field(metadata={"help": "which dataset schema the source has", "choices": list(TASKS)})
    source: str = field(
        metadata={"io": "in", "help": "a .jsonl/.json/.parquet file (local or s3://) in the dataset's raw schema, "
                  "hf:NAME for a Hugging Face hub dataset, or a local dataset folder"}
    )
    out: str = field(metadata={"io": "out", "help": "output problems table (.parquet, local or s3://)"})
    split: str = field(default="train", metadata={"help": "split to load from a HF dataset; also part of MATH ids"})
    limit: Optional[int] = field(default=None, metadata={"min": 1, "help": "keep a seeded random sample of this many rows"})
    seed: int = field(default=0, metadata={"min": 0, "help": "seed of the --limit sample"})
    skip_invalid: bool = field(default=False, metadata={"help": "drop bad rows (and count them) instead of stopping"})
    hf_config: Optional[str] = field(
        default=None, metadata={"help": "HF dataset config name(s), comma-separated to concatenate several"}
    )

    def __post_init__(self) -> None:
        checks.validate(self)


Record = tuple[int, "dict | ContractError"]  # (1-based row / line number in the source, raw row)


def prepare(cfg: PrepareConfig) -> pa.Table:
    """Convert ``cfg.source`` to a problems table, write it atomically to ``cfg.out``, return it."""
    checks.validate(cfg)  # again: a config may have been changed since it was made
    convert = convert_math_row if cfg.task == "math" else convert_apps_row
    with step(log, f"prepare {cfg.task}") as counts:
        rows: list[dict] = []
        seen: dict[str, int] = {}
        skipped = 0
        for row, raw in read_source(cfg.source, cfg.split, cfg.hf_config):
            try:
                if isinstance(raw, ContractError):
                    raise raw
                problem = convert(raw, row, cfg)
                if problem["id"] in seen:
                    raise ContractError(
                        cfg.source, "id", f"duplicate id {problem['id']!r} (first at row {seen[problem['id']]})", row
                    )
            except ContractError as exc:
                if not cfg.skip_invalid:
                    raise
                skipped += 1
                if skipped <= 5:
                    log.warning(f"skipped: {exc}")
                continue
            seen[problem["id"]] = row
            rows.append(problem)
        if not rows:
            raise ValueError(f"{cfg.source}: no valid {cfg.task} rows" + (f" ({skipped} skipped)" if skipped else ""))
        if cfg.limit is not None and cfg.limit < len(rows):
            keep = sorted(random.Random(cfg.seed).sample(range(len(rows)), cfg.limit))
            rows = [rows[i] for i in keep]
        table = check_problems(pa.Table.from_pylist(rows, schema=PROBLEMS), cfg.out)
        storage.write_table(table, cfg.out)
        counts.update(rows=table.num_rows, skipped=skipped, out=cfg.out)
    if skipped:
        log.warning(f"skipped {skipped} invalid row(s) of {cfg.source}")
    return table


def read_source(source: str, split: str, hf_config: Optional[str] = None) -> Iterator[Record]:
    """Raw rows of ``source`` with their 1-based row numbers (JSONL: line numbers).

    A JSONL line that is not a JSON object comes as a ContractError in place of the row,
    so that the caller decides whether it stops the run or is skipped.
    """
    source = str(source)
    lower = source.lower()
    if source.startswith(HUB_PREFIX):  # the only way to reach the hub: said, never guessed
        return _read_hf(source[len(HUB_PREFIX):], split, hf_config)
    if not storage.is_remote(source) and not os.path.exists(source.removeprefix("file://")):
        raise FileNotFoundError(f"{source}: no such file or folder (a Hugging Face dataset is {HUB_PREFIX}NAME)")
    if storage.is_remote(source) or lower.endswith(FILE_SUFFIXES):
        if lower.endswith(".jsonl"):
            return _read_jsonl(source)
        if lower.endswith(".json"):
            return _read_json(source)
        if lower.endswith(".parquet"):
            return _read_parquet(source)
        raise ValueError(f"{source}: unknown file type (expected .jsonl, .json or .parquet)")
    return _read_hf(source, split, hf_config)


def _read_jsonl(path: str) -> Iterator[Record]:
    with storage.open_file(path, "rb") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except ValueError as exc:
                raw = ContractError(path, "-", f"not valid JSON: {exc}", row=lineno)
            if not isinstance(raw, (dict, ContractError)):
                raw = ContractError(path, "-", "not a JSON object", row=lineno)
            yield lineno, raw


def _read_json(path: str) -> Iterator[Record]:
    with storage.open_file(path, "rb") as fh:
        try:
            data = json.loads(fh.read())
        except ValueError as exc:
            raise ContractError(path, "-", f"not valid JSON: {exc}") from None
    if not isinstance(data, list):
        raise ContractError(path, "-", "a .json source must hold a list of objects (one per problem)")
    for i, raw in enumerate(data, start=1):
        if not isinstance(raw, dict):
            raise ContractError(path, "-", "not a JSON object", row=i)
        yield i, raw


def _read_parquet(path: str) -> Iterator[Record]:
    with storage.open_file(path, "rb") as fh:
        try:
            table = pq.read_table(fh)
        except Exception as exc:  # pyarrow raises many kinds for a file that is not Parquet
            raise ContractError(path, "-", f"not a readable Parquet file: {exc}") from None
    yield from enumerate(table.to_pylist(), start=1)


def _read_hf(name: str, split: str, hf_config: Optional[str]) -> Iterator[Record]:
    """A HF dataset by hub name (``hf:NAME``), a ``save_to_disk`` folder, or a folder of data files."""
    import datasets

    configs = [c.strip() for c in hf_config.split(",")] if hf_config else [None]
    parts = []
    for config in configs:
        try:
            if os.path.isdir(name) and _is_saved_dataset(name):
                ds = datasets.load_from_disk(name)
                if isinstance(ds, datasets.DatasetDict):
                    if split not in ds:
                        raise ValueError(f"no split {split!r} (have: {', '.join(ds)})")
                    ds = ds[split]
            else:
                ds = datasets.load_dataset(name, config, split=split)
        except Exception as exc:  # datasets raises many kinds: not found, offline, bad config …
            what = f"split {split!r}" + (f", config {config!r}" if config else "")
            raise ValueError(
                f"{name}: not a .jsonl/.json/.parquet file and not loadable as a Hugging Face dataset ({what}): "
                f"{type(exc).__name__}: {exc}"
            ) from None
        parts.append(ds)
    offset = 0
    for ds in parts:
        for i, raw in enumerate(ds, start=offset + 1):
            yield i, raw
        offset += len(ds)


def _is_saved_dataset(path: str) -> bool:
    return any(os.path.exists(os.path.join(path, f)) for f in ("dataset_dict.json", "state.json"))


def _require_text(raw: dict, key: str, source: str, row: int, allow_empty: bool = False) -> str:
    if key not in raw or raw[key] is None:
        raise ContractError(source, key, "missing", row=row)
    value = raw[key]
    if not isinstance(value, str):
        raise ContractError(source, key, f"must be a string, got {type(value).__name__}", row=row)
    if not allow_empty and not value.strip():
        raise ContractError(source, key, "is empty", row=row)
    return value


def parse_level(value: Any) -> Optional[int]:
    """MATH's ``"Level 3"`` (or 3) -> 3; ``"Level ?"`` and None -> None (a few MATH rows have it)."""
    if value is None or value == "Level ?":
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 5:
        return value
    m = re.fullmatch(r"\s*(?:Level\s*)?([1-5])\s*", str(value))
    if not m:
        raise ValueError(f"must be 'Level 1' … 'Level 5', got {value!r}")
    return int(m.group(1))


def convert_math_row(raw: dict, row: int, cfg: PrepareConfig) -> dict:
    """One MATH row (problem, level, type, solution) -> a problems row.

    The id is ``math-<split>-<n>`` with n the 0-based position in the source: stable
    across runs and samples of one source, unique, and free of any hashing of text.
    """
    prompt = _require_text(raw, "problem", cfg.source, row)
    solution = _require_text(raw, "solution", cfg.source, row)
    answer = boxed_answer(solution)
    if answer is None or not answer.strip():
        raise ContractError(cfg.source, "solution", "has no \\boxed{…} answer", row=row)
    try:
        level = parse_level(raw.get("level"))
    except ValueError as exc:
        raise ContractError(cfg.source, "level", str(exc), row=row) from None
    kind = raw.get("type")
    if kind is not None and not isinstance(kind, str):
        raise ContractError(cfg.source, "type", f"must be a string, got {type(kind).__name__}", row=row)
    meta = {"level": level, "type": kind, "source": cfg.source, "split": cfg.split, "index": row - 1}
    return {
        "id": f"math-{cfg.split}-{row - 1}",
        "task": "math",
        "prompt": prompt,
        "solution": solution,
        "answer": answer,
        "tests": None,
        "starter_code": None,
        "meta": json.dumps(meta),
    }


# APPS difficulty names -> a level, so that reports can group both tasks the same way.
APPS_LEVELS = {"introductory": 1, "interview": 2, "competition": 3}


def convert_apps_row(raw: dict, row: int, cfg: PrepareConfig) -> dict:
    """One APPS row -> a problems row (id ``apps-<problem_id>``, tests = input_output)."""
    src = cfg.source
    problem_id = raw.get("problem_id")
    if problem_id is None or str(problem_id).strip() == "":
        raise ContractError(src, "problem_id", "missing", row=row)
    prompt = _require_text(raw, "question", src, row)
    io = raw.get("input_output")
    if io is None or io == "":
        raise ContractError(src, "input_output", "missing (a problem without tests cannot be graded)", row=row)
    try:
        tests = parse_tests(io)
    except ValueError as exc:
        raise ContractError(src, "input_output", str(exc), row=row) from None
    solutions = raw.get("solutions")
    if isinstance(solutions, str):
        try:
            solutions = json.loads(solutions) if solutions.strip() else []
        except ValueError as exc:
            raise ContractError(src, "solutions", f"not valid JSON: {exc}", row=row) from None
    solutions = solutions or []
    if not isinstance(solutions, list) or not all(isinstance(s, str) for s in solutions):
        raise ContractError(src, "solutions", "must be a JSON list of strings", row=row)
    starter = raw.get("starter_code")
    if starter is not None and not isinstance(starter, str):
        raise ContractError(src, "starter_code", f"must be a string, got {type(starter).__name__}", row=row)
    difficulty = raw.get("difficulty")
    meta = {
        "level": APPS_LEVELS.get(difficulty),
        "type": "call-based" if tests.get("fn_name") else "standard-input",
        "source": src,
        "split": cfg.split,
        "difficulty": difficulty,
        "url": raw.get("url"),
        "fn_name": tests.get("fn_name"),
        "n_tests": len(tests["inputs"]),
        "n_solutions": len(solutions),
    }
    return {
        "id": f"apps-{problem_id}",
        "task": "apps",
        "prompt": prompt,
        "solution": solutions[0] if solutions else "",
        "answer": None,
        "tests": io if isinstance(io, str) else json.dumps(io),
        "starter_code": starter or None,
        "meta": json.dumps(meta),
    }


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
        a, b, c = rng.randint(2, 9), rng.randint(2, 9), rng.choice(TWO_DIGIT)
        lines.append(f"{a} * {b} = {a * b}")
        _add(a * b, c, lines)
        return f"What is {a} * {b} + {c}?", lines
    if level == 4:
        a, b, c, d = (rng.randint(2, 9) for _ in range(4))
        if c * d not in TWO_DIGIT:
            return None
        lines += [f"{a} * {b} = {a * b}", f"{c} * {d} = {c * d}"]
        _add(a * b, c * d, lines)
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
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    if level == 4:
        c = rng.randint(1, 9)
        s = a * b + c
        if not m <= s < 10 * m:
            return None
        lines += [f"{a} * {b} = {a * b}", f"{a * b} + {c} = {s}"]
        _mod(s, m, lines)
        return f"What is ({a} * {b} + {c}) mod {m}?", lines
    c, d = rng.randint(2, 9), rng.randint(2, 9)
    s = a * b + c * d
    if not m <= s < 10 * m:
        return None
    lines += [f"{a} * {b} = {a * b}", f"{c} * {d} = {c * d}"]
    _add(a * b, c * d, lines)
    _mod(s, m, lines)
    return f"What is ({a} * {b} + {c} * {d}) mod {m}?", lines


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
        a, b, c = rng.randint(2, 9), rng.randint(2, 9), rng.choice(TWO_DIGIT)
        lines.append(f"{a} * {b} = {a * b}")
        _add(a * b, c, lines)
        return f"{name} buys {a} bags of {b} pens and has {c} pens. How many pens?", lines
    a, b, c, d = (rng.randint(2, 9) for _ in range(4))
    if level == 4:
        if c * d not in TWO_DIGIT:
            return None
        lines += [f"{a} * {b} = {a * b}", f"{c} * {d} = {c * d}"]
        _add(a * b, c * d, lines)
        return f"{name} buys {a} boxes of {b} eggs and {c} boxes of {d}. How many eggs?", lines
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
    seen: set[str] = set()
    rows = []
    for level, quota in zip(levels, quotas):
        made, attempts = 0, 0
        while made < quota:
            attempts += 1
            if attempts > 200 * quota + 10_000:
                raise ValueError(
                    f"level {level}: found only {made} distinct {split} problems of {quota} wanted; lower --n"
                )
            kind = rng.choice(MINI_TYPES)
            made_problem = MINI_GENERATORS[kind](level, rng)
            if made_problem is None:
                continue
            prompt, steps = made_problem
            if prompt in seen or mini_split(prompt) != split:
                continue
            seen.add(prompt)
            steps, answer = _boxed_last(steps)
            meta = {"level": level, "type": kind, "source": "mini-math", "split": split, "seed": seed,
                    "steps": len(steps)}
            rows.append({
                "id": "mini-" + hashlib.sha1(prompt.encode()).hexdigest()[:12],
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
