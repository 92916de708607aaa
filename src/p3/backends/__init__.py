"""Model backends: one interface over transformers (``hf``) and vLLM (``vllm``).

A backend answers the two questions the P3 steps ask of a policy:

- :meth:`Backend.token_logprobs`: for each text, every token's character span and its
  log-probability given the tokens before it (one forward pass per text);
- :meth:`Backend.generate`: ``n`` sampled (or greedy) continuations per prompt.

Everything that loads a model goes through :func:`load_causal_lm`, which understands a
full model dir, a LoRA adapter dir (``adapter_config.json`` -> base + adapter), a hub
name, and ``s3://`` URIs (downloaded with :func:`p3.storage.local_dir`).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from p3 import storage
from p3.logs import progress_enabled

BACKENDS = ("hf", "vllm")


@dataclass
class TokenScores:
    """Per-token results for one text: ``offsets[i]`` = (start, end) characters of token i,
    ``logprobs[i]`` = log p(token i | tokens < i); NaN where there is no prediction
    (the first token) and for special tokens (offsets (0, 0))."""

    offsets: np.ndarray  # (T, 2) int64
    logprobs: np.ndarray  # (T,) float64


class Backend(Protocol):
    tokenizer: Any

    def token_logprobs(self, texts: list[str], add_special_tokens: bool = True) -> list[TokenScores]: ...

    def generate(
        self, prompts: list[str], n: int = 1, temperature: float = 0.0, max_new_tokens: int = 256,
        seed: int = 0, top_p: float = 1.0, add_special_tokens: bool = True,
    ) -> list[list[str]]: ...

    def close(self) -> None: ...


def get_backend(name: str, model: str, **options: Any) -> Backend:
    """Open ``model`` with backend ``name`` (``hf`` or ``vllm``); options go to its constructor."""
    if name == "hf":
        from p3.backends.hf import HFBackend

        return HFBackend(model, **options)
    if name == "vllm":
        from p3.backends.vllm import VLLMBackend

        return VLLMBackend(model, **options)
    raise ValueError(f"unknown backend {name!r} (choose from {', '.join(BACKENDS)})")


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    if device in ("auto", "", None):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"--device {device}: no CUDA device is visible (use --device cpu or auto)")
    return device


def resolve_dtype(dtype: str, device: str):
    """``auto`` -> bfloat16 on a GPU that supports it, float32 elsewhere."""
    import torch

    if dtype == "auto":
        if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, dtype)


def is_adapter_dir(path: str) -> bool:
    """A peft adapter folder (adapter_config.json) without a full model config."""
    return os.path.exists(os.path.join(path, "adapter_config.json")) and not os.path.exists(
        os.path.join(path, "config.json")
    )


def adapter_base(path: str) -> str:
    """The base model an adapter folder was trained on."""
    with open(os.path.join(path, "adapter_config.json")) as fh:
        return json.load(fh)["base_model_name_or_path"]


def quiet_model_libraries() -> None:
    """transformers' own load/save bars follow P3_PROGRESS too (CI logs stay short); and
    bitsandbytes (imported by peft) does not warn, on AVX512-BF16 CPUs, that its faster 4-bit
    *inference* kernel package is missing: P3 never runs a 4-bit model for inference."""
    import logging

    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    if not progress_enabled():
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def load_tokenizer(path: str):
    """The tokenizer of a model folder, padded on the left (generation needs that)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def has_tokenizer(path: str) -> bool:
    """Whether a (local) model or adapter dir carries its own tokenizer."""
    return any(os.path.exists(os.path.join(path, f)) for f in ("tokenizer.json", "tokenizer_config.json"))


def load_causal_lm(path_or_uri: str, device: str = "auto", dtype: str = "auto", merge: bool = True,
                   quantization_config: Any = None):
    """Load ``(model, tokenizer)`` from a model dir, an adapter dir, a hub name or s3:// URI.

    An adapter dir loads its base (itself any of these forms) and applies the adapter;
    ``merge`` folds it into the weights (what inference wants). The model is in eval mode.
    """
    from transformers import AutoModelForCausalLM

    quiet_model_libraries()
    device = resolve_device(device)
    with storage.local_dir(path_or_uri) as path:
        if path.startswith((os.sep, ".", "~")) and not os.path.isdir(os.path.expanduser(path)):
            raise FileNotFoundError(f"model dir {path_or_uri} does not exist")
        if is_adapter_dir(path):
            from peft import PeftModel

            # the base merged: it may itself be an adapter dir (a --no-merge run trained on one)
            base, tok = load_causal_lm(adapter_base(path), device, dtype,
                                       quantization_config=quantization_config)
            if has_tokenizer(path):
                tok = load_tokenizer(path)
            model = PeftModel.from_pretrained(base, path)
            if merge:
                model = model.merge_and_unload()
            return model.eval(), tok
        kwargs: dict[str, Any] = {"dtype": resolve_dtype(dtype, device)}
        if quantization_config is not None:
            kwargs.update(quantization_config=quantization_config, device_map={"": device})
        try:
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        except OSError as exc:
            raise FileNotFoundError(f"cannot load a model from {path_or_uri}: {exc}") from exc
        if quantization_config is None:
            model = model.to(device)
        tok = load_tokenizer(path)
    return model.eval(), tok


@contextlib.contextmanager
def staged_model_dir(out: str):
    """Yield an empty local folder; when the block succeeds, publish it as ``out`` whole.

    Local outputs are staged beside ``out`` (same filesystem), remote ones in /tmp and
    uploaded. Files are made world-readable: the next step may run as another user.
    """
    quiet_model_libraries()
    parent = None if storage.is_remote(out) else os.path.dirname(os.path.abspath(out.removeprefix("file://")))
    if parent:
        os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".p3-model-", dir=parent) as tmp:
        yield tmp
        for root, dirs, files in os.walk(tmp):
            os.chmod(root, 0o755)
            for name in files:
                os.chmod(os.path.join(root, name), 0o644)
        storage.upload_dir(tmp, out)


SMALL_MODEL_PARAMS = 100_000_000


@contextlib.contextmanager
def cpu_threads(model: Any = None, threads: int = 0):
    """Torch CPU threads for one step, restored afterwards.

    ``threads`` > 0 (or env ``P3_TORCH_THREADS``) wins. Otherwise a small model
    (< 100M parameters: the tiny demo policy, MiniLM) runs single-threaded: on a busy
    2-core machine OpenMP spin-waits made 2 threads 3-10x slower than 1 (tiny-model
    training step 1.2 s vs 0.08 s; MiniLM on 500 prompts 5-7 s vs 2 s). Big models keep
    torch's default.
    """
    import torch

    before = torch.get_num_threads()
    want = threads or int(os.environ.get("P3_TORCH_THREADS", "0") or 0)
    if not want and model is not None and sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMS:
        want = 1
    if want:
        torch.set_num_threads(want)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def opened(name: str, model: str, **options: Any):
    """``with opened("hf", path) as backend:`` — sensible CPU threads while open; closes
    (frees the GPU) at the end."""
    backend = get_backend(name, model, **options)
    try:
        with cpu_threads(getattr(backend, "model", None)):
            yield backend
    finally:
        backend.close()
