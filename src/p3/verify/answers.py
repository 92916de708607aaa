"""Where a MATH answer is in a text: the final ``\\boxed{…}`` or "final answer is" statement.

String-only and free of project imports, so that both the problem tables (``p3.data``,
the reference answer of a solution) and the grader (``p3.verify.math``) can use it.
"""

from __future__ import annotations

import re
from typing import Optional


def last_boxed(text: Optional[str]) -> Optional[str]:
    """The content of the last ``\\boxed{…}`` / ``\\fbox{…}`` in ``text`` (braces balanced).

    Also reads MATH's brace-less form ``\\boxed 5`` (up to the next ``$`` or line end).
    Surrounding whitespace is stripped (it never matters in LaTeX math).
    Returns None when there is no box or the last one is not closed (a truncated
    completion has no answer, even if an earlier box had one).
    """
    if not text:
        return None
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = start + (len("\\boxed") if text.startswith("\\boxed", start) else len("\\fbox"))
    if i < len(text) and text[i] == " ":
        rest = text[i + 1 :]
        return re.split(r"[$\n]", rest, maxsplit=1)[0].strip()
    if i >= len(text) or text[i] != "{":
        return None
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
                return text[i + 1 : j].strip()
        j += 1
    return None


_FINAL_ANSWER = re.compile(r"final answer is[:\s]*(.+?)(?:\.?\s*(?:I hope|$)|\.\s|\n)", re.IGNORECASE | re.DOTALL)


def extract_answer(text: Optional[str]) -> Optional[str]:
    """The completion's final answer: the last ``\\boxed{…}``/``\\fbox{…}`` (balanced
    braces), else what follows the last "final answer is"; None when there is neither."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed or None
    if not text:
        return None
    found = _FINAL_ANSWER.findall(text)
    if not found:
        return None
    ans = found[-1].strip().strip("$").strip()
    return ans.rstrip(".").strip() or None
