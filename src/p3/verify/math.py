"""MATH answer grading: compare a completion's final answer (found by
:mod:`p3.verify.answers`) with the gold answer.

Comparison = our normalisation (what math-verify lacks or gets wrong: units, ``\\text{}``,
degrees, dollars, percent, thousands separators with thin spaces and blanks, doubled
backslashes, separators such as ``\\quad`` and "and") -> equal strings, or the answers'
shapes (docs/data.md, "Lists, sets, tuples") and math-verify (gold first) on each part,
plus strictness rules math-verify does not have:

- a bare list and a ``\\{…\\}`` set are sets (order-free); a bracketed list is a tuple or
  an interval: same brackets, same number of parts, part by part in order; math-verify
  would, e.g., accept the list ``1,2`` for the interval ``(1,2)``;
- ``\\pm`` on one side only stands for its two values (``\\pm 2`` is ``2, -2``, not ``2``);
- numbers must agree to a relative 1e-6 (math-verify's absolute float tolerance calls
  ``1/2004!`` and ``1/2006!`` equal).

math-verify runs sympy, which can take forever on a pathological expression, so every
comparison runs in a worker process (:class:`MathPool`) and is killed at a timeout.
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import queue
import re
import selectors
import subprocess
import sys
import threading
import time
from typing import Optional

from p3.verify.answers import extract_answer

log = logging.getLogger("p3.verify.math")

DEFAULT_TIMEOUT = 10.0
REL_TOL = 1e-6

# ------------------------------------------------------------------------- normalisation

_UNIT_TEXT = re.compile(r"\\(?:text|textrm|mbox|mathrm)\s*\{\s*([A-Za-z][A-Za-z .]*?)\s*\}(?:\s*\^\s*\{?\d\}?)?\s*$")
_TEXT = re.compile(r"\\(?:text|textrm|textbf|mbox|mathrm)\s*\{([^{}]*)\}")


def unescape(s: str) -> str:
    r"""Undo doubled backslashes (``\\frac`` for ``\frac``, as in JSON-escaped model output):
    when every run of backslashes has an even length and one of them starts a command,
    each run is halved. A real row break ``\\`` is followed by a blank or a digit, and a
    text with any single-backslash command is left alone."""
    runs = re.findall(r"\\+", s)
    if not runs or any(len(r) % 2 for r in runs) or not re.search(r"\\\\[A-Za-z{}]", s):
        return s
    return re.sub(r"\\+", lambda m: "\\" * (len(m.group(0)) // 2), s)


# a thousands separator between digit groups: LaTeX's ,\! {,} \, \! "\ " (with or without
# blanks around); a plain comma only when the whole answer is one such number (else a list)
_THOUSANDS = re.compile(r"(?<=\d)\s*(?:,\s*\\!|\{,\}|\\,|\\!|\\ )\s*(?=\d{3}(?!\d))")
_NUMBER_WITH = {",": re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?"),
                " ": re.compile(r"[+-]?\d{1,3}(?: \d{3})+(?:\.\d+)?")}
# what separates the answers of a list, besides a comma (\text{and} is "and" by then)
_SEPARATOR = re.compile(r"\s*(?:\\q?quad\b|;|\band\b|\bor\b)\s*")


def normalize(ans: str) -> str:
    """A canonical LaTeX string for ``ans`` (cheap, string-only)."""
    s = unescape(ans.strip())
    s = s.replace("\\$", "").replace("$", "").replace('\\"', "").replace('"', "")  # quotes are never math
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\displaystyle", "")
    s = s.replace("\\left", "").replace("\\right", "")
    s = re.sub(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|\\degree|°", "", s)
    s = s.replace("\\%", "").replace("%", "")
    # a unit after a number or expression ("5 \text{ cm}^2"), then any other \text{X} -> X
    stripped = _UNIT_TEXT.sub("", s).strip()
    if stripped and stripped != s and not stripped.endswith(("=", ",")):
        s = stripped
    s = _TEXT.sub(r"\1", s)
    s = _THOUSANDS.sub("", s)
    for sep, number in _NUMBER_WITH.items():
        if number.fullmatch(s.strip()):
            s = s.replace(sep, "")
    s = s.replace("\\!", "").replace("\\,", "").replace("\\;", "").replace("\\:", "")
    s = re.sub(r"\s*,\s*(?:,\s*)*", ", ", _SEPARATOR.sub(", ", s))
    s = re.sub(r"\s+", " ", s).strip().strip(",").strip().rstrip(".").strip()
    if s.startswith("{") and s.endswith("}") and _closes_at_end(s):
        s = s[1:-1].strip()  # {1,2,3}: a brace group, not a set (that is \{…\})
    return s


# ------------------------------------------------------------------------- structure

_OPEN = {"(": ")", "[": "]", "\\{": "\\}", "\\langle": "\\rangle"}
_ANY_OPEN = ("\\{", "\\langle", "(", "[", "{")
_ANY_CLOSE = ("\\}", "\\rangle", ")", "]", "}")


def _tokens(s: str):
    """(index, token) for bracket tokens and commas at the string level."""
    i = 0
    while i < len(s):
        for t in _ANY_OPEN + _ANY_CLOSE + (",",):
            if s.startswith(t, i):
                yield i, t
                i += len(t)
                break
        else:
            i += 1


def split_parts(s: str) -> tuple[Optional[str], Optional[str], list[str]]:
    """(open, close, parts): the outer brackets when they enclose the whole answer
    (interval ends may mix: ``(1,2]``), and the top-level comma-separated parts."""
    s = s.strip()
    opener = next((o for o in _OPEN if s.startswith(o)), None)
    closer = next((c for c in (")", "]", "\\}", "\\rangle") if s.endswith(c)), None)
    inner, bracket = s, (None, None)
    if opener and closer:
        depth, whole = 0, True
        body_end = len(s) - len(closer)
        for i, t in _tokens(s):
            if t in _ANY_OPEN:
                depth += 1
            elif t in _ANY_CLOSE:
                depth -= 1
                if depth == 0 and i < body_end:
                    whole = False  # "(1,2)\cup(3,4)": the first bracket closes early
                    break
        if whole:
            inner, bracket = s[len(opener) : body_end], (opener, closer)
    parts, depth, last = [], 0, 0
    for i, t in _tokens(inner):
        if t in _ANY_OPEN:
            depth += 1
        elif t in _ANY_CLOSE:
            depth -= 1
        elif t == "," and depth == 0:
            parts.append(inner[last:i].strip())
            last = i + 1
    parts.append(inner[last:].strip())
    return bracket[0], bracket[1], parts


def _closes_at_end(s: str) -> bool:
    """True when the brace opening ``s`` is the one that closes at its end (``{1,2}``, not ``{a}{b}``)."""
    depth = 0
    for i, t in _tokens(s):
        if t == "{":
            depth += 1
        elif t == "}":
            depth -= 1
            if depth == 0:
                return i == len(s) - 1
    return False


def _pm(s: str) -> int:
    return s.count("\\pm") + s.count("\\mp") + s.count("±")


# a name given to an answer: x = 3, x_1 = 3, (p, q) = (3, 2), x \in [1, 2)
_NAME = r"(?:[A-Za-z]|\\[a-z]+)(?:_\{?[A-Za-z0-9]+\}?)?'*"
_LABEL = re.compile(rf"\s*({_NAME}|\(\s*{_NAME}(?:\s*,\s*{_NAME})+\s*\))\s*(?:=|\\in)\s*(?=\S)")


def _label(part: str) -> tuple[Optional[str], str]:
    """(name, value) of ``x = value``; (None, part) when the part names nothing."""
    m = _LABEL.match(part)
    if not m or "=" in part[m.end():]:
        return None, part
    return re.sub(r"\s+", "", m.group(1)), part[m.end():].strip()


# ------------------------------------------------------------------------- comparison


def _shape(s: str) -> tuple[str, Optional[tuple[str, str]], list[str]]:
    """("set", None, elements) for a bare list or ``\\{…\\}``; ("seq", brackets, parts) for
    a bracketed list (tuple, interval, vector); ("one", None, [s]) for anything else."""
    opener, closer, parts = split_parts(s)
    if (opener, closer) == ("\\{", "\\}"):
        return "set", None, [q for q in parts if q]
    if len(parts) > 1:
        return ("set", None, parts) if opener is None else ("seq", (opener, closer), parts)
    return "one", None, [s]


def _plus_minus_set(s: str) -> Optional[str]:
    """``a \\pm b`` as the list of its two values, when it has exactly one ``\\pm``."""
    if _pm(s) != 1 or "\\mp" in s:
        return None
    s = s.replace("±", "\\pm")
    return s.replace("\\pm", "+") + ", " + s.replace("\\pm", "-")


def _unwrapped(ans: str) -> str:
    """An answer that still holds its box or a "final answer is" statement (a whole solution
    given as the answer) is what that box or statement says."""
    if "\\boxed" in ans or "\\fbox" in ans or "final answer" in ans.lower():
        return extract_answer(ans) or ans
    return ans


def equivalent_inproc(gold: str, pred: str) -> bool:
    """The comparison itself, in this process (math-verify may take long: see MathPool)."""
    g, p = _label(normalize(_unwrapped(gold)))[1], _label(normalize(_unwrapped(pred)))[1]
    if not g or not p:
        return False
    if g == p:
        return True
    if _pm(g) != _pm(p):
        g, p = _plus_minus_set(g) or g, _plus_minus_set(p) or p
        if _pm(g) != _pm(p):
            return False
    (gk, gb, gparts), (pk, pb, pparts) = _shape(g), _shape(p)
    if "set" in (gk, pk):  # a tuple or a single answer is then a set of one
        return _sets_equal(gparts if gk == "set" else [g], pparts if pk == "set" else [p])
    if gk == pk == "seq":
        # tuple vs interval, or (a,b] vs [a,b]: different answers
        return gb == pb and len(gparts) == len(pparts) and all(map(equivalent_inproc, gparts, pparts))
    return _mv_equal(g, p)


def _sets_equal(gold: list[str], pred: list[str]) -> bool:
    """Every element of each side equals one of the other's; named answers (``x = 1, y = 2``)
    match by name when both sides name every element."""
    gl, pl = [_label(q) for q in gold], [_label(q) for q in pred]
    by_name = all(name for name, _ in gl + pl)

    def written(side: list) -> set:
        return {(name if by_name else None, normalize(v)) for name, v in side}

    if written(gl) == written(pl):
        return True  # the same elements as written: no math-verify call for each pair

    def hit(a: tuple, b: tuple) -> bool:
        return (not by_name or a[0] == b[0]) and equivalent_inproc(a[1], b[1])

    return all(any(hit(a, b) for b in pl) for a in gl) and all(any(hit(a, b) for a in gl) for b in pl)


@functools.lru_cache(maxsize=4096)
def _parsed(ans: str) -> list:
    """math-verify's reading of one answer (cached: a set compares each element several times)."""
    from math_verify import parse

    return parse(f"${ans}$")


