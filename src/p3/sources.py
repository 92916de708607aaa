"""``p3 data prepare``: convert MATH / APPS sources to the problems contract.

``prepare`` reads a source in the dataset's own raw schema (a local or ``s3://``
.jsonl/.json/.parquet file, or a Hugging Face dataset name or folder) and writes the
problems table of docs/design.md §3.

Bad input stops with a :class:`~p3.contracts.ContractError` naming the file, the row
(the 1-based line number for JSONL, the 1-based record otherwise) and the field; with
``skip_invalid`` such rows are dropped and counted instead. Outputs are written with
:func:`p3.storage.write_table`, so a failed run never leaves a partial file.
"""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from p3 import checks, storage
from p3.contracts import PROBLEMS, ContractError
from p3.logs import get_logger, step
from p3.problems import TASKS, check_problems, parse_tests
from p3.verify.answers import boxed_answer

log = get_logger("data")

HUB_PREFIX = "hf:"  # a source on the Hugging Face hub; anything else is a path that must exist
FILE_SUFFIXES = (".jsonl", ".json", ".parquet")


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
