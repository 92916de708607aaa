"""The transformers backend: batched forward passes and batched generate, CPU or GPU."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from p3.backends import TokenScores, load_causal_lm, resolve_device
from p3.logs import progress


class HFBackend:
    """A causal LM held in memory; see :class:`p3.backends.Backend`.

    ``batch_size`` texts go through one forward (or one ``generate``) at a time; texts are
    sorted by length first so that a batch wastes little on padding.
    """

    def __init__(self, model: str, device: str = "auto", dtype: str = "auto", batch_size: int = 16,
                 max_len: int = 2048, **_ignored: Any):
        self.device = resolve_device(device)
        self.model, self.tokenizer = load_causal_lm(model, self.device, dtype)
        self.batch_size = max(1, batch_size)
        self.max_len = max_len

    def close(self) -> None:
        del self.model
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()

    def _batches(self, lengths: list[int], desc: str):
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        starts = range(0, len(order), self.batch_size)
        for s in progress(starts, desc, total=len(starts), unit="batch"):
            yield order[s : s + self.batch_size]

    @torch.inference_mode()
    def token_logprobs(self, texts: list[str], add_special_tokens: bool = True) -> list[TokenScores]:
        """Every token's log-probability, one forward pass per batch of texts.

        Right padding and no attention mask: in a causal model a real token never sees the
        padding after it, so the mask is redundant and sdpa can take its causal fast path.
        """
        self.tokenizer.truncation_side = "right"  # keep the prompt and the first steps
        enc = self.tokenizer(texts, add_special_tokens=add_special_tokens, return_offsets_mapping=True,
                             truncation=True, max_length=self.max_len)
        all_ids, all_offsets = enc["input_ids"], enc["offset_mapping"]
        out: list[TokenScores | None] = [None] * len(texts)
        pad = self.tokenizer.pad_token_id
        for idx in self._batches([len(i) for i in all_ids], "likelihood"):
            lengths = [len(all_ids[i]) for i in idx]
            width = max(lengths)
            ids = torch.tensor([all_ids[i] + [pad] * (width - n) for i, n in zip(idx, lengths)], device=self.device)
            logits = self.model(input_ids=ids, use_cache=False).logits
            # log p(token t) = logit[t-1, token t] - logsumexp(logit[t-1]); float32 for the sum.
            # Row by row when the vocabulary is big, so memory stays (T, V) rather than (B, T, V).
            rows = [slice(None)] if logits.numel() <= (1 << 26) else [slice(r, r + 1) for r in range(len(idx))]
            picked = []
            for sl in rows:
                lg = logits[sl, :-1].float()
                tgt = ids[sl, 1:, None]
                picked.append((lg.gather(-1, tgt)[..., 0] - torch.logsumexp(lg, -1)).double().cpu())
            lp = torch.cat(picked).numpy()
            for r, (i, n) in enumerate(zip(idx, lengths)):
                tok_lp = np.full(n, np.nan)
                tok_lp[1:] = lp[r, : n - 1]
                offsets = np.asarray(all_offsets[i], dtype=np.int64).reshape(n, 2)
                out[i] = TokenScores(offsets=offsets, logprobs=tok_lp)
        return out  # type: ignore[return-value]

    @torch.inference_mode()
    def generate(self, prompts: list[str], n: int = 1, temperature: float = 0.0, max_new_tokens: int = 256,
                 seed: int = 0, top_p: float = 1.0, add_special_tokens: bool = True) -> list[list[str]]:
        """``n`` continuations per prompt: greedy when temperature is 0 (n copies), else sampled.

        Batched with left padding and the KV cache; sampling is reproducible per seed.
        """
        tok = self.tokenizer
        tok.padding_side = "left"
        tok.truncation_side = "left"  # an over-long prompt loses its start, never the part just before the answer
        sample = temperature > 0
        torch.manual_seed(seed)
        lengths = [len(ids) for ids in tok(prompts, add_special_tokens=add_special_tokens)["input_ids"]]
        out: list[list[str]] = [[] for _ in prompts]
        gen_kwargs: dict[str, Any] = dict(
            max_new_tokens=max_new_tokens, do_sample=sample, pad_token_id=tok.pad_token_id,
            eos_token_id=self.model.generation_config.eos_token_id or tok.eos_token_id,
        )
        if sample:
            gen_kwargs.update(temperature=temperature, top_p=top_p, top_k=0, num_return_sequences=n)
        else:
            gen_kwargs.update(temperature=None, top_p=None, top_k=None)
        for idx in self._batches(lengths, "generate"):
            enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True,
                      add_special_tokens=add_special_tokens, truncation=True, max_length=self.max_len)
            enc = {k: v.to(self.device) for k, v in enc.items()}
            seqs = self.model.generate(**enc, **gen_kwargs)
            texts = tok.batch_decode(seqs[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            per = n if sample else 1
            for r, i in enumerate(idx):
                got = texts[r * per : (r + 1) * per]
                out[i] = got if sample else got * n
        return out
