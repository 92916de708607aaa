"""The few helpers the components share that are about artifacts, not about P3.

Splitting a problems table into shards and concatenating the per-shard results are
table plumbing for the pipeline's scale-out; which model a step uses (the previous
epoch's artifact or the base model by name) is pipeline wiring. Everything about P3
itself lives in the ``p3`` library.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Iterable

import pyarrow as pa

from p3 import storage


def model_ref(artifact: Any, base_model: str) -> str:
    """The model a step starts from: the input Model artifact's path, else ``base_model``."""
    if artifact is not None:
        return artifact.path
    if not base_model:
        raise ValueError("no model: connect a Model input or set base_model")
    return base_model


def checkpoint_settings(output_uri: str) -> dict[str, Any]:
    """Where training checkpoints go so that a retried pod resumes: a folder under
    ``$P3_CHECKPOINT_ROOT`` (the model-cache volume, set by a cluster build) named after
    the step's output URI, with ``resume`` on; nothing when the variable is unset.

    The URI is the same for every attempt of a task: KFP's driver resolves the executor
    input once and Argo's retryStrategy re-runs only the launcher pod with it
    (kubeflow/pipelines backend/src/v2/compiler/argocompiler/container.go).
    """
    root = os.environ.get("P3_CHECKPOINT_ROOT")
    if not root:
        return {}
    return {"checkpoint_dir": os.path.join(root, hashlib.sha256(output_uri.encode()).hexdigest()[:24]), "resume": True}


def empty_table_unless_written(path: str, schema: pa.Schema) -> None:
    """Write an empty ``schema`` table at ``path`` when the step wrote nothing there: an
    output artifact always exists (a cluster's launcher uploads every declared output)."""
    if not storage.exists(path):
        storage.write_table(schema.empty_table(), path)


def split_rows(src: str, index: int, count: int, out: str) -> int:
    """Write rows ``index, index+count, …`` of the table ``src`` to ``out``; return how many.

    Round-robin keeps every shard the same size and the same mix of difficulties, so
    shards take about as long as each other on their GPUs.
    """
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard {index} of {count} does not exist")
    table = storage.read_table(src)
    shard = table.take(pa.array(range(index, table.num_rows, count), type=pa.int64()))
    storage.write_table(shard, out)
    return shard.num_rows


def concat_tables(parts: Iterable[str], out: str, order_by: str | None = None) -> int:
    """Concatenate the tables ``parts`` into ``out``; optionally put rows in the order of
    the ids in the table ``order_by`` (so a sharded result equals the unsharded one)."""
    tables = [storage.read_table(p) for p in parts]
    if not tables:
        raise ValueError("nothing to merge")
    table = pa.concat_tables(tables, promote_options="default")
    if order_by:
        ids = storage.read_table(order_by).column("id").to_pylist()
        position = {pid: i for i, pid in enumerate(ids)}
        missing = [pid for pid in table.column("id").to_pylist() if pid not in position]
        if missing:
            raise ValueError(f"merged rows not in {order_by}: {missing[:3]}")
        rank = pa.array([position[pid] for pid in table.column("id").to_pylist()], type=pa.int64())
        table = table.take(pa.compute.sort_indices(rank))
    storage.write_table(table, out)
    return table.num_rows


def copy_tree(src: str, dst: str) -> None:
    """Copy a folder (local or URI) to ``dst``, replacing what is there."""
    with storage.local_dir(src) as local:
        storage.upload_dir(local, dst)


def config_argv(cfg: Any) -> list[str]:
    """The ``p3`` CLI options that rebuild the dataclass config ``cfg`` (see p3.cli).

    Used to launch a step under torchrun, which needs a command line, not a config.
    """
    from p3.configs import flat_values

    argv: list[str] = []
    for name, value in flat_values(cfg).items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + name.replace("_", "-"))
        elif value is None:
            continue
        elif isinstance(value, (list, tuple)):
            argv.append(flag)
            argv.extend(str(v) for v in value)
        else:
            argv.extend([flag, str(value)])
    return argv


def torchrun_command(cli_words: list[str], cfg: Any, gpus: int) -> list[str]:
    """``python -m torch.distributed.run --nproc-per-node N -m p3.cli <words> <options>``."""
    import sys

    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}",
            "-m", "p3.cli", *cli_words, *config_argv(cfg)]



def epoch_file_names() -> dict[str, str]:
    """The name each epoch input gets in a run folder (the names the report reads)."""
    from p3.rundata import EPOCH_FILES

    return {key: name for key, name in EPOCH_FILES.items() if key != "problems"}


def add_epoch(run_dir: str, epoch: int, files: dict[str, str], problems: str, previous_run: str | None) -> str:
    """Build the run folder the report renders: the previous epochs' folder (copied),
    plus ``epoch_<e>/`` with this epoch's files, plus ``problems.parquet``.

    The pipeline is unrolled at compile time, so the only way one step sees every
    epoch is that each epoch's report hands the folder on to the next.
    """
    if previous_run:
        copy_tree(previous_run, run_dir)
    epoch_dir = os.path.join(run_dir, f"epoch_{epoch}")
    os.makedirs(epoch_dir, exist_ok=True)
    names = epoch_file_names()
    for key, src in files.items():
        if src:
            storage.copy_file(src, os.path.join(epoch_dir, names[key]))
    if not os.path.exists(os.path.join(run_dir, "problems.parquet")):
        storage.copy_file(problems, os.path.join(run_dir, "problems.parquet"))
    return epoch_dir
