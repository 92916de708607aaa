"""The problems table: how every step reads it, its checks beyond the schema, and the
APPS tests it carries (docs/design.md §3).

``load_problems`` is how every step reads a problems table; ``check_problems`` is the
per-row validation a writer runs before writing one; ``parse_tests`` parses and checks
an APPS ``input_output`` value (the grader uses it too).
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from p3 import contracts
from p3.contracts import PROBLEMS, ContractError

TASKS = ("math", "apps")


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
