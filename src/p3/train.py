"""Supervised fine-tuning on one epoch's selection: LoRA (default), QLoRA or full.

The text is :mod:`p3.prompts`' prefix + target; the prefix is masked out of the loss
(labels -100), so the policy learns to write solutions, not to repeat problems.
Training is the transformers ``Trainer`` (so ``torchrun``/``accelerate launch`` gives
multi-GPU for free); LoRA is peft's, with the paper's defaults (r=64, alpha=16,
dropout 0.1, lr 4e-4, weight decay 1e-4). QLoRA (4-bit NF4 base, bitsandbytes) is used by
default on a GPU; ``--qlora on`` uses it on any device where bitsandbytes can quantize to
4 bits, the CPU included (``pip install 'p3-kubeflow[qlora]'``).

The output dir is a loadable model: by default the merged weights (the next epoch's
scorer loads it like any model; after QLoRA, the dequantised 4-bit base plus the adapter,
i.e. the model that was trained), the adapter in ``adapter/``, the tokenizer and
``trainer_state.json``. Checkpoints go to ``--checkpoint-dir`` (default ``<out>.ckpt``
beside a local output) so ``--resume`` can continue an interrupted run. For an ``s3://``
output every checkpoint is also mirrored to ``<out>.ckpt`` in the bucket, so a retried
pod (empty disk) resumes from there.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any, Optional

from p3 import checks, contracts, prompts, storage
from p3.problems import load_problems
from p3.logs import get_logger, progress_enabled, step

log = get_logger("train")


@dataclass
class TrainConfig:
    problems: str = field(metadata={"io": "in", "help": "problems table (the training pool)"})
    selection: str = field(metadata={"io": "in", "help": "selection table: the ids to train on this epoch"})
    model: str = field(metadata={"io": "in", "help": "model to start from: dir, adapter dir, hub name or s3:// URI"})
    out: str = field(metadata={"io": "out", "help": "output model dir (local path or s3:// URI)"})
    lora: str = field(default="64,16,0.1", metadata={"help": "LoRA r,alpha,dropout"})
    full: bool = field(default=False, metadata={"help": "full fine-tuning instead of LoRA"})
    qlora: str = field(default="auto", metadata={"help": "4-bit base for LoRA: auto = on a GPU with bitsandbytes; on = "
                                                                 "wherever bitsandbytes quantizes (CPU too)",
                                                 "choices": ["auto", "on", "off"]})
    target_modules: str = field(default="all-linear", metadata={"help": "LoRA target modules (comma list or all-linear)"})
    lr: float = field(default=4e-4, metadata={"gt": 0.0, "help": "peak learning rate"})
    weight_decay: float = field(default=1e-4, metadata={"min": 0.0, "help": "AdamW weight decay"})
    scheduler: str = field(default="cosine", metadata={"help": "learning-rate schedule (transformers name)"})
    warmup_steps: int = field(default=0, metadata={"min": 0, "help": "linear warm-up steps"})
    epochs_per_round: float = field(default=1.0, metadata={"gt": 0.0, "help": "passes over the selection"})
    max_len: int = field(default=2048, metadata={"min": 1, "max": 1 << 20, "help": "cutoff length in tokens (prefix + target)"})
    batch_size: int = field(default=8, metadata={"min": 1, "max": 1 << 16, "help": "per-device batch size"})
    grad_accum: int = field(default=1, metadata={"min": 1, "help": "gradient accumulation steps"})
    max_steps: int = field(default=-1, metadata={"min": -1, "help": "stop after this many optimizer steps (-1 = full passes)"})
    template: str = field(default="plain", metadata={"help": "prompt template", "choices": list(prompts.TEMPLATES)})
    merge: bool = field(default=True, metadata={"help": "save merged weights (+ adapter/); --no-merge saves the adapter only"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "trade compute for memory on big models"})
    resume: bool = field(default=False, metadata={"help": "continue from the last checkpoint in --checkpoint-dir"})
    checkpoint_dir: Optional[str] = field(default=None, metadata={"io": "out", "help": "where checkpoints go (default <out>.ckpt, local)"})
    save_steps: int = field(default=200, metadata={"min": 1, "help": "checkpoint every N optimizer steps"})
    keep_checkpoints: bool = field(default=False, metadata={"help": "keep checkpoints after a successful run"})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda"})
    seed: int = field(default=0, metadata={"min": 0, "help": "seed for init, dropout and data order"})

    def __post_init__(self) -> None:
        checks.validate(self)


def encode_sft(rows: list[dict], tok, template: str, max_len: int) -> list[Optional[dict]]:
    """Token ids and labels per row: prefix tokens labelled -100, target + EOS learned.

    Rows whose target does not fit in ``max_len`` at all give None (nothing to learn).
    """
    special = prompts.add_special_tokens(template)
    out: list[Optional[dict]] = []
    for row in rows:
        prefix = prompts.prompt_text(row, template, tok)
        target = prompts.target_text(row)
        enc = tok(prefix + target, add_special_tokens=special, return_offsets_mapping=True)
        ids = list(enc["input_ids"]) + [tok.eos_token_id]
        # A token is learned only if it starts inside the target (offset-based, so BPE merges
        # across the boundary stay masked); special tokens have offsets (0, 0).
        labels = [t if s >= len(prefix) and e > s else -100 for t, (s, e) in zip(enc["input_ids"], enc["offset_mapping"])]
        labels.append(tok.eos_token_id)
        ids, labels = ids[:max_len], labels[:max_len]
        out.append({"input_ids": ids, "labels": labels} if any(x != -100 for x in labels) else None)
    return out


def collate(features: list[dict], pad_id: int) -> dict:
    """Right-pad a batch: pad ids, attention mask 0, labels -100."""
    import torch

    width = max(len(f["input_ids"]) for f in features)
    ids = torch.full((len(features), width), pad_id, dtype=torch.long)
    labels = torch.full((len(features), width), -100, dtype=torch.long)
    mask = torch.zeros((len(features), width), dtype=torch.long)
    for r, f in enumerate(features):
        n = len(f["input_ids"])
        ids[r, :n] = torch.tensor(f["input_ids"])
        labels[r, :n] = torch.tensor(f["labels"])
        mask[r, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def selected_rows(cfg: TrainConfig) -> list[dict]:
    """The problem rows named by the selection, in rank order (unknown ids are an error)."""
    problems = load_problems(cfg.problems)
    selection = contracts.read(cfg.selection, contracts.SELECTION)
    by_id = {r["id"]: r for r in prompts.rows(problems)}
    picks = sorted(selection.to_pylist(), key=lambda r: r["rank"])
    for i, pick in enumerate(picks):
        if pick["id"] not in by_id:
            raise contracts.ContractError(cfg.selection, "id", f"id {pick['id']!r} is not in {cfg.problems}", row=i + 1)
    if not picks:
        raise ValueError(f"{cfg.selection}: the selection is empty, nothing to train on")
    return [by_id[p["id"]] for p in picks]


def parse_lora(spec: str) -> tuple[int, int, float]:
    try:
        r, alpha, dropout = spec.split(",")
        return int(r), int(alpha), float(dropout)
    except ValueError:
        raise ValueError(f"--lora must be r,alpha,dropout (e.g. 64,16,0.1), got {spec!r}") from None


def train_device(cfg: TrainConfig) -> str:
    """The device this process trains on: its rank's GPU, else the CPU."""
    import torch

    if cfg.device != "cpu" and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return "cpu"


