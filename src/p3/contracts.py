"""The Parquet tables that pass between steps (docs/design.md §3), and their checks.

Every reader validates what it reads with :func:`validate` so that bad input stops
with one error naming the file, the row and the field, before any work is done.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterable

import pyarrow as pa

from p3 import storage


class ContractError(ValueError):
    """Bad input: names the file, the row (1-based) and the field."""

    def __init__(self, path: str, field: str, message: str, row: int | None = None):
        self.path, self.field, self.row = str(path), field, row
        where = f"{path}" + (f", row {row}" if row is not None else "") + f", field '{field}'"
        super().__init__(f"{where}: {message}")


PROBLEMS = pa.schema(
    [
        ("id", pa.string()),
        ("task", pa.string()),
        ("prompt", pa.string()),
        ("solution", pa.string()),
        ("answer", pa.string()),
        ("tests", pa.string()),
        ("starter_code", pa.string()),
        ("meta", pa.string()),
    ]
)

DIFFICULTY = pa.schema(
    [
        ("id", pa.string()),
        ("epoch", pa.int64()),
        ("difficulty", pa.float64()),
        ("likelihood", pa.float64()),
        ("pass_rate", pa.float64()),
        ("n_rollouts", pa.int64()),
    ]
)

SELECTION = pa.schema(
    [
        ("id", pa.string()),
        ("rank", pa.int64()),
        ("round", pa.int64()),
        ("difficulty", pa.float64()),
        ("epoch", pa.int64()),
    ]
)

ROLLOUTS = pa.schema(
    [
        ("id", pa.string()),
        ("sample", pa.int64()),
        ("completion", pa.string()),
        ("score", pa.float64()),
        ("status", pa.string()),
        ("isolation", pa.string()),  # APPS: the sandbox level the program ran at; MATH: null
    ]
)


def embeddings_schema(dim: int) -> pa.Schema:
    return pa.schema([("id", pa.string()), ("embedding", pa.list_(pa.float32(), dim))])


# Rows of an embeddings table converted at a time (25 MB at d=384).
EMBEDDING_BATCH_ROWS = 16384

# Columns that may be null; every other column of a contract must be present on every row.
NULLABLE = {"answer", "tests", "starter_code", "likelihood", "pass_rate", "isolation"}


def validate(table: pa.Table, schema: pa.Schema, path: str, unique_id: bool = True) -> pa.Table:
    """Check ``table`` against ``schema``; return it cast to the schema's types.

    Raises ContractError for a missing column, a null in a required field, an
    uncastable type, an empty id or a duplicate id.
    """
    for field in schema:
        if field.name not in table.column_names:
            raise ContractError(path, field.name, f"missing column (have: {', '.join(table.column_names)})")
    table = table.select(schema.names)
    try:
        table = table.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        bad = next((f.name for f in schema if not _castable(table.column(f.name), f.type)), "?")
        raise ContractError(path, bad, f"wrong type: {exc}") from None
    for field in schema:
        if field.name in NULLABLE:
            continue
        col = table.column(field.name)
        if col.null_count:
            row = _first_true(col.is_null())
            raise ContractError(path, field.name, "is null", row=row + 1)
    if unique_id and "id" in schema.names:
        ids = table.column("id").to_pylist()
        seen: dict[str, int] = {}
        for i, v in enumerate(ids):
            if v == "":
                raise ContractError(path, "id", "is empty", row=i + 1)
            if v in seen:
                raise ContractError(path, "id", f"duplicate id {v!r} (first at row {seen[v] + 1})", row=i + 1)
            seen[v] = i
    return table


def check_unit_interval(values: Iterable[float], path: str, field: str) -> None:
    """Every value finite and in [0, 1]."""
    for i, v in enumerate(values):
        if v is None or not math.isfinite(v) or v < 0.0 or v > 1.0:
            raise ContractError(path, field, f"must be in [0, 1], got {v!r}", row=i + 1)


def read(path: str, schema: pa.Schema, unique_id: bool = True) -> pa.Table:
    """Read and validate one contract table."""
    return validate(read_parquet(path), schema, path, unique_id=unique_id)


def read_parquet(path: str) -> pa.Table:
    """Read a Parquet table; a file that is not one (truncated, another format) is a
    ContractError naming it; a missing file or an unreachable store stays an OSError."""
    with _parquet_errors(path):
        return storage.read_table(path)


@contextlib.contextmanager
def _parquet_errors(path: str):
    try:
        yield
    except Exception as exc:  # pyarrow raises many kinds (some OSError) for a file that is not Parquet
        if isinstance(exc, (OSError, ContractError)) and not type(exc).__module__.startswith("pyarrow"):
            raise
        raise ContractError(path, "-", f"not a readable Parquet file: {exc}") from exc


def read_embeddings(path: str) -> tuple[list[str], "np.ndarray"]:  # noqa: F821
    """Read an embeddings table: ids and an (N, d) float32 matrix.

    The matrix is filled one record batch at a time, so reading never holds the Arrow
    table beside it (at N=1M, d=384 each is 1.5 GB).
    """
    import numpy as np
    import pyarrow.parquet as pq

    with storage.open_file(path, "rb") as fh, _parquet_errors(path):
        # a buffered stream decodes page by page: not even one row group is held whole
        reader = pq.ParquetFile(fh, buffer_size=1 << 20, pre_buffer=False)
        schema = reader.schema_arrow
        for name in ("id", "embedding"):
            if name not in schema.names:
                raise ContractError(path, name, "missing column")
        typ = schema.field("embedding").type
        if not pa.types.is_fixed_size_list(typ):
            raise ContractError(path, "embedding", f"must be a fixed-size list of float32, got {typ}")
        dim = typ.list_size
        matrix = np.empty((reader.metadata.num_rows, dim), dtype=np.float32)
        a = 0
        for batch in reader.iter_batches(batch_size=EMBEDDING_BATCH_ROWS, columns=["embedding"]):
            col = batch.column(0)
            if col.null_count:
                raise ContractError(path, "embedding", "is null", row=a + _first_true(col.is_null()) + 1)
            block = matrix[a : a + len(col)]
            block[:] = col.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
            bad = ~np.isfinite(block).all(axis=1)
            if bad.any():
                raise ContractError(path, "embedding", "contains NaN or inf", row=a + int(np.flatnonzero(bad)[0]) + 1)
            a += len(col)
        id_table = reader.read(columns=["id"])
    ids = validate(id_table, pa.schema([("id", pa.string())]), path).column("id").to_pylist()
    return ids, matrix


def _castable(col: pa.ChunkedArray, typ: pa.DataType) -> bool:
    try:
        col.cast(typ)
        return True
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False


def _first_true(mask: pa.ChunkedArray) -> int:
    return mask.to_pylist().index(True)
