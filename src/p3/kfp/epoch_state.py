"""The state of a training run that advances one epoch per pipeline run.

A recurring run of the per-epoch pipeline is "train P3 one epoch per night": each run reads
where the training run stands, does one epoch, and writes the next state. The state lives in
object storage (or a local folder) under ``<state_uri>/<training_run>/``::

    state/00000.json … state/0000k.json   one immutable file per epoch boundary (k = epochs done)
    epochs/0000k/<attempt>/...            what the run that did epoch k wrote (model, tables)

The current state is the highest-numbered file. Advancing from epoch k writes
``state/{k+1}.json`` with a create-only write: ``If-None-Match: *`` on S3 (a conditional
PUT; S3 answers 412 when the key exists) and a hard link on a local disk (``link`` fails when the
name exists). Two runs that both started from epoch k can both finish their work, but only the
first to commit advances the run; the other gets EpochConflict and its attempt folder is
never referenced. No state file is ever rewritten, so a reader never sees a half-written one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import uuid
from typing import Any

from p3 import storage

STATE_FORMAT = 1
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class EpochConflict(RuntimeError):
    """Another run already advanced this training run past the epoch this run did."""


class StateError(ValueError):
    """The stored state does not fit this run (other schedule length, other parameters, corrupt)."""


@dataclasses.dataclass(frozen=True)
class EpochState:
    """Where a training run stands between two epochs.

    Args:
        training_run: the run's name, the folder under the state URI.
        epochs: the schedule length E (the pacing schedule spans E epochs); fixed at epoch 0.
        epoch: epochs done so far, i.e. the index of the next epoch to run (E = finished).
        policy: URI of the model the next epoch starts from ("" = the base model).
        selection: URI of the last epoch's selection table ("" before epoch 0).
        difficulty: URI of the last epoch's difficulty table ("" before epoch 0).
        report: URI of the last epoch's report folder ("" before epoch 0).
        params_digest: digest of the run parameters the training run started with.
        history: one record per finished epoch (epoch, attempt, pipeline run, time).
    """

    training_run: str
    epochs: int
    epoch: int = 0
    policy: str = ""
    selection: str = ""
    difficulty: str = ""
    report: str = ""
    params_digest: str = ""
    history: tuple[dict, ...] = ()

    @property
    def done(self) -> bool:
        return self.epoch >= self.epochs

    def to_json(self) -> bytes:
        d = dataclasses.asdict(self)
        d["history"] = list(self.history)
        return json.dumps({"format": STATE_FORMAT, **d}, indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> "EpochState":
        try:
            d = json.loads(raw)
            if d.pop("format") != STATE_FORMAT:
                raise StateError(f"{where}: state format {d.get('format')!r}, this code reads {STATE_FORMAT}")
            d["history"] = tuple(d.get("history", ()))
            return cls(**d)
        except (ValueError, KeyError, TypeError) as e:
            raise StateError(f"{where}: not a P3 epoch state ({e})") from None


def check_name(training_run: str) -> str:
    if not NAME_RE.fullmatch(training_run or ""):
        raise StateError(f"training_run {training_run!r}: use letters, digits, '.', '_' or '-' (at most 128)")
    return training_run


def run_root(state_uri: str, training_run: str) -> str:
    return f"{state_uri.rstrip('/')}/{check_name(training_run)}"


def state_path(root: str, epoch: int) -> str:
    return f"{root}/state/{epoch:05d}.json"


def attempt_dir(state_uri: str, state: EpochState, attempt: str) -> str:
    """Where the run that does ``state.epoch`` as ``attempt`` writes its outputs."""
    return f"{run_root(state_uri, state.training_run)}/epochs/{state.epoch:05d}/{attempt}"


def new_attempt() -> str:
    return uuid.uuid4().hex[:12]


def _stored_epochs(root: str) -> list[int]:
    fs, inner = storage.filesystem(f"{root}/state")
    fs.invalidate_cache(inner)  # s3fs keeps listings per process: another run may have advanced since
    if not fs.exists(inner):
        return []
    names = [os.path.basename(p) for p in fs.ls(inner, detail=False)]
    return sorted(int(n[:-5]) for n in names if re.fullmatch(r"\d{5}\.json", n))


def read(state_uri: str, training_run: str, epochs: int, params_digest: str = "") -> EpochState:
    """The current state (epoch 0 when the training run is new); StateError when it does not fit."""
    if epochs < 1:
        raise StateError(f"epochs {epochs}: a training run needs at least 1 epoch")
    root = run_root(state_uri, training_run)
    stored = _stored_epochs(root)
    if not stored:
        return EpochState(training_run=training_run, epochs=epochs, params_digest=params_digest)
    path = state_path(root, stored[-1])
    with storage.open_file(path) as fh:
        state = EpochState.from_json(fh.read(), path)
    if state.training_run != training_run or state.epoch != stored[-1]:
        raise StateError(f"{path}: holds training run {state.training_run!r} at epoch {state.epoch}")
    if state.epochs != epochs:
        raise StateError(f"training run {training_run!r} was started with epochs={state.epochs}, not {epochs} "
                         f"(the pacing schedule spans the whole run); use another training_run name")
    if params_digest and state.params_digest and state.params_digest != params_digest:
        raise StateError(f"training run {training_run!r} was started with other run parameters "
                         f"(digest {state.params_digest[:12]} != {params_digest[:12]}); use another training_run name")
    return state


def commit(state_uri: str, prev: EpochState, *, attempt: str, run_id: str = "", **outputs: str) -> EpochState:
    """Write the state after ``prev.epoch`` (create-only); EpochConflict when another run was first."""
    if prev.done:
        raise StateError(f"training run {prev.training_run!r} is finished ({prev.epochs} epochs)")
    unknown = set(outputs) - {"policy", "selection", "difficulty", "report"}
    if unknown:
        raise TypeError(f"commit() got unknown outputs {sorted(unknown)}")
    record = {"epoch": prev.epoch, "attempt": attempt, "run_id": run_id, "finished_at": _utc_now()}
    new = dataclasses.replace(prev, epoch=prev.epoch + 1, history=(*prev.history, record), **outputs)
    path = state_path(run_root(state_uri, prev.training_run), new.epoch)
    try:
        _create_only(path, new.to_json())
    except FileExistsError:
        raise EpochConflict(f"epoch {prev.epoch} of training run {prev.training_run!r} was already done by "
                            f"another run ({path} exists); this run's outputs are discarded") from None
    return new


def _create_only(path: str, data: bytes) -> None:
    """Write ``path`` only when it does not exist, atomically; FileExistsError otherwise."""
    if storage.is_remote(path):
        fs, inner = storage.filesystem(path)
        try:
            fs.pipe_file(inner, data, mode="create")  # S3: PutObject If-None-Match: *
        except FileExistsError:
            raise
        except OSError as e:
            if "PreconditionFailed" in str(e) or "412" in str(e):
                raise FileExistsError(path) from None
            raise
        return
    path = path.removeprefix("file://")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.link(tmp, path)  # complete file or nothing; fails when the name exists
    finally:
        os.unlink(tmp)


def _utc_now() -> str:
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def params_digest(params: dict[str, Any]) -> str:
    """A digest of run parameters (sorted JSON) to tie a training run to the settings it started with."""
    import hashlib

    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()
