"""The per-epoch training run's state: read, advance by exactly one epoch with a create-only write,
refuse a second advance of the same epoch. Locally in a folder and on a moto S3 server on loopback."""

from __future__ import annotations

import threading

import pytest

from p3 import storage
from p3.kfp import epoch_state as es


@pytest.fixture(params=["local", "s3"])
def state_uri(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "state")
    return request.getfixturevalue("s3_tmp")


def test_three_epochs_advance_then_the_run_is_done(state_uri):
    s = es.read(state_uri, "nightly", epochs=3)
    assert (s.epoch, s.done, s.policy) == (0, False, "")
    for k in range(3):
        att = es.new_attempt()
        out = es.attempt_dir(state_uri, s, att)
        s = es.commit(state_uri, s, attempt=att, policy=f"{out}/model", selection=f"{out}/selection.parquet")
        again = es.read(state_uri, "nightly", epochs=3)
        assert again == s and again.epoch == k + 1 and again.policy == f"{out}/model"
    assert s.done and [h["epoch"] for h in s.history] == [0, 1, 2]
    with pytest.raises(es.StateError, match="finished"):
        es.commit(state_uri, s, attempt="x")
    # each boundary is its own immutable file
    assert [storage.exists(es.state_path(es.run_root(state_uri, "nightly"), k)) for k in range(5)] == [
        False, True, True, True, False]


def test_the_second_commit_of_the_same_epoch_fails_and_changes_nothing(state_uri):
    a = es.read(state_uri, "r", epochs=3)
    b = es.read(state_uri, "r", epochs=3)  # two runs started from the same state
    won = es.commit(state_uri, a, attempt="aaa", policy="A")
    with pytest.raises(es.EpochConflict, match="epoch 0 of training run 'r' was already done"):
        es.commit(state_uri, b, attempt="bbb", policy="B")
    now = es.read(state_uri, "r", epochs=3)
    assert now == won and now.policy == "A" and now.history[-1]["attempt"] == "aaa"


def test_concurrent_commits_leave_exactly_one_advanced_state(tmp_path):
    """Eight threads commit epoch 0 at once (a barrier releases them together): one wins."""
    uri = str(tmp_path / "state")
    start = es.read(uri, "r", epochs=2)
    barrier = threading.Barrier(8)
    results: list[str] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            es.commit(uri, start, attempt=f"t{i}", policy=f"p{i}")
            results.append(f"won t{i}")
        except es.EpochConflict:
            results.append("lost")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if r.startswith("won")]
    assert len(winners) == 1 and results.count("lost") == 7
    now = es.read(uri, "r", epochs=2)
    assert now.epoch == 1 and winners[0] == f"won {now.history[0]['attempt']}"
    assert not list((tmp_path / "state" / "r" / "state").glob("*.tmp"))  # no temp file outlives a commit


def test_a_run_that_does_not_fit_the_state_is_refused(state_uri):
    s = es.read(state_uri, "r", epochs=3, params={"budget": 8})
    es.commit(state_uri, s, attempt="a")
    with pytest.raises(es.StateError, match="epochs=3, not 5"):
        es.read(state_uri, "r", epochs=5)
    with pytest.raises(es.StateError, match="training_run"):
        es.read(state_uri, "../escape", epochs=3)
    with pytest.raises(es.StateError, match="at least 1"):
        es.read(state_uri, "r", epochs=0)


RUN = {"task": "math", "budget": 8, "strategy": "p3", "lr": 0.002, "pacing_start": 45.0, "full_finetune": False,
       "base_model": ""}


def test_a_training_run_keeps_the_run_parameters_it_started_with(state_uri):
    """Epoch 0 records the run parameters; a later run with the same values continues, one with
    another budget is refused in one line that names the training run and budget (old → new)."""
    s = es.commit(state_uri, es.read(state_uri, "nightly", epochs=3, params=RUN), attempt="a")
    assert s.params == RUN and len(s.params_digest) == 64
    # the same values continue; a number may come back integral (the backend's JSON: 45 for 45.0)
    again = es.read(state_uri, "nightly", epochs=3, params={**RUN, "pacing_start": 45})
    assert again == s and again.epoch == 1 and again.params == RUN
    with pytest.raises(es.StateError) as err:
        es.read(state_uri, "nightly", epochs=3, params={**RUN, "budget": 9})
    msg = str(err.value)
    assert "\n" not in msg and "training run 'nightly'" in msg
    assert "budget 8 → 9" in msg and "strategy" not in msg and "lr" not in msg
    # several changes: each named, old → new
    with pytest.raises(es.StateError) as err:
        es.read(state_uri, "nightly", epochs=3, params={**RUN, "lr": 0.001, "strategy": "dpp", "seed": 1})
    assert 'lr 0.002 → 0.001, seed (none) → 1, strategy "p3" → "dpp"' in str(err.value)
    # a reader that only looks (no parameters) is not refused
    assert es.read(state_uri, "nightly", epochs=3) == s
    # a stored state that records no parameters (started by a caller that did not pin) is refused
    es.commit(state_uri, es.read(state_uri, "unpinned", epochs=3), attempt="a")
    with pytest.raises(es.StateError, match="other run parameters: the stored state records none"):
        es.read(state_uri, "unpinned", epochs=3, params=RUN)


def test_a_state_written_before_the_pin_is_refused_in_one_line(tmp_path):
    """A format-1 state (this module before run parameters were pinned) holds no parameters to
    compare: reading it is a one-line StateError that says what to do, not a crash."""
    import json

    uri = str(tmp_path / "state")
    folder = tmp_path / "state" / "old" / "state"
    folder.mkdir(parents=True)
    # what the format-1 code wrote after epoch 0 (EpochState.to_json of that version)
    (folder / "00001.json").write_text(json.dumps({
        "format": 1, "training_run": "old", "epochs": 3, "epoch": 1, "policy": "/m", "selection": "/s",
        "difficulty": "/d", "report": "/r", "params_digest": "",
        "history": [{"epoch": 0, "attempt": "a", "run_id": "", "finished_at": "2026-12-01T00:00:00Z"}]}))
    with pytest.raises(es.StateError) as err:
        es.read(uri, "old", epochs=3, params=RUN)
    msg = str(err.value)
    assert "\n" not in msg and "00001.json" in msg and "state format 1" in msg and "training_run name" in msg


def test_a_corrupt_state_file_is_named(tmp_path):
    uri = str(tmp_path / "state")
    es.commit(uri, es.read(uri, "r", epochs=2), attempt="a")
    (tmp_path / "state" / "r" / "state" / "00001.json").write_text("{not json")
    with pytest.raises(es.StateError, match="00001.json: not a P3 epoch state"):
        es.read(uri, "r", epochs=2)


def test_a_long_lived_reader_sees_what_another_process_stored(s3_tmp):
    """s3fs caches listings per process: read() must not return the epoch it saw before another
    process (here: a fresh interpreter) advanced the training run."""
    import os
    import subprocess
    import sys

    es.commit(s3_tmp, es.read(s3_tmp, "r", epochs=3), attempt="mine")
    assert es.read(s3_tmp, "r", epochs=3).epoch == 1  # lists (and s3fs caches) state/ = [00001.json]
    code = ("import sys\nfrom p3.kfp import epoch_state as es\n"
            "es.commit(sys.argv[1], es.read(sys.argv[1], 'r', 3), attempt='other')\n")
    subprocess.run([sys.executable, "-c", code, s3_tmp], check=True, env=dict(os.environ), timeout=120)
    now = es.read(s3_tmp, "r", epochs=3)
    assert now.epoch == 2 and now.history[-1]["attempt"] == "other"
