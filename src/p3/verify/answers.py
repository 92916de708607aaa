"""Where a MATH answer is in a text: the final ``\\boxed{…}`` or "final answer is" statement.

String-only and free of project imports, so that both the problem tables (``p3.sources``,
the reference answer of a solution) and the grader (``p3.verify.math``) can use it.

Rules (docs/data.md, "MATH grading", says why):

- A box is ``\\boxed{…}`` or ``\\fbox{…}`` with balanced braces, or MATH's brace-less
  ``\\boxed 5`` (up to the next ``$`` or line end).
- The *final boxes* are the last box and every box before it that is joined to it by
  separators only: blanks, punctuation, math, ``\\quad``, ``\\text{and}``, "and", "or"; a
  word of prose in between ("so", "wait", "for part") ends the run. Several final boxes
  are one answer list, ``a, b``; the same box twice counts once.
- A *final-answer statement* is "final answer is X", X being the ``$…$`` / ``\\(…\\)`` /
  ``\\[…\\]`` right after it, else the text up to the end of the sentence; or "final
  answer to … is X" with X in math.
- Of the final boxes and the last statement, the one that ends later in the text is the
  answer. A last box that is never closed (a cut-off completion) means no answer.
"""

from __future__ import annotations

import re
from typing import Optional

_BOX_START = re.compile(r"\\(?:boxed|fbox)")


def _box_at(text: str, start: int) -> tuple[int, Optional[str]]:
    """(end, content) of the box whose command starts at ``start``; content is None when
    the box is never closed (end is then the end of the text)."""
    i = start + (len("\\boxed") if text.startswith("\\boxed", start) else len("\\fbox"))
    if i < len(text) and text[i] == " ":
        rest = text[i + 1 :]
        content = re.split(r"[$\n]", rest, maxsplit=1)[0]
        return i + 1 + len(content), content.strip()
    if i >= len(text) or text[i] != "{":
        return len(text), None
    depth = 0
    j = i
    while j < len(text):
        c = text[j]
        if c == "\\":
            j += 2  # an escaped character (\{ \} \\) never opens or closes the box
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return j + 1, text[i + 1 : j].strip()
        j += 1
    return len(text), None


def _boxes(text: str) -> list[tuple[int, int, Optional[str]]]:
    """(start, end, content) of every top-level box, in order (a box inside a box is part of it)."""
    found: list[tuple[int, int, Optional[str]]] = []
    for m in _BOX_START.finditer(text):
        if found and m.start() < found[-1][1]:
            continue
        end, content = _box_at(text, m.start())
        found.append((m.start(), end, content))
    return found


def last_boxed(text: Optional[str]) -> Optional[str]:
    """The content of the last ``\\boxed{…}`` / ``\\fbox{…}`` in ``text`` (braces balanced).

    Also reads MATH's brace-less form ``\\boxed 5`` (up to the next ``$`` or line end).
    Surrounding whitespace is stripped (it never matters in LaTeX math).
    Returns None when there is no box or the last one is not closed (a truncated
    completion has no answer, even if an earlier box had one).
    """
    boxes = _boxes(text) if text else []
    return boxes[-1][2] if boxes else None


# "and"/"or" join answers; any other word between two boxes is prose, which ends the run
_JOINING_WORDS = {"and", "or"}


def _only_separators(between: str) -> bool:
    words = re.findall(r"[A-Za-z]{2,}", re.sub(r"\\[A-Za-z]+", " ", between))
    return all(w.lower() in _JOINING_WORDS for w in words)


def _final_boxes(text: str) -> tuple[int, list[str]]:
    """(end of the last box, contents of the final boxes) — see the module doc; (-1, [])
    when there is no box, (end, []) when the last box is not closed."""
    boxes = _boxes(text)
    if not boxes:
        return -1, []
    start, end, content = boxes[-1]
    if content is None:
        return end, []
    run = [content]
    for prev_start, prev_end, prev in reversed(boxes[:-1]):
        if prev is None or not _only_separators(text[prev_end:start]):
            break
        run.insert(0, prev)
        start = prev_start
    return end, list(dict.fromkeys(c for c in run if c))


def boxed_answer(text: Optional[str]) -> Optional[str]:
    """The final boxes of ``text`` as one answer (``a, b`` when there are several), or None."""
    if not text:
        return None
    return ", ".join(_final_boxes(text)[1]) or None


_FINAL_ANSWER = re.compile(r"final answer(?P<between>[^.\n$]{0,100}?\s)?\s*is\b:?\s*", re.IGNORECASE)
_MATH_SPANS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))


def _final_statement(text: str) -> tuple[int, Optional[str]]:
    """(end, answer) of the last final-answer statement; (-1, None) when there is none.

    "final answer is X" takes X as math or as plain text up to the end of the sentence;
    the long form "final answer … is X" only math, since in prose ("before the final
    answer, let me check this is right") the "is" is seldom the statement's."""
    starts = [m.start() for m in re.finditer("final answer", text, re.IGNORECASE)]
    for start in reversed(starts):
        m = _FINAL_ANSWER.match(text, start)
        if not m:
            continue
        i = m.end()
        for opener, closer in _MATH_SPANS:
            if text.startswith(opener, i):
                j = text.find(closer, i + len(opener))
                if j > i:
                    return j + len(closer), text[i + len(opener) : j].strip() or None
        if (m.group("between") or "").strip():
            continue
        plain = re.match(r"(.+?)(?:\.?\s*I hope|\.\s|\.?$|\n)", text[i:], re.DOTALL)
        if plain:
            return i + plain.end(1), plain.group(1).strip().strip("$").rstrip(".").strip() or None
    return -1, None


def extract_answer(text: Optional[str]) -> Optional[str]:
    """A completion's final answer (rules: the module doc), or None when it has none."""
    if not text:
        return None
    box_end, boxes = _final_boxes(text)
    said_end, said = _final_statement(text)
    if said is not None and said_end > box_end and not _BOX_START.search(said):
        return said
    return ", ".join(boxes) or None