def can_quantize_4bit(device: str) -> bool:
    """Whether bitsandbytes is installed and quantizes to NF4 on ``device``: asked by doing
    it on a small tensor, since which devices a bitsandbytes build supports varies by release."""
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        return False
    import torch

    from p3.backends import quiet_model_libraries

    quiet_model_libraries()
    try:
        import bitsandbytes.functional as bnbf

        bnbf.quantize_4bit(torch.ones(64, 64, device=device), quant_type="nf4")
    except Exception as exc:  # an unsupported device raises from the kernel dispatch, of any type
        log.debug(f"bitsandbytes cannot quantize on {device}: {exc}")
        return False
    return True


def use_qlora(cfg: TrainConfig) -> bool:
    """``auto``: on a GPU with bitsandbytes (the paper's setting; on a CPU 4-bit only saves memory
    that a model small enough to train there does not need, at a slower step). ``on``: wherever
    bitsandbytes quantizes, else an error."""
    if cfg.full or cfg.qlora == "off":
        return False
    device = train_device(cfg)
    if cfg.qlora == "auto" and device == "cpu":
        return False
    available = can_quantize_4bit(device)
    if cfg.qlora == "on" and not available:
        raise RuntimeError(f"--qlora on: bitsandbytes cannot quantize to 4 bits on {device} "
                           "(pip install 'p3-kubeflow[qlora]'), or use --qlora off")
    return available


def checkpoint_dir(cfg: TrainConfig) -> str:
    if cfg.checkpoint_dir:
        return cfg.checkpoint_dir
    if storage.is_remote(cfg.out):
        digest = hashlib.sha1(cfg.out.encode()).hexdigest()[:12]
        return os.path.join(tempfile.gettempdir(), f"p3-ckpt-{digest}")
    return cfg.out.rstrip("/") + ".ckpt"


