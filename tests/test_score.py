"""Likelihood, rollout and hybrid difficulty on the tiny model, against references."""

import json

import numpy as np
import pyarrow as pa
import pytest

from p3 import contracts, prompts, storage

ROW = {"id": "p", "prompt": "What is 2 + 3?", "solution": "2 + 3 = 5\n\n  \nSo \\boxed{5}\n", "task": "math"}


def test_scored_text_is_prompt_newline_steps_and_spans_skip_separators():
    text, spans = prompts.scored_text(ROW, "plain")
    assert text == ROW["prompt"] + "\n" + "\n".join(["2 + 3 = 5", "So \\boxed{5}"])
    assert [text[s:e] for s, e in spans] == ["2 + 3 = 5", "So \\boxed{5}"]
    assert all(text[e] == "\n" for _, e in spans[:-1]) and spans[-1][1] == len(text)


def test_step_probabilities_use_only_tokens_inside_each_line():
    from p3.backends import TokenScores
    from p3.score import step_probabilities

    # tokens: "ab" "\n" "c" "d" ; the separator token (log p = -9) must be ignored
    scores = TokenScores(offsets=np.array([[0, 2], [2, 3], [3, 4], [4, 5]]),
                         logprobs=np.array([np.log(0.5), -9.0, np.log(0.25), np.log(1.0)]))
    got = step_probabilities(scores, [(0, 2), (3, 5)])
    assert got == pytest.approx([0.5, np.exp((np.log(0.25) + 0.0) / 2)])


@pytest.mark.slow
@pytest.mark.parametrize("template", ["plain", "chat"])
def test_batched_likelihood_equals_per_step_reference(tiny_model_dir, mini_math, template):
    from p3.backends import opened
    from p3.score import likelihoods, per_step_likelihood

    rows = contracts.read(mini_math["train"], contracts.PROBLEMS).to_pylist()[:24]
    with opened("hf", tiny_model_dir, device="cpu", batch_size=7) as backend:  # ragged batches: padding matters
        fast = likelihoods(backend, rows, template)
        ref = [per_step_likelihood(backend.model, backend.tokenizer, r, template) for r in rows]
    assert np.max(np.abs(np.array(fast) - np.array(ref))) < 1e-4
    assert len(set(np.round(fast, 6))) > 1  # a real signal, not a constant


@pytest.mark.slow
def test_score_cli_likelihood_writes_the_difficulty_contract(tiny_model_dir, mini_math, tmp_path):
    from p3.cli import main

    out = tmp_path / "d.parquet"
    assert main(["score", "--problems", mini_math["train"], "--model", tiny_model_dir, "--out", str(out),
                 "--epoch", "2", "--device", "cpu"]) == 0
    table = contracts.read(str(out), contracts.DIFFICULTY)
    assert table.column("id").to_pylist() == storage.read_table(mini_math["train"]).column("id").to_pylist()
    d = table.to_pydict()
    contracts.check_unit_interval(d["difficulty"], str(out), "difficulty")
    assert set(d["epoch"]) == {2} and set(d["n_rollouts"]) == {0} and set(d["pass_rate"]) == {None}
    assert np.allclose(d["difficulty"], 1 - np.array(d["likelihood"]))
    assert not (tmp_path / "d.rollouts.parquet").exists()


