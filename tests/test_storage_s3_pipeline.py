"""Pipeline data through object storage: a real S3-compatible server (moto's server
mode on loopback, the ``s3_server`` fixture) stands in for MinIO; every ``s3://`` path
goes through s3fs and botocore over HTTP.

Round trips: problem tables (a raw dataset file read from S3, prepared into S3, split
into shards and merged back), a model dir (built into S3 and scored from S3) and a
report (epoch folders on S3 rendered to an HTML object).
"""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from p3 import contracts, storage
from p3.kfp.components import _glue


def _put(local: str, uri: str) -> None:
    fs, inner = storage.filesystem(uri)
    fs.put_file(local, inner)


def test_problem_tables_round_trip_through_s3(s3_tmp, tmp_path):
    from p3 import sources
    from p3.kfp.builder import apps_fixture

    raw = f"{s3_tmp}/raw/apps.jsonl"
    _put(apps_fixture(), raw)
    remote = f"{s3_tmp}/problems.parquet"
    local = str(tmp_path / "problems.parquet")
    sources.prepare(sources.PrepareConfig(task="apps", source=raw, out=remote))
    sources.prepare(sources.PrepareConfig(task="apps", source=apps_fixture(), out=local))
    got = contracts.read(remote, contracts.PROBLEMS)
    assert got.num_rows > 0
    want = contracts.read(local, contracts.PROBLEMS)
    # meta records where a row came from; everything else must be the same table
    assert got.drop(["meta"]).equals(want.drop(["meta"]))
    strip = [{k: v for k, v in json.loads(m).items() if k != "source"} for m in got.column("meta").to_pylist()]
    assert strip == [{k: v for k, v in json.loads(m).items() if k != "source"} for m in want.column("meta").to_pylist()]
    assert json.loads(got.column("meta")[0].as_py())["source"] == raw

    # the scale-out plumbing works on S3 paths too: shards and a merge in the original order
    parts = [f"{s3_tmp}/shard-{i}.parquet" for i in range(3)]
    sizes = [_glue.split_rows(remote, i, 3, part) for i, part in enumerate(parts)]
    assert sum(sizes) == got.num_rows and max(sizes) - min(sizes) <= 1
    merged = f"{s3_tmp}/merged.parquet"
    _glue.concat_tables(parts[::-1], merged, order_by=remote)
    assert storage.read_table(merged).equals(storage.read_table(remote))


@pytest.mark.slow
def test_model_dir_round_trips_and_scores_the_same_from_s3(s3_tmp, tmp_path):
    from p3 import minimath
    from p3.score import ScoreConfig, score
    from p3.generation import GenerationConfig
    from p3.tiny import TinyConfig, build_tiny_model

    problems = str(tmp_path / "problems.parquet")
    minimath.synth(minimath.SynthConfig(out=problems, n=12, seed=1))
    local_model = str(tmp_path / "model")
    build_tiny_model(TinyConfig(out=local_model, train_on=problems, steps=5, seed=0))
    remote_model = f"{s3_tmp}/model"
    storage.upload_dir(local_model, remote_model)
    with storage.local_dir(remote_model) as back:
        import os

        assert sorted(os.listdir(back)) == sorted(os.listdir(local_model))

    remote_problems = f"{s3_tmp}/problems.parquet"
    _put(problems, remote_problems)
    out_remote, out_local = f"{s3_tmp}/difficulty.parquet", str(tmp_path / "difficulty.parquet")
    cpu = GenerationConfig(device="cpu")
    score(ScoreConfig(problems=remote_problems, model=remote_model, out=out_remote, generation=cpu))
    score(ScoreConfig(problems=problems, model=local_model, out=out_local, generation=cpu))
    a = contracts.read(out_remote, contracts.DIFFICULTY)
    b = contracts.read(out_local, contracts.DIFFICULTY)
    assert a.column("id").equals(b.column("id"))
    diffs = [abs(x - y) for x, y in zip(a.column("difficulty").to_pylist(), b.column("difficulty").to_pylist())]
    assert max(diffs) < 1e-6


def test_report_renders_from_and_to_s3(s3_tmp, tmp_path):
    from p3 import minimath
    from p3.records import EvaluationResults
    from p3.report import ReportConfig, render_report
    from p3.selection import SelectConfig, select

    problems = str(tmp_path / "problems.parquet")
    table = minimath.synth(minimath.SynthConfig(out=problems, n=20, seed=2))
    ids = table.column("id").to_pylist()
    difficulty = str(tmp_path / "difficulty.parquet")
    storage.write_table(pa.table({"id": ids, "epoch": [0] * 20, "difficulty": [i / 20 for i in range(20)],
                                  "likelihood": [1 - i / 20 for i in range(20)], "pass_rate": [None] * 20,
                                  "n_rollouts": [0] * 20}, schema=contracts.DIFFICULTY), difficulty)
    selection, sel_report = str(tmp_path / "selection.parquet"), str(tmp_path / "sel.json")
    select(SelectConfig(problems=problems, difficulty=difficulty, strategy="spl", epochs=1, budget=5,
                        out=selection, report=sel_report))
    metrics = str(tmp_path / "eval.json")
    storage.write_json(EvaluationResults(model="m", problems=problems, epoch=0, n=1, k=1, temperature=0.0,
                                         n_problems=8, accuracy=0.25, pass_at_k=0.25, seconds=1.0).to_json(), metrics)
    run = str(tmp_path / "run")
    _glue.add_epoch(run, 0, {"difficulty": difficulty, "selection": selection, "selection_report": sel_report,
                             "metrics": metrics}, problems, None)

    remote_run = f"{s3_tmp}/run"
    storage.upload_dir(run, remote_run)
    out = f"{s3_tmp}/report/report.html"
    render_report(ReportConfig(run_dir=remote_run, out=out))
    with storage.open_file(out) as fh:
        page = fh.read().decode("utf-8")
    assert "epoch 0" in page.lower() and "<img" in page
    assert json.loads(json.dumps(storage.read_json(f"{remote_run}/epoch_0/selection_report.json")))["selected"] == 5
