"""Strategies, select_ids, and `p3 select` end to end on small files."""

import dataclasses
import json

import numpy as np
import pyarrow as pa
import pytest

from p3 import cli, contracts, storage
from p3.contracts import ContractError
from p3.dpp import dpp_select
from p3.selection import SelectConfig, select, select_ids

N, DIM = 120, 12


def _arrays(seed=0):
    rng = np.random.default_rng(seed)
    ids = [f"p{i:03d}" for i in range(N)]
    diff = rng.uniform(0, 1, N)
    emb = rng.normal(size=(N, DIM)).astype(np.float32)
    levels = [int(x) for x in rng.integers(1, 6, N)]
    types = [["Algebra", "Geometry", "Number Theory"][i % 3] for i in range(N)]
    return ids, diff, emb, levels, types


@pytest.fixture
def files(tmp_path):
    ids, diff, emb, levels, types = _arrays()
    problems = pa.table(
        {
            "id": ids, "task": ["math"] * N, "prompt": [f"What is {i}+1?" for i in range(N)],
            "solution": [f"{i}+1 = {i + 1}\n\\boxed{{{i + 1}}}" for i in range(N)], "answer": [str(i + 1) for i in range(N)],
            "tests": [None] * N, "starter_code": [None] * N,
            "meta": [json.dumps({"level": lv, "type": t, "source": "test"}) for lv, t in zip(levels, types)],
        },
        schema=contracts.PROBLEMS,
    )
    difficulty = pa.table(
        {"id": ids, "epoch": [0] * N, "difficulty": diff, "likelihood": 1 - diff, "pass_rate": [None] * N, "n_rollouts": [0] * N},
        schema=contracts.DIFFICULTY,
    )
    embeddings = pa.table(
        {"id": ids, "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), DIM)},
        schema=contracts.embeddings_schema(DIM),
    )
    paths = {name: str(tmp_path / f"{name}.parquet") for name in ("problems", "difficulty", "embeddings")}
    storage.write_table(problems, paths["problems"])
    storage.write_table(difficulty, paths["difficulty"])
    storage.write_table(embeddings, paths["embeddings"])
    paths["dir"] = tmp_path
    return paths


def test_random_is_deterministic_per_seed_and_epoch():
    ids, diff, emb, *_ = _arrays()
    cfg = SelectConfig(strategy="random", budget=30, seed=3)
    a = select_ids(ids, diff, emb, cfg).ids
    assert a == select_ids(ids, diff, emb, cfg).ids
    assert a != select_ids(ids, diff, emb, SelectConfig(strategy="random", budget=30, seed=4)).ids
    assert a != select_ids(ids, diff, emb, SelectConfig(strategy="random", budget=30, seed=3, epoch=1)).ids
    assert len(set(a)) == 30


def test_full_takes_everything_in_table_order():
    ids, diff, emb, *_ = _arrays()
    sel = select_ids(ids, diff, None, SelectConfig(strategy="full", budget=10))
    assert sel.ids == ids
    assert sel.report["notes"] and "ignores the budget" in sel.report["notes"][0]


def test_spl_picks_only_below_the_pacing_threshold():
    ids, diff, emb, *_ = _arrays()
    sel = select_ids(ids, diff, None, SelectConfig(strategy="spl", budget=20, epoch=0, epochs=5))
    thr = np.percentile(diff, 45)
    assert sel.report["threshold"] == pytest.approx(thr)
    assert sel.report["eligible"] == int((diff <= thr).sum())
    assert len(sel.ids) == 20 and (sel.difficulty <= thr).all()


def test_p3_is_the_dpp_over_the_eligible_pool():
    ids, diff, emb, *_ = _arrays()
    sel = select_ids(ids, diff, emb, SelectConfig(strategy="p3", budget=25, epoch=2, epochs=5))
    elig = np.flatnonzero(diff <= np.percentile(diff, 65))
    expect = dpp_select(emb[elig], diff[elig], 25)
    assert sel.ids == [ids[i] for i in elig[expect.order]]
    assert sel.round.tolist() == expect.rounds.tolist()
    assert sel.report["rounds"] == expect.n_rounds


def test_dpp_uses_the_whole_pool_and_quality_choice():
    ids, diff, emb, *_ = _arrays()
    sel = select_ids(ids, diff, emb, SelectConfig(strategy="dpp", budget=15, quality="easiness"))
    expect = dpp_select(emb, 1 - diff, 15)
    assert sel.ids == [ids[i] for i in expect.order]
    assert sel.report["eligible"] == N


def test_static_curriculum_orders_by_level_and_paces_on_it():
    ids, diff, emb, levels, types = _arrays()
    sel = select_ids(ids, None, None, SelectConfig(strategy="static", budget=20, epoch=0, epochs=4), levels=levels)
    picked = [levels[ids.index(i)] for i in sel.ids]
    assert picked == sorted(picked)
    lv = np.array(levels, dtype=float)
    thr = np.percentile((lv - 1) / 4, 45)
    assert max(picked) <= 1 + 4 * thr


def test_cross_epoch_conditioning_changes_the_picks():
    ids, diff, emb, *_ = _arrays()
    prev = select_ids(ids, diff, emb, SelectConfig(strategy="dpp", budget=30)).ids
    cfg = SelectConfig(strategy="dpp", budget=30, diversity_weight=1.0, diversity_previous=5)
    sel = select_ids(ids, diff, emb, cfg, previous_ids=prev)
    assert sel.report["dpp"]["conditioned_on"] == 5
    assert sel.ids != prev
    assert sel.report["round_sizes"][0] <= DIM - 5


def test_budget_above_eligible_selects_all_and_says_so():
    ids, diff, emb, *_ = _arrays()
    sel = select_ids(ids, diff, emb, SelectConfig(strategy="p3", budget=500))
    assert len(sel.ids) == sel.report["eligible"] < 500
    assert sel.report["budget_exceeds_eligible"] is True
    assert any("all of them selected" in n for n in sel.report["notes"])


def test_cli_end_to_end_writes_selection_and_report(files):
    out, rep = files["dir"] / "sel.parquet", files["dir"] / "rep.json"
    code = cli.main([
        "select", "--problems", files["problems"], "--difficulty", files["difficulty"], "--embeddings", files["embeddings"],
        "--strategy", "p3", "--epoch", "1", "--epochs", "3", "--budget", "30", "--out", str(out), "--report", str(rep), "--seed", "1",
    ])
    assert code == 0
    table = contracts.read(str(out), contracts.SELECTION)
    assert table.num_rows == 30
    assert table.column("rank").to_pylist() == list(range(30))
    assert set(table.column("epoch").to_pylist()) == {1}
    report = json.loads(rep.read_text())
    for key in ("pool", "eligible", "selected", "threshold", "percentile", "difficulty", "rounds", "round_sizes", "dpp",
                "logdet", "mean_cosine", "diversity", "coverage", "notes", "budget_exceeds_eligible"):
        assert key in report, key
    assert report["pool"] == N and report["selected"] == 30
    assert set(report["difficulty"]) == {"pool", "eligible", "selected"}
    assert report["difficulty"]["selected"]["max"] <= report["threshold"]
    assert sum(report["coverage"]["level"]["selected"].values()) == 30
    assert set(report["coverage"]["type"]["pool"]) == {"Algebra", "Geometry", "Number Theory"}
    assert report["diversity"]["random"]["mean_cosine"] is not None
    # the previous selection feeds cross-epoch conditioning
    out2 = files["dir"] / "sel2.parquet"
    cfg = SelectConfig(problems=files["problems"], difficulty=files["difficulty"], embeddings=files["embeddings"],
                       out=str(out2), strategy="p3", epoch=2, epochs=3, budget=30, previous=str(out), diversity_weight=0.5)
    assert select(cfg)["dpp"]["conditioned_on"] == min(30, 64, DIM)
    # without conditioning or momentum pacing the previous epoch's tables are not read at all
    missing = str(files["dir"] / "no-such.parquet")
    plain = dataclasses.replace(cfg, previous=missing, previous_difficulty=missing, diversity_weight=0.0)
    assert select(plain)["dpp"]["conditioned_on"] == 0
    with pytest.raises(FileNotFoundError):
        select(dataclasses.replace(plain, diversity_weight=0.5))
    with pytest.raises(FileNotFoundError):
        select(dataclasses.replace(plain, pacing_mode="momentum"))
    # nor by strategies that would not use them: random does not condition, static paces a label
    assert select(dataclasses.replace(plain, strategy="random", diversity_weight=0.5))["selected"] == 30
    static = select(dataclasses.replace(plain, strategy="static", pacing_mode="momentum"))
    assert static["selected"] == 30 and static["pacing"]["momentum_applied"] is False


def test_missing_difficulty_row_names_file_and_id(files, tmp_path):
    t = storage.read_table(files["difficulty"]).slice(0, N - 1)
    bad = str(tmp_path / "short.parquet")
    storage.write_table(t, bad)
    cfg = SelectConfig(problems=files["problems"], difficulty=bad, embeddings=files["embeddings"], out=str(tmp_path / "o.parquet"))
    with pytest.raises(ContractError) as err:
        select(cfg)
    assert err.value.path == bad and err.value.field == "id" and f"p{N - 1:03d}" in str(err.value)
    assert not (tmp_path / "o.parquet").exists()


def test_missing_embedding_names_file_and_problem_row(files, tmp_path):
    t = storage.read_table(files["embeddings"]).slice(1)
    bad = str(tmp_path / "emb.parquet")
    storage.write_table(t, bad)
    cfg = SelectConfig(problems=files["problems"], difficulty=files["difficulty"], embeddings=bad, out=str(tmp_path / "o.parquet"))
    with pytest.raises(ContractError, match="problems row 1"):
        select(cfg)


def test_difficulty_outside_unit_interval_names_row(files, tmp_path, capsys):
    t = storage.read_table(files["difficulty"])
    d = t.column("difficulty").to_pylist()
    d[6] = 1.5
    bad = str(tmp_path / "d.parquet")
    storage.write_table(t.set_column(2, "difficulty", pa.array(d, pa.float64())), bad)
    code = cli.main(["select", "--problems", files["problems"], "--difficulty", bad, "--embeddings", files["embeddings"],
                     "--budget", "10", "--out", str(tmp_path / "o.parquet")])
    assert code == 1
    msg = capsys.readouterr().err
    assert bad in msg and "row 7" in msg and "'difficulty'" in msg


def test_strategy_needing_embeddings_says_so(files, tmp_path):
    cfg = SelectConfig(problems=files["problems"], difficulty=files["difficulty"], out=str(tmp_path / "o.parquet"), strategy="dpp")
    with pytest.raises(ValueError, match="needs --embeddings"):
        select(cfg)


def test_learnability_quality_peaks_at_the_middle():
    from p3.selection import _quality

    q = _quality(np.array([0.0, 0.1, 0.5, 0.9, 1.0]), "learnability")
    assert q == pytest.approx([0.0, 0.36, 1.0, 0.36, 0.0])


def test_learnability_dpp_prefers_frontier_items_over_mastered_and_out_of_reach():
    ids, _, emb, _, _ = _arrays()
    diff = np.array([0.02, 0.5, 0.98] * (N // 3))  # mastered, frontier, out of reach, interleaved
    sel = select_ids(ids, diff, emb, SelectConfig(strategy="dpp", budget=30, quality="learnability"))
    picked = np.array([diff[ids.index(i)] for i in sel.ids])
    assert (picked == 0.5).mean() > 0.9
    paper = select_ids(ids, diff, emb, SelectConfig(strategy="dpp", budget=30, quality="difficulty"))
    assert (np.array([diff[ids.index(i)] for i in paper.ids]) == 0.98).mean() > 0.9  # the paper's q favours the hardest


def test_uniform_reserve_takes_its_share_of_the_budget_at_random_outside_the_picks():
    ids, diff, emb, levels, types = _arrays()
    cfg = SelectConfig(strategy="p3", budget=40, reserve=0.25, epochs=4)
    sel = select_ids(ids, diff, emb, cfg, levels=levels, types=types)
    plain = select_ids(ids, diff, emb, dataclasses.replace(cfg, reserve=0.0), levels=levels, types=types)
    assert len(sel.ids) == 40 == len(set(sel.ids)) and sel.report["reserve"] == 10
    assert sel.ids[:30] == plain.ids[:30]  # the strategy's picks first, in its order
    threshold = sel.report["threshold"]
    extra = np.array([diff[ids.index(i)] for i in sel.ids[30:]])
    assert (extra > threshold).any()  # the reserve reaches beyond the pacing's eligible set
    assert select_ids(ids, diff, emb, cfg, levels=levels, types=types).ids == sel.ids  # seeded
    with pytest.raises(ValueError, match="reserve"):
        select_ids(ids, diff, emb, dataclasses.replace(cfg, reserve=0.95))
