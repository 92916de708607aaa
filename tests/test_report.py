"""The per-epoch selection report renderer (p3.report)."""

from __future__ import annotations

import base64
import re

import numpy as np
import pytest
from _report_fixtures import make_run

from p3 import report, rundata, similarity
from p3.cli import main as cli_main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run"))


def _pngs(page: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_render_epoch_has_plots_tables_and_metrics(run_dir):
    data = rundata.load_epoch_dir(str(run_dir / "epoch_1"), previous_dir=str(run_dir / "epoch_0"),
                                 problems=str(run_dir / "problems.parquet"))
    page, md, metrics = report.render_epoch(data)
    pngs = _pngs(page)
    # difficulty histogram, difficulty change, DPP rounds, level and type coverage
    assert len(pngs) == 5
    assert all(p.startswith(b"\x89PNG\r\n\x1a\n") and len(p) > 2000 for p in pngs)
    for ident in ("plot-difficulty-1", "plot-change-1", "plot-rounds-1", "plot-coverage-level-1", "plot-coverage-type-1"):
        assert f'id="{ident}"' in page
    sel = rundata.storage.read_json(run_dir / "epoch_1" / "selection_report.json")
    assert metrics == {"accuracy": 0.35, "selected": 48.0, "eligible": float(sel["eligible"]),
                       "threshold": pytest.approx(sel["threshold"])}
    assert "## Epoch 1" in md and "### Diversity" in md and "| level | pool | selected |" in md
    assert "Number Theory" in md and "| test problems | 100 |" in md and "| level 5 | 0.200 |" in md
    # trained problems got easier by construction: the report must show it
    change = rundata.difficulty_change(data)
    assert change["mean_delta_trained"] < change["mean_delta_untrained"] < 0


def test_first_epoch_says_nothing_to_compare(run_dir):
    data = rundata.load_epoch_dir(str(run_dir / "epoch_0"))
    page, md, _ = report.render_epoch(data)
    assert "First epoch (nothing to compare with)." in md
    assert 'id="plot-change-0"' not in page


def test_missing_inputs_render_instead_of_failing():
    page, md, metrics = report.render_epoch(rundata.EpochData(epoch=2, metrics={"accuracy": 0.5}))
    assert metrics == {"accuracy": 0.5}
    assert "No difficulty table for this epoch." in page and "No embeddings for this epoch" in md
    assert _pngs(page) == []


def test_eligibility_is_what_the_selector_wrote_not_rederived(run_dir):
    data = rundata.load_epoch_dir(str(run_dir / "epoch_2"))
    assert (data.selected_difficulty <= rundata.threshold_of(data) + 1e-12).all()
    recorded = data.selection_report["eligible"]
    assert rundata.epoch_metrics(data)["eligible"] == recorded
    assert data.selection_report["difficulty"]["eligible"]["n"] == recorded
    data.selection_report.pop("eligible")  # the report has no second way to count it
    assert "eligible" not in rundata.epoch_metrics(data)


def _standardised(M):
    rows = np.arange(len(M))
    return similarity.standardise(M, rows, *similarity.pool_scaling(M, rows))


def test_diversity_of_spread_vs_clustered_points():
    rng = np.random.default_rng(0)
    spread = _standardised(rng.normal(size=(20, 32)))
    clustered = _standardised(np.ones((20, 32)) + 0.05 * rng.normal(size=(20, 32)))
    clustered = clustered + 1.0  # push all rows one way: high mutual cosine
    clustered /= np.linalg.norm(clustered, axis=1, keepdims=True)
    a, b = similarity.diversity(spread), similarity.diversity(clustered)
    assert a["mean_cosine"] < 0.1 < 0.9 < b["mean_cosine"]
    assert a["logdet"] > b["logdet"]
    ident = similarity.diversity(np.eye(5))
    assert ident["mean_cosine"] == 0.0 and ident["logdet"] == pytest.approx(5 * np.log(2))
    # more rows than dimensions: still finite, and the same through either Gram form
    wide = _standardised(rng.normal(size=(40, 8)))
    gram = wide @ wide.T
    got = similarity.diversity(wide)
    assert got["logdet"] == pytest.approx(np.linalg.slogdet(np.eye(40) + gram)[1])
    assert got["mean_cosine"] == pytest.approx((gram.sum() - np.trace(gram)) / (40 * 39))


def test_diversity_of_many_rows_streams_chunks_and_agrees_with_the_whole_matrix(monkeypatch):
    """Above CHUNK_ROWS rows the report's diversity is summed a chunk at a time: the same
    log-det and mean cosine as diversity() of the whole standardised matrix, while the
    largest allocation stays a chunk (at k=100k, d=384 the whole float64 matrix and the
    norm's temporary were 600 MB of p3 select's peak; the old code allocated both here)."""
    import tracemalloc

    monkeypatch.setattr(similarity, "CHUNK_ROWS", 512)
    rng = np.random.default_rng(3)
    X = (rng.normal(size=(12000, 48)) @ rng.normal(size=(48, 48)) + 2.0).astype(np.float32)
    pool = np.arange(len(X))
    mean, inv = similarity.pool_scaling(X, pool)
    rows = np.sort(rng.choice(len(X), size=9000, replace=False))
    whole = similarity.diversity(similarity.standardise(X, rows, mean, inv))
    tracemalloc.start()
    got = similarity.diversity_of(X, rows, mean, inv)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert got["logdet"] == pytest.approx(whole["logdet"], rel=1e-10)
    assert got["mean_cosine"] == pytest.approx(whole["mean_cosine"], rel=1e-8, abs=1e-12)
    matrix = len(rows) * X.shape[1] * 8
    assert peak < matrix / 4, f"peak {peak} B vs the {matrix} B standardised matrix"
    few = rows[:400]  # up to a chunk: exactly the whole-matrix path
    assert similarity.diversity_of(X, few, mean, inv) == similarity.diversity(similarity.standardise(X, few, mean, inv))


def test_diversity_vs_random_is_the_selectors_one_row(run_dir):
    data = rundata.load_epoch_dir(str(run_dir / "epoch_0"))
    div = data.selection_report["diversity"]
    assert div["k"] == len(data.selected) == 48 and div["draws"] == similarity.RANDOM_DRAWS
    assert -1 <= div["random"]["mean_cosine"] <= 1 and np.isfinite(div["selected"]["logdet"])
    _, md, _ = report.render_epoch(data)
    section = md.split("### Diversity")[1].split("###")[0]
    assert f"{div['selected']['logdet']:.2f}" in section and f"{div['random']['logdet']:.2f}" in section
    assert section.count("log det") == 1 and "selector's report" not in section


def test_render_run_and_cli_write_every_epoch(run_dir, tmp_path):
    out = tmp_path / "report.html"
    assert cli_main(["report", "--run-dir", str(run_dir), "--out", str(out)]) == 0
    page = out.read_text()
    for e in range(3):
        assert f'<section id="epoch-{e}">' in page and f'href="#epoch-{e}"' in page
    assert 'id="plot-run-accuracy"' in page
    # epoch 0: 4 plots (no change plot), epochs 1-2: 5 each, plus the run summary
    assert len(_pngs(page)) == 4 + 5 + 5 + 1
    md = (tmp_path / "report.md").read_text()
    assert md.count("## Epoch ") == 3 and "| 2 | 0.400 | 48 |" in md


def test_cli_bad_input_is_one_line_error(tmp_path, capsys):
    (tmp_path / "epoch_0").mkdir()
    (tmp_path / "epoch_0" / "difficulty.parquet").write_bytes(b"not parquet")
    assert cli_main(["report", "--run-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "difficulty.parquet" in err and "not a readable Parquet file" in err
    assert not (tmp_path / "report.html").exists()
    assert cli_main(["report", "--run-dir", str(tmp_path / "nothing-here")]) == 1


def test_a_static_threshold_is_not_drawn_on_the_difficulty_axis():
    d = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    # static paces on level labels: its threshold is not on the difficulty axis
    static = rundata.EpochData(epoch=1, difficulty=d, selection_report={"strategy": "static", "threshold": 0.25})
    assert rundata.difficulty_threshold(static) is None
    assert rundata.epoch_metrics(static)["threshold"] == 0.25


def test_an_epoch_rendered_for_its_own_page_is_not_rendered_again_for_the_run_page(run_dir, monkeypatch):
    data = rundata.load_epoch_dir(str(run_dir / "epoch_2"), str(run_dir / "epoch_1"))
    calls = []
    real = report._render_sections
    monkeypatch.setattr(report, "_render_sections", lambda d, seed: calls.append(d.epoch) or real(d, seed))
    page, _, _ = report.render_epoch(data)
    run_page, _ = report.render_run([str(run_dir / "epoch_0"), str(run_dir / "epoch_1"), data])
    assert calls == [2, 0, 1]
    section = page[page.index('<section id="epoch-2">'):page.index("</section>", page.index('<section id="epoch-2">'))]
    assert section in run_page


def test_the_run_page_takes_the_problem_labels_from_an_epoch_that_holds_them(run_dir, monkeypatch):
    problems = str(run_dir / "problems.parquet")
    data = rundata.load_epoch_dir(str(run_dir / "epoch_2"), str(run_dir / "epoch_1"), problems=problems)
    reads = []
    real = rundata.load_meta
    monkeypatch.setattr(report, "load_meta", lambda path: reads.append(path) or real(path))
    _, md = report.render_run([str(run_dir / "epoch_0"), str(run_dir / "epoch_1"), data], problems=problems)
    assert reads == []  # one read of the table per step, not one per page
    assert "Number Theory" in md.split("## Epoch 1")[1].split("## Epoch 2")[0]  # earlier epochs get the labels


def test_records_are_read_exactly_as_written(run_dir, tmp_path):
    """A selection report or evaluation result with another version, a key no writer
    writes (an old alias such as difficulty_threshold or accuracy_by_level) or a missing
    key stops the reader with the file and the field."""
    import shutil

    from p3 import records, storage
    from p3.contracts import ContractError

    sel = storage.read_json(run_dir / "epoch_1" / "selection_report.json")
    ev = storage.read_json(run_dir / "epoch_1" / "metrics.json")
    assert records.read(records.SelectionReport, sel) == sel and sel["version"] == 1
    assert records.read(records.EvaluationResults, ev) == ev and ev["version"] == 1
    for kind, good, change, field in (
        (records.SelectionReport, sel, {"difficulty_threshold": 0.3}, "difficulty_threshold"),
        (records.SelectionReport, sel, {"version": 2}, "version"),
        (records.EvaluationResults, ev, {"accuracy_by_level": {}}, "accuracy_by_level"),
    ):
        path = tmp_path / f"{field}.json"
        storage.write_json({**good, **change}, path)
        with pytest.raises(ContractError, match=rf"{path}, field '{field}'"):
            records.read(kind, str(path))
    missing = {k: v for k, v in ev.items() if k != "pass_at_k"}
    with pytest.raises(ContractError, match="field 'pass_at_k': missing"):
        records.read(records.EvaluationResults, missing)
    # the report folder's reader goes through it
    shutil.copytree(run_dir / "epoch_1", tmp_path / "epoch_1")
    storage.write_json({**sel, "arm": "p3"}, tmp_path / "epoch_1" / "selection_report.json")
    with pytest.raises(ContractError, match="field 'arm'"):
        rundata.load_epoch_dir(str(tmp_path / "epoch_1"))
