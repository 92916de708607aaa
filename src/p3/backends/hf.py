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
        """Every token's log-probability, one padded forward pass per batch of texts."""
        enc = [
            self.tokenizer(t, add_special_tokens=add_special_tokens, return_offsets_mapping=True,
                           truncation=True, max_length=self.max_len)
            for t in texts
        ]
        out: list[TokenScores | None] = [None] * len(texts)
        pad = self.tokenizer.pad_token_id
        for idx in self._batches([len(e["input_ids"]) for e in enc], "likelihood"):
            width = max(len(enc[i]["input_ids"]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):  # right padding: a causal model never looks right
                n = len(enc[i]["input_ids"])
                ids[r, :n] = torch.tensor(enc[i]["input_ids"])
                mask[r, :n] = 1
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
            for r, i in enumerate(idx):
                n = len(enc[i]["input_ids"])
                # Row by row keeps the float32 log-softmax at (T, V), not (B, T, V).
                lp = torch.log_softmax(logits[r, : n - 1].float(), dim=-1)
                target = ids[r, 1:n].to(lp.device)
                tok_lp = np.full(n, np.nan)
                tok_lp[1:] = lp.gather(1, target[:, None])[:, 0].double().cpu().numpy()
                offsets = np.asarray(enc[i]["offset_mapping"], dtype=np.int64).reshape(n, 2)
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
        sample = temperature > 0
        torch.manual_seed(seed)
        lengths = [len(tok(p, add_special_tokens=add_special_tokens)["input_ids"]) for p in prompts]
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