def remote_mirror(cfg: TrainConfig) -> Optional[str]:
    """Where checkpoints of a remote output are mirrored (None for a local output)."""
    return cfg.out.rstrip("/") + ".ckpt" if storage.is_remote(cfg.out) and not cfg.checkpoint_dir else None


def mirror_checkpoints(local: str, remote: str):
    """A TrainerCallback that uploads the newest checkpoint to ``remote`` after every save."""
    from transformers import TrainerCallback

    class _Mirror(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            newest = os.path.join(local, f"checkpoint-{state.global_step}")
            fs, inner = storage.filesystem(remote)
            if fs.exists(inner):
                fs.rm(inner, recursive=True)  # keep one checkpoint, like save_total_limit=1
            storage.upload_dir(newest, f"{remote}/checkpoint-{state.global_step}")

    return _Mirror()


def prepare_model(cfg: TrainConfig, qlora: bool):
    """The model to train (peft-wrapped for LoRA) and its tokenizer."""
    import torch

    from p3.backends import load_causal_lm

    quant = None
    device = "cpu"  # the Trainer moves it to its (per-rank) device
    cuda = train_device(cfg) != "cpu"
    dtype = "bfloat16" if cuda and torch.cuda.is_bf16_supported() else "float32"
    if qlora:
        from transformers import BitsAndBytesConfig

        # 4-bit weights are placed on their device when loaded and cannot be moved after
        device = train_device(cfg)
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=getattr(torch, dtype))
    model, tok = load_causal_lm(cfg.model, device, dtype, quantization_config=quant)
    tok.padding_side = "right"
    if cfg.full:
        return model.train(), tok
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if qlora:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    r, alpha, dropout = parse_lora(cfg.lora)
    targets: Any = cfg.target_modules if cfg.target_modules == "all-linear" else cfg.target_modules.split(",")
    lora = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, task_type="CAUSAL_LM")
    return get_peft_model(model, lora), tok


def train(cfg: TrainConfig) -> None:
    """Fine-tune ``cfg.model`` on the selected problems and save the result to ``cfg.out``."""
    import torch
    from transformers import Trainer, TrainingArguments, set_seed

    from p3.backends import cpu_threads

    rows = selected_rows(cfg)
    qlora = use_qlora(cfg)
    # The LoRA weights are drawn in prepare_model, before the Trainer seeds: seed here so
    # the same selection always gives the same model.
    set_seed(cfg.seed)
    model, tok = prepare_model(cfg, qlora)
    feats = encode_sft(rows, tok, cfg.template, cfg.max_len)
    dataset = [f for f in feats if f is not None]
    if len(dataset) < len(feats):
        log.warning(f"{len(feats) - len(dataset)} of {len(feats)} problems have no target tokens within "
                    f"--max-len {cfg.max_len}; skipped")
    if not dataset:
        raise ValueError(f"nothing to train on: no selected problem fits in --max-len {cfg.max_len}")
    ckpt = checkpoint_dir(cfg)
    cuda = train_device(cfg) != "cpu"
    args = TrainingArguments(
        output_dir=ckpt, per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr, weight_decay=cfg.weight_decay, lr_scheduler_type=cfg.scheduler,
        warmup_steps=cfg.warmup_steps, num_train_epochs=cfg.epochs_per_round, max_steps=cfg.max_steps,
        save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=1, logging_steps=10,
        report_to="none", seed=cfg.seed, data_seed=cfg.seed, use_cpu=not cuda,
        bf16=cuda and torch.cuda.is_bf16_supported(), **_checkpointing_arg(cfg.gradient_checkpointing),
        remove_unused_columns=False, dataloader_pin_memory=cuda,
        disable_tqdm=not progress_enabled(),
    )
    mirror = remote_mirror(cfg)
    trainer = Trainer(model=model, args=args, train_dataset=dataset,
                      data_collator=lambda batch: collate(batch, tok.pad_token_id),
                      callbacks=[mirror_checkpoints(ckpt, mirror)] if mirror else None)
    if cfg.resume and mirror and last_complete_checkpoint(ckpt) is None and storage.exists(mirror) and trainer.is_world_process_zero():
        with storage.local_dir(mirror) as fetched:
            shutil.copytree(fetched, ckpt, dirs_exist_ok=True)
    trainer.accelerator.wait_for_everyone()  # under torchrun: every rank sees the fetched checkpoint
    last = last_complete_checkpoint(ckpt) if cfg.resume else None
    resume = last is not None
    with step(log, "train") as counts, cpu_threads(None if cuda else model):
        result = trainer.train(resume_from_checkpoint=last)
        counts.update(examples=len(dataset), steps=trainer.state.global_step,
                      loss=round(result.training_loss, 4), mode="full" if cfg.full else ("qlora" if qlora else "lora"),
                      resumed=resume, data=data_digest(dataset))
        if args.world_size > 1:  # under torchrun every rank logs: say which, so the lines can be compared
            counts.update(rank=f"{args.process_index}/{args.world_size}")
    if trainer.is_world_process_zero():
        with step(log, "save") as counts:
            save_trained(trainer, tok, cfg, qlora)
            counts.update(out=cfg.out, rank=args.process_index)
        if not cfg.keep_checkpoints:
            shutil.rmtree(ckpt, ignore_errors=True)
            if mirror and storage.exists(mirror):
                fs, inner = storage.filesystem(mirror)
                fs.rm(inner, recursive=True)


