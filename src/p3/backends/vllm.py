"""The vLLM backend (GPU images): ``vllm.LLM`` for rollouts and prompt log-probs.

vllm is imported only here, only when this backend is chosen. Likelihood uses
``prompt_logprobs``: we tokenize with the model's HF tokenizer (for character offsets)
and hand vLLM the token ids, so its log-probs line up with our offsets token for token.
A LoRA adapter dir is served as base model + ``LoRARequest`` (no merge needed).

Written against vLLM 0.33 (``pyproject.toml``'s ``gpu`` extra, ``images/p3-vllm.Dockerfile``):
the calls are checked in tests/test_backends.py against the signatures read from that
release's source (tests/fixtures/vllm_api.json); what only a GPU run can show is listed in
docs/models.md.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
from typing import Any

import numpy as np

from p3 import storage
from p3.backends import TokenScores, adapter_base, has_tokenizer, is_adapter_dir, load_tokenizer

INSTALL_HINT = "the vllm backend needs vLLM (Linux + NVIDIA GPU): pip install 'p3-kubeflow[gpu]', or use --backend hf"


def import_vllm():
    try:
        import vllm
    except ImportError as exc:
        raise RuntimeError(f"{INSTALL_HINT} ({exc})") from None
    return vllm


LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def _lora_rank(adapter_dir: str) -> int:
    with open(os.path.join(adapter_dir, "adapter_config.json")) as fh:
        r = int(json.load(fh).get("r", 16))
    # vLLM takes max_lora_rank from a fixed set (vllm/config/lora.py MaxLoRARanks): the smallest that fits
    rank = next((x for x in LORA_RANKS if x >= r), None)
    if rank is None:
        raise ValueError(f"{adapter_dir}: LoRA rank {r} is above vLLM's largest max_lora_rank {LORA_RANKS[-1]}; "
                         "merge the adapter (p3 train without --no-merge) or use --backend hf")
    return rank


def _lora_request_class(vllm: Any):
    # not exported by the vllm package itself (0.33's lazy top-level names omit it)
    return importlib.import_module(f"{vllm.__name__}.lora.request").LoRARequest


class VLLMBackend:
    """See :class:`p3.backends.Backend`. ``vllm_module`` lets tests hand in a stand-in."""

    def __init__(self, model: str, tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.9,
                 dtype: str = "auto", max_len: int = 2048, seed: int = 0, vllm_module: Any = None, **_ignored: Any):
        self.vllm = vllm_module or import_vllm()
        self._stack = contextlib.ExitStack()
        try:
            self._open(model, tensor_parallel_size, gpu_memory_utilization, dtype, max_len, seed)
        except BaseException:
            self._stack.close()  # downloaded model dirs go with a failed start too
            raise
        self.max_len = max_len

    def _open(self, model: str, tensor_parallel_size: int, gpu_memory_utilization: float, dtype: str,
              max_len: int, seed: int) -> None:
        path = self._stack.enter_context(storage.local_dir(model))  # kept until close()
        self.lora_request = None
        base = path
        kwargs: dict[str, Any] = {}
        if is_adapter_dir(path):
            base = self._stack.enter_context(storage.local_dir(adapter_base(path)))
            if is_adapter_dir(base):
                raise ValueError(f"{model}: its base {adapter_base(path)} is itself an adapter; vLLM serves one adapter "
                                 "on a full model: merge the base first (p3 train without --no-merge)")
            kwargs.update(enable_lora=True, max_lora_rank=_lora_rank(path))
            self.lora_request = _lora_request_class(self.vllm)("p3-adapter", 1, path)
        self.tokenizer = load_tokenizer(path if has_tokenizer(path) else base)
        self.llm = self.vllm.LLM(model=base, tensor_parallel_size=tensor_parallel_size,
                                 gpu_memory_utilization=gpu_memory_utilization, dtype=dtype, max_model_len=max_len,
                                 seed=seed, **kwargs)

    def close(self) -> None:
        self.llm = None
        self._stack.close()

    def token_logprobs(self, texts: list[str], add_special_tokens: bool = True) -> list[TokenScores]:
        """Log-prob of every prompt token via ``prompt_logprobs`` (max_tokens=1: nothing generated)."""
        enc = [self.tokenizer(t, add_special_tokens=add_special_tokens, return_offsets_mapping=True,
                              truncation=True, max_length=self.max_len - 1) for t in texts]
        params = self.vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        requests = [{"prompt_token_ids": list(e["input_ids"])} for e in enc]
        outputs = self.llm.generate(requests, params, lora_request=self.lora_request, use_tqdm=False)
        result = []
        for e, out in zip(enc, outputs):
            ids = list(e["input_ids"])
            lps = np.full(len(ids), np.nan)
            for i, entry in enumerate(out.prompt_logprobs or []):
                if entry is not None and i < len(ids) and ids[i] in entry:
                    lps[i] = entry[ids[i]].logprob  # the prompt's own token is always in the dict
            offsets = np.asarray(e["offset_mapping"], dtype=np.int64).reshape(len(ids), 2)
            result.append(TokenScores(offsets=offsets, logprobs=lps))
        return result

    def generate(self, prompts: list[str], n: int = 1, temperature: float = 0.0, max_new_tokens: int = 256,
                 seed: int = 0, top_p: float = 1.0, add_special_tokens: bool = True) -> list[list[str]]:
        """n samples per prompt in one ``LLM.generate`` call (vLLM schedules the batch itself).

        Greedy (temperature 0) asks for one sample and repeats it n times, as the hf backend does.
        """
        greedy = temperature <= 0
        params = self.vllm.SamplingParams(n=1 if greedy else n, temperature=max(temperature, 0.0), top_p=top_p,
                                          max_tokens=max_new_tokens, seed=seed)
        # vLLM refuses prompts longer than the context: keep the end (the part before the answer).
        keep = max(1, self.max_len - max_new_tokens)
        requests = [{"prompt_token_ids": list(ids[-keep:])}
                    for ids in self.tokenizer(prompts, add_special_tokens=add_special_tokens)["input_ids"]]
        outputs = self.llm.generate(requests, params, lora_request=self.lora_request, use_tqdm=False)
        return [[c.text for c in out.outputs] * (n if greedy else 1) for out in outputs]
