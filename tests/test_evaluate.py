"""Evaluator: greedy generation graded by the verifier; accuracy and pass@k overall and by group."""

import json

import pytest

from p3 import contracts, prompts, storage


@pytest.mark.slow
def test_greedy_evaluation_agrees_with_an_independent_grading(tiny_model_dir, mini_math, tmp_path):
    from p3.backends import opened
    from p3.cli import main
    from p3.verify.answers import last_boxed

    out, samples = tmp_path / "eval.json", tmp_path / "samples.parquet"
    assert main(["evaluate", "--problems", mini_math["test"], "--model", tiny_model_dir, "--out", str(out),
                 "--max-new-tokens", "64", "--device", "cpu", "--epoch", "1",
                 "--completions-out", str(samples)]) == 0
    result = json.loads(out.read_text())
    rows = contracts.read(mini_math["test"], contracts.PROBLEMS).to_pylist()
    with opened("hf", tiny_model_dir, device="cpu") as b:
        texts = [g[0] for g in b.generate([prompts.prompt_text(r, "plain") for r in rows], max_new_tokens=64)]
    graded = contracts.read(str(samples), contracts.ROLLOUTS).to_pylist()
    assert [g["completion"] for g in graded] == texts  # greedy: the same text again
    right = [last_boxed(t) == r["answer"] for r, t in zip(rows, texts)]
    assert [g["score"] == 1.0 for g in graded] == right
    assert result["accuracy"] == pytest.approx(sum(right) / len(rows)) == result["pass_at_k"]
    assert (result["n_problems"], result["n"], result["k"], result["epoch"], result["temperature"]) == (20, 1, 1, 1, 0.0)
    levels = {json.loads(r["meta"])["level"] for r in rows}
    assert set(result["by_level"]) == {str(lv) for lv in levels}
    assert sum(v["n_problems"] for v in result["by_level"].values()) == 20
    assert sum(v["n_problems"] for v in result["by_type"].values()) == 20


@pytest.mark.slow
def test_pass_at_k_with_samples(tiny_model_dir, mini_math, tmp_path):
    from p3.evaluate import EvaluateConfig, evaluate
    from p3.generation import GenerationConfig
    from p3.verify.grade import pass_at_k

    out, samples = str(tmp_path / "eval.json"), str(tmp_path / "s.parquet")
    res = evaluate(EvaluateConfig(problems=mini_math["test"], model=tiny_model_dir, out=out, n=4, k=2,
                                  completions_out=samples,
                                  generation=GenerationConfig(max_new_tokens=48, device="cpu", seed=3)))
    graded = contracts.read(samples, contracts.ROLLOUTS, unique_id=False).to_pylist()
    assert len(graded) == 80 and res["temperature"] == 0.8
    ids = storage.read_table(mini_math["test"]).column("id").to_pylist()
    want = sum(pass_at_k(4, sum(g["score"] == 1.0 for g in graded if g["id"] == i), 2) for i in ids) / len(ids)
    assert res["pass_at_k"] == pytest.approx(want)
    assert res == json.load(open(out))


def test_k_larger_than_n_is_refused(tiny_model_dir, mini_math, tmp_path):
    from p3.evaluate import EvaluateConfig, evaluate

    with pytest.raises(ValueError, match="--k: must be at most --n"):
        evaluate(EvaluateConfig(problems=mini_math["test"], model=tiny_model_dir, out=str(tmp_path / "e.json"), n=1, k=2))
