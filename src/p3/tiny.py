"""A tiny offline causal LM for tests and the local demo (no downloads, ever).

A Llama-style model of a few layers with a *character-level* tokenizer built from the
data (printable ASCII, newline, and every other character seen in ``--train-on``),
saved as a normal transformers model dir: ``AutoTokenizer`` and
``AutoModelForCausalLM.from_pretrained(DIR)`` load it like any hub model.

``--train-on problems.parquet --steps N`` warms it up with the same SFT text the
trainer uses (prompt masked out of the loss), so the demo policy starts with some
skill on the easy mini-MATH levels instead of emitting noise.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Optional

from p3 import checks, prompts
from p3.problems import load_problems
from p3.logs import get_logger, progress, step

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:\n{% endif %}"
)

log = get_logger("tiny")


@dataclass
class TinyConfig:
    out: str = field(metadata={"io": "out", "help": "output model dir (local path or s3:// URI)"})
    train_on: Optional[str] = field(default=None, metadata={"io": "in", "help": "problems table for the vocabulary and the warm-up"})
    steps: int = field(default=300, metadata={"min": 0, "help": "warm-up optimizer steps on the train_on table (0 = none)"})
    layers: int = field(default=2, metadata={"min": 1, "max": 64, "help": "transformer layers"})
    hidden: int = field(default=128, metadata={"min": 1, "max": 1 << 14, "help": "hidden size"})
    heads: int = field(default=4, metadata={"min": 1, "max": 256, "help": "attention heads"})
    max_len: int = field(default=512, metadata={"min": 1, "max": 1 << 20, "help": "max positions, and the warm-up truncation length"})
    batch_size: int = field(default=32, metadata={"min": 1, "max": 1 << 16, "help": "warm-up batch size"})
    lr: float = field(default=3e-3, metadata={"gt": 0.0, "help": "warm-up peak learning rate (cosine decay, short warm-up)"})
    seed: int = field(default=0, metadata={"min": 0, "help": "seed for the weights and the warm-up order"})
    threads: int = field(default=0, metadata={"min": 0, "help": "torch CPU threads for the warm-up (0 = auto: 1 for a tiny model)"})

    def __post_init__(self) -> None:
        checks.validate(self)


def build_tokenizer(texts: list[str] = ()):
    """A character-level fast tokenizer: one token per character, BOS added, offsets exact."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    chars = [chr(c) for c in range(32, 127)] + ["\n", "\t"]
    seen = set(chars)
    for text in texts:
        for ch in text:
            if ch not in seen:
                seen.add(ch)
                chars.append(ch)
    vocab = {t: i for i, t in enumerate(SPECIALS + chars)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        clean_up_tokenization_spaces=False, model_max_length=1 << 20,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_model(tok, cfg: TinyConfig):
    """A freshly initialised Llama-style causal LM sized by ``cfg``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(cfg.seed)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=cfg.hidden, intermediate_size=cfg.hidden * 3,
        num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.heads,
        max_position_embeddings=cfg.max_len, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    return model


def warm_up(model, tok, rows: list[dict], cfg: TinyConfig) -> float:
    """Plain SFT loop (no Trainer: it is the cheapest way to spend a few hundred CPU steps).

    Returns the mean loss of the last 20 steps.
    """
    import torch

    from p3.train import collate, encode_sft

    feats = [f for f in encode_sft(rows, tok, "plain", cfg.max_len) if f is not None]
    if not feats:
        raise ValueError(f"{cfg.train_on}: no trainable rows for the warm-up")
    rng = random.Random(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.98))
    warm = max(1, cfg.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps))
    )
    model.train()
    losses: list[float] = []
    order: list[int] = []
    for _ in progress(range(cfg.steps), "warm-up", unit="step"):
        if len(order) < cfg.batch_size:
            more = list(range(len(feats)))
            rng.shuffle(more)
            order += more
        batch = collate([feats[i] for i in order[: cfg.batch_size]], tok.pad_token_id)
        del order[: cfg.batch_size]
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    tail = losses[-20:]
    return sum(tail) / len(tail)


def build_tiny_model(cfg: TinyConfig) -> None:
    """Build, optionally warm up, and save the tiny model + tokenizer to ``cfg.out``."""
    from p3.backends import cpu_threads, staged_model_dir

    rows: list[dict] = []
    if cfg.train_on:
        rows = prompts.rows(load_problems(cfg.train_on))
    with step(log, "tiny model") as counts:
        tok = build_tokenizer([r["prompt"] + r["solution"] for r in rows])
        model = build_model(tok, cfg)
        counts.update(vocab=len(tok), params=sum(p.numel() for p in model.parameters()))
        if rows and cfg.steps > 0:
            with cpu_threads(model, cfg.threads):
                counts["warmup_loss"] = round(warm_up(model, tok, rows, cfg), 4)
            counts["steps"] = cfg.steps
        with staged_model_dir(cfg.out) as tmp:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)