def _mv_equal(gold: str, pred: str) -> bool:
    from math_verify import verify

    if normalize(gold) == normalize(pred):
        return True
    g = _parsed(gold)
    p = _parsed(pred)
    if not g or not p:
        return False
    if not verify(g, p):
        return False
    return _numbers_agree(g[0], p[0])


def _numbers_agree(g, p) -> bool:
    """math-verify compares numbers with an absolute tolerance; insist on a relative one."""
    try:
        import sympy

        if not (isinstance(g, sympy.Basic) and isinstance(p, sympy.Basic)):
            return True
        if not (g.is_number and p.is_number):
            return True
        gv, pv = sympy.N(g, 60), sympy.N(p, 60)
        scale = max(abs(gv), abs(pv))
        if scale == 0:
            return True
        return bool(abs(gv - pv) <= REL_TOL * scale)
    except Exception:  # sympy may refuse (e.g. comparing a complex to a set): trust math-verify
        return True


# ------------------------------------------------------------------------- worker pool


def _serve() -> None:
    """Worker main loop: JSON lines {"g", "p"} in, {"r"} out."""
    logging.disable(logging.WARNING)  # math-verify's per-call warnings would flood stderr
    import math_verify  # noqa: F401  (import once, before saying ready)

    out = sys.stdout
    out.write('{"ready": true}\n')
    out.flush()
    for line in sys.stdin:
        req = json.loads(line)
        try:
            r = bool(equivalent_inproc(req["g"], req["p"]))
        except Exception:
            r = False
        out.write(json.dumps({"r": r}) + "\n")
        out.flush()