def data_digest(dataset: list[dict]) -> str:
    """A short hash of the encoded examples in order: equal on every rank of a torchrun run
    (each rank encodes the selection itself; the sampler then deals the examples out)."""
    ids = json.dumps([f["input_ids"] for f in dataset], separators=(",", ":"))
    return hashlib.sha1(ids.encode()).hexdigest()[:12]


def save_trained(trainer, tok, cfg: TrainConfig, qlora: bool) -> None:
    """Write the output dir: merged model (+ adapter/) or the adapter alone, and the state."""
    from p3.backends import load_causal_lm, staged_model_dir

    model = trainer.model
    tok.padding_side = "left"
    with staged_model_dir(cfg.out) as tmp:
        if cfg.full:
            model.save_pretrained(tmp)
        else:
            adapter = os.path.join(tmp, "adapter") if cfg.merge else tmp
            model.save_pretrained(adapter)
            tok.save_pretrained(adapter)
            _point_adapter_at(adapter, cfg.model)
            if cfg.merge:
                merged = merge_into_dequantised_base(model, adapter) if qlora else model.merge_and_unload()
                merged.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        trainer.state.save_to_json(os.path.join(tmp, "trainer_state.json"))


def merge_into_dequantised_base(model, adapter_dir: str):
    """The full-precision model equal to the trained one: the base with its 4-bit weights
    dequantised, plus the adapter, merged. (Merging into the original base instead would add
    back the NF4 rounding the adapter was trained around: a different model.)"""
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnbf
    import torch
    from peft import PeftModel

    from p3.backends import adapter_base, load_causal_lm

    base, _ = load_causal_lm(adapter_base(adapter_dir), "cpu", "auto")
    weights = dict(base.named_parameters())
    with torch.no_grad():
        for name, module in model.get_base_model().named_modules():
            if isinstance(module, bnb.nn.Linear4bit):
                # training mode never repacks the weight for the CPU inference kernel, so this is
                # the layout the quant_state describes
                weight = bnbf.dequantize_4bit(module.weight.data, module.weight.quant_state)
                target = weights[name.removesuffix(".base_layer") + ".weight"]
                target.copy_(weight.to(device=target.device, dtype=target.dtype))
    return PeftModel.from_pretrained(base, adapter_dir).merge_and_unload().eval()


def _point_adapter_at(adapter_dir: str, base: str) -> None:
    """Record the base as the user named it (not a temp download) so the adapter reloads."""
    path = os.path.join(adapter_dir, "adapter_config.json")
    with open(path) as fh:
        conf = json.load(fh)
    conf["base_model_name_or_path"] = os.path.abspath(base) if os.path.exists(base) else base
    with open(path, "w") as fh:
        json.dump(conf, fh, indent=2)


def _checkpointing_arg(on: bool) -> dict:
    """transformers 5 renamed gradient_checkpointing to activation_checkpointing."""
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return {"activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing": on}


def last_complete_checkpoint(path: str) -> Optional[str]:
    """The newest ``checkpoint-N`` in ``path`` that was saved whole, else None.

    The Trainer writes ``trainer_state.json`` last and deletes the older checkpoint only after
    it, so a run killed while saving leaves the previous checkpoint whole and a newer one
    without that file, which transformers' own choice (the highest N) would try to resume.
    """
    if not os.path.isdir(path):
        return None
    whole = [d for d in os.listdir(path) if d.startswith("checkpoint-") and d.split("-", 1)[1].isdigit()
             and os.path.exists(os.path.join(path, d, "trainer_state.json"))]
    return os.path.join(path, max(whole, key=lambda d: int(d.split("-", 1)[1]))) if whole else None
