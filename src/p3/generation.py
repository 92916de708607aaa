"""The inference settings that scoring and evaluation share (one group, as TRL's ModelConfig).

``ScoreConfig`` and ``EvaluateConfig`` each hold one :class:`GenerationConfig` as their
``generation`` field; the ``p3`` CLI flattens it into the same ``--backend``,
``--max-new-tokens``, … options both commands always had, and the pipeline's parameters
and the components' arguments reference these fields, so a setting's default and help
live here only. What differs between the two steps (how many samples, at which
temperature, in batches of how many) stays in the step's own config.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from p3 import checks, prompts
from p3.backends import BACKENDS


@dataclass
class GenerationConfig:
    backend: str = field(default="hf", metadata={"help": "inference engine", "choices": list(BACKENDS)})
    template: str = field(default="plain", metadata={"help": "prompt template", "choices": list(prompts.TEMPLATES)})
    max_new_tokens: int = field(default=512, metadata={"min": 1, "max": 1 << 20, "help": "token limit of each sampled completion"})
    top_p: float = field(default=1.0, metadata={"gt": 0.0, "max": 1.0, "help": "nucleus sampling"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:1 … (hf)"})
    dtype: str = field(default="auto", metadata={"help": "auto, float32, bfloat16, float16"})
    max_len: int = field(default=2048, metadata={"min": 1, "max": 1 << 20, "help": "truncate scored texts / prompts to this many tokens"})
    seed: int = field(default=0, metadata={"min": 0, "help": "sampling seed"})
    grade_timeout: float = field(default=10.0, metadata={"gt": 0.0, "help": "seconds per graded completion"})
    grade_workers: int = field(default=0, metadata={"min": 0, "max": 1024, "help": "grading processes (0 = all cores, at most 8)"})
    allow_weak_isolation: bool = field(default=False, metadata={
        "help": "grade APPS programs even when the sandbox cannot prove full isolation (bwrap); the level used "
                "is recorded in the rollouts table, the evaluation JSON and its metrics (default: refuse)"})
    tensor_parallel_size: int = field(default=1, metadata={"min": 1, "help": "vllm: GPUs one model is split over"})
    gpu_memory_utilization: float = field(default=0.9, metadata={"gt": 0.0, "max": 1.0, "help": "vllm: fraction of GPU memory to use"})

    def __post_init__(self) -> None:
        checks.validate(self)

    def workers(self) -> int:
        """Grading processes: ``grade_workers``, or all cores up to 8."""
        return self.grade_workers or min(8, os.cpu_count() or 2)

    def backend_options(self, batch_size: int) -> dict:
        """Constructor options of a backend (each backend takes what it knows)."""
        return dict(device=self.device, dtype=self.dtype, batch_size=batch_size, max_len=self.max_len,
                    tensor_parallel_size=self.tensor_parallel_size,
                    gpu_memory_utilization=self.gpu_memory_utilization, seed=self.seed)