class _Worker:
    def __init__(self):
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from p3.verify.math import _serve; _serve()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )
        line = self._readline(120.0)
        if line is None or "ready" not in line:
            self.stop()
            raise RuntimeError("math-verify worker did not start")

    def _readline(self, timeout: float) -> Optional[str]:
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                return None
        return self.proc.stdout.readline() or None

    def ask(self, gold: str, pred: str, timeout: float) -> Optional[bool]:
        """The answer, or None on a timeout / a dead worker (then it is restarted next time)."""
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        try:
            self.proc.stdin.write(json.dumps({"g": gold, "p": pred}) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self.stop()
            return None
        line = self._readline(timeout)
        if line is None:
            self.stop()
            return None
        return bool(json.loads(line)["r"])

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


class MathPool:
    """``workers`` math-verify processes; each comparison is killed after ``timeout`` s."""

    def __init__(self, workers: int = 1):
        self.workers = max(1, workers)
        self._free: queue.Queue[_Worker] = queue.Queue()
        self._all = [_Worker() for _ in range(self.workers)]
        for w in self._all:
            self._free.put(w)

    def equivalent(self, gold: str, pred: str, timeout: float = DEFAULT_TIMEOUT) -> bool:
        if not gold or not pred:
            return False
        if normalize(gold) == normalize(pred):
            return True  # no sympy needed
        w = self._free.get()
        try:
            start = time.monotonic()
            r = w.ask(gold, pred, timeout)
            if r is None:
                log.warning("math comparison timed out after %.1fs (counted wrong): gold=%.80r pred=%.80r",
                            time.monotonic() - start, gold, pred)
                return False
            return r
        finally:
            self._free.put(w)

    def close(self) -> None:
        for w in self._all:
            w.stop()


_POOL: Optional[MathPool] = None
_POOL_LOCK = threading.Lock()


def pool(workers: int = 1) -> MathPool:
    """The process-wide pool, grown to at least ``workers`` processes."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL.workers < workers:
            if _POOL is not None:
                _POOL.close()
            _POOL = MathPool(workers)
        return _POOL


@atexit.register
def _close_pool() -> None:
    if _POOL is not None:
        _POOL.close()


def is_equivalent(gold: str, pred: Optional[str], timeout: float = DEFAULT_TIMEOUT) -> bool:
    """True when ``pred`` is the same answer as ``gold`` (see the module doc); a
    comparison that takes longer than ``timeout`` seconds counts as wrong."""
    if pred is None:
        return False
    return pool().equivalent(gold, pred, timeout)
