"""The one place that turns a problem row into model text.

Scoring, training, evaluation and rollouts all call these functions, so the policy is
always scored on exactly the text it is trained to produce and asked to continue.

A problem's reference solution is split into *steps*: its non-empty lines (the
paper's actions a_1..a_K). The target text is the steps joined by ``"\\n"``.

Templates:
- ``plain``: prefix = ``prompt + "\\n"``; the scored/trained text is
  ``prompt + "\\n" + "\\n".join(steps)`` exactly (MATH; an APPS row's prompt is first
  laid out as in the APPS paper by :func:`problem_text`).
- ``chat``: prefix = the tokenizer's chat template applied to one user message
  (the prompt) with the generation prompt; target as above.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

TEMPLATES = ("plain", "chat")


def solution_steps(solution: str | None) -> list[str]:
    """Non-empty lines of a reference solution, in order, unchanged."""
    return [line for line in (solution or "").split("\n") if line.strip()]


def target_text(row: dict) -> str:
    """What the policy is trained to write after the prefix: the steps, one per line."""
    return "\n".join(solution_steps(row["solution"]))


def problem_text(row: dict) -> str:
    """The problem as the model reads it: the prompt; for APPS in the APPS paper's layout
    (question, starter code, call-based vs standard-input hint, ``ANSWER:``)."""
    if row.get("task") != "apps":
        return row["prompt"]
    parts = ["QUESTION:", row["prompt"]]
    if row.get("starter_code"):
        parts += [row["starter_code"], "Use Call-Based format"]
    else:
        parts.append("Use Standard Input format")
    parts.append("ANSWER:")
    return "\n".join(parts)


def chat_messages(row: dict) -> list[dict]:
    """The conversation a chat model sees: one user turn holding the problem."""
    return [{"role": "user", "content": problem_text(row)}]


def prompt_text(row: dict, template: str, tokenizer: Any = None) -> str:
    """The prefix the model continues from (includes the separator before the answer)."""
    if template == "plain":
        return problem_text(row) + "\n"
    if template == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("--template chat needs a tokenizer with a chat template; use --template plain")
        return tokenizer.apply_chat_template(chat_messages(row), tokenize=False, add_generation_prompt=True)
    raise ValueError(f"unknown template {template!r} (choose from {', '.join(TEMPLATES)})")


def add_special_tokens(template: str) -> bool:
    """Whether tokenizing a prefix should add BOS: a chat template already writes its own."""
    return template == "plain"


def scored_text(row: dict, template: str, tokenizer: Any = None) -> tuple[str, list[tuple[int, int]]]:
    """The text scored for likelihood difficulty and the character span of each step.

    Spans are [start, end) into the text; the "\\n" separators belong to no step.
    """
    prefix = prompt_text(row, template, tokenizer)
    spans: list[tuple[int, int]] = []
    pos = len(prefix)
    for step in solution_steps(row["solution"]):
        spans.append((pos, pos + len(step)))
        pos += len(step) + 1
    return prefix + target_text(row), spans


def rows(table: pa.Table) -> list[dict]:
    """Problem rows as plain dicts (the form every function here takes)."""
    return table.to_pylist()