@pytest.mark.slow
def test_rollout_and_hybrid_grade_samples_with_the_verifier(tiny_model_dir, mini_math, tmp_path):
    from p3.score import ScoreConfig, score
    from p3.generation import GenerationConfig
    from p3.verify.grade import grade_completions

    problems = contracts.read(mini_math["train"], contracts.PROBLEMS).slice(0, 6)
    common = dict(problems=str(tmp_path / "p.parquet"), model=tiny_model_dir, n=3, temperature=1.0,
                  generation=GenerationConfig(max_new_tokens=48, seed=1, device="cpu", grade_workers=2))
    storage.write_table(problems, common["problems"])
    score(ScoreConfig(out=str(tmp_path / "r.parquet"), mode="rollout", **common))
    diff = contracts.read(str(tmp_path / "r.parquet"), contracts.DIFFICULTY).to_pylist()
    rolls = contracts.read(str(tmp_path / "r.rollouts.parquet"), contracts.ROLLOUTS, unique_id=False).to_pylist()
    assert len(rolls) == 6 * 3 and {r["sample"] for r in rolls} == {0, 1, 2}
    regraded = grade_completions(problems, [{k: r[k] for k in ("id", "sample", "completion")} for r in rolls])
    assert [g["score"] for g in regraded] == [r["score"] for r in rolls]
    for d in diff:
        mine = [r["score"] for r in rolls if r["id"] == d["id"]]
        assert d["pass_rate"] == pytest.approx(np.mean(mine)) and d["difficulty"] == pytest.approx(1 - np.mean(mine))
        assert d["likelihood"] is None and d["n_rollouts"] == 3

    score(ScoreConfig(out=str(tmp_path / "h.parquet"), mode="hybrid", weight=0.25,
                      rollouts_out=str(tmp_path / "h-rolls.parquet"), **common))
    hyb = contracts.read(str(tmp_path / "h.parquet"), contracts.DIFFICULTY).to_pylist()
    assert (tmp_path / "h-rolls.parquet").exists()
    for h, d in zip(hyb, diff):
        assert h["pass_rate"] == d["pass_rate"]  # same seed, same samples
        assert h["difficulty"] == pytest.approx(0.25 * (1 - h["likelihood"]) + 0.75 * (1 - h["pass_rate"]))


def test_empty_solution_is_a_contract_error_naming_the_row(tiny_model_dir, tmp_path):
    from p3.score import ScoreConfig, score
    from p3.generation import GenerationConfig

    rows = [dict(ROW, id="a", answer="5", tests=None, starter_code=None, meta=json.dumps({"level": 1})),
            dict(ROW, id="b", solution=" \n", answer="5", tests=None, starter_code=None, meta="{}")]
    path = str(tmp_path / "p.parquet")
    storage.write_table(pa.Table.from_pylist(rows, schema=contracts.PROBLEMS), path)
    with pytest.raises(contracts.ContractError, match="row 2, field 'solution'"):
        score(ScoreConfig(problems=path, model=tiny_model_dir, out=str(tmp_path / "d.parquet"),
                          generation=GenerationConfig(device="cpu")))
    assert not (tmp_path / "d.parquet").exists()


def test_apps_rows_are_laid_out_as_in_the_apps_paper():
    row = {"task": "apps", "prompt": "Read n, print n+1.", "starter_code": None, "solution": "n = int(input())\n\nprint(n + 1)"}
    text, spans = prompts.scored_text(row, "plain")
    assert text == "QUESTION:\nRead n, print n+1.\nUse Standard Input format\nANSWER:\nn = int(input())\nprint(n + 1)"
    assert [text[s:e] for s, e in spans] == ["n = int(input())", "print(n + 1)"]
    call = dict(row, starter_code="class Solution:\n    def f(self, n):")
    assert prompts.prompt_text(call, "plain").endswith("class Solution:\n    def f(self, n):\nUse Call-Based format\nANSWER:\n")


def test_steps_beyond_max_len_are_left_out(tiny_model_dir):
    from p3.backends import opened
    from p3.score import likelihoods, step_probabilities

    row = dict(ROW, solution="1 + 1 = 2\n" + "x" * 40 + "\nSo \\boxed{2}")
    text, spans = prompts.scored_text(row, "plain")
    with opened("hf", tiny_model_dir, device="cpu", max_len=len("What is 2 + 3?\n1 + 1 = 2") + 1) as b:
        (scores,) = b.token_logprobs([text])
        assert len(scores.offsets) == len("What is 2 + 3?\n1 + 1 = 2") + 1  # BOS + characters up to step 1
        assert len(step_probabilities(scores, spans)) == 1
        assert likelihoods(b, [row], "plain") == [step_probabilities(scores, spans)[0]]
    with opened("hf", tiny_model_dir, device="cpu", max_len=5) as b, pytest.raises(ValueError, match="--max-len"):
        likelihoods(b, [row], "plain")
