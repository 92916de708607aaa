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

A training run is pinned to the run parameters it started with: epoch 0 records them (canonical
values and their digest) and every later run compares its own before doing any work; a run with
other values fails with one line naming each differing parameter (``old → new``). Which run
parameters define a training run is decided by the per-epoch pipeline (p3.kfp.per_epoch.PINNED).
States written before the pin (format 1) hold no parameters: reading one is a one-line StateError
(continue such a run with the release that wrote it, or start a new training_run name).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import uuid
from typing import Any

from p3 import storage

STATE_FORMAT = 2  # 2: the run parameters are pinned (params, params_digest); 1 did not record them
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
        params: the run parameters the training run started with (canonical values, see :func:`pin`).
        params_digest: sha256 of ``params`` (what a later run compares).
        history: one record per finished epoch (epoch, attempt, pipeline run, time).
    """

    training_run: str
    epochs: int
    epoch: int = 0
    policy: str = ""
    selection: str = ""
    difficulty: str = ""
    report: str = ""
    params: dict = dataclasses.field(default_factory=dict)
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
            version = d.pop("format")
            if version == 1:
                raise StateError(f"{where}: written before training runs pinned their run parameters (state format 1); "
                                 f"continue it with the P3 release that wrote it, or start a new training_run name")
            if version != STATE_FORMAT:
                raise StateError(f"{where}: state format {version!r}, this code reads {STATE_FORMAT}")
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


def read(state_uri: str, training_run: str, epochs: int, params: dict[str, Any] | None = None) -> EpochState:
    """The current state (epoch 0 when the training run is new); StateError when it does not fit.

    ``params``: the run parameters of this run (see :func:`pin`); a new training run records them,
    a stored one must have been started with the same. None: only read (no check, nothing recorded)."""
    if epochs < 1:
        raise StateError(f"epochs {epochs}: a training run needs at least 1 epoch")
    root = run_root(state_uri, training_run)
    pinned, digest = pin(params) if params is not None else ({}, "")
    stored = _stored_epochs(root)
    if not stored:
        return EpochState(training_run=training_run, epochs=epochs, params=pinned, params_digest=digest)
    path = state_path(root, stored[-1])
    with storage.open_file(path) as fh:
        state = EpochState.from_json(fh.read(), path)
    if state.training_run != training_run or state.epoch != stored[-1]:
        raise StateError(f"{path}: holds training run {state.training_run!r} at epoch {state.epoch}")
    if state.epochs != epochs:
        raise StateError(f"training run {training_run!r} was started with epochs={state.epochs}, not {epochs} "
                         f"(the pacing schedule spans the whole run); use another training_run name")
    if params is not None and state.params_digest != digest:
        raise StateError(f"training run {training_run!r} was started with other run parameters: "
                         f"{changes(state.params, pinned)}; run it with the values it started with, "
                         f"or start another training_run name")
    return state


def pin(params: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The canonical form of run parameters and its sha256.

    A number is kept as an int when it is integral (45.0 -> 45): the KFP backend hands every number
    to a component as a JSON number (a protobuf double), so one run may see 45 where another saw 45.0."""
    canon = {name: _canonical(name, value) for name, value in sorted(params.items())}
    return canon, hashlib.sha256(json.dumps(canon, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _canonical(name: str, value: Any) -> Any:
    if isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)):
        return int(value) if float(value).is_integer() else float(value)
    raise StateError(f"run parameter {name}: {value!r} is not a str, number or bool")


def changes(old: dict[str, Any], new: dict[str, Any]) -> str:
    """``name old → new`` for each parameter that differs (``(none)`` where one side lacks it)."""
    if not old:
        return "the stored state records none"
    missing = object()
    parts = [f"{k} {_show(old.get(k, missing), missing)} → {_show(new.get(k, missing), missing)}"
             for k in sorted(set(old) | set(new)) if old.get(k, missing) != new.get(k, missing)]
    return ", ".join(parts) or "the stored digest does not match the stored values"


def _show(value: Any, missing: object) -> str:
    return "(none)" if value is missing else json.dumps(value, ensure_ascii=False)


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
