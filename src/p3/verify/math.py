"""MATH answer grading: compare a completion's final answer (found by
:mod:`p3.verify.answers`) with the gold answer.

Comparison = our normalisation (what math-verify lacks: units, ``\\text{}``, degrees,
dollars, percent, thousands separators) -> equal strings, or math-verify (gold first)
plus two strictness rules math-verify does not have:

- answers with several parts (tuples, intervals, vectors, lists, sets) must have the
  same brackets and the same number of parts, and match part by part (in order for
  brackets, as a multiset for a bare comma list or ``\\{…\\}``); math-verify would, e.g.,
  accept the list ``1,2`` for the interval ``(1,2)``;
- ``\\pm`` must be on both sides or neither; numbers must agree to a relative 1e-6
  (math-verify's absolute float tolerance calls ``1/2004!`` and ``1/2006!`` equal).

math-verify runs sympy, which can take forever on a pathological expression, so every
comparison runs in a worker process (:class:`MathPool`) and is killed at a timeout.
"""

from __future__ import annotations

import atexit
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

log = logging.getLogger("p3.verify.math")

DEFAULT_TIMEOUT = 10.0
REL_TOL = 1e-6

# ------------------------------------------------------------------------- normalisation

_UNIT_TEXT = re.compile(r"\\(?:text|textrm|mbox|mathrm)\s*\{\s*([A-Za-z][A-Za-z .]*?)\s*\}(?:\s*\^\s*\{?\d\}?)?\s*$")
_TEXT = re.compile(r"\\(?:text|textrm|textbf|mbox|mathrm)\s*\{([^{}]*)\}")


def normalize(ans: str) -> str:
    """A canonical LaTeX string for ``ans`` (cheap, string-only)."""
    s = ans.strip()
    s = s.replace("\\$", "").replace("$", "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\displaystyle", "")
    s = s.replace("\\left", "").replace("\\right", "")
    s = re.sub(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|\\degree|°", "", s)
    s = s.replace("\\%", "").replace("%", "")
    # a unit after a number or expression ("5 \text{ cm}^2"), then any other \text{X} -> X
    stripped = _UNIT_TEXT.sub("", s).strip()
    if stripped and stripped != s and not stripped.endswith(("=", ",")):
        s = stripped
    s = _TEXT.sub(r"\1", s)
    # thousands separators: 3,\!125 · 1{,}000 · 1\,000 · a bare 12,345,678
    s = re.sub(r"(?<=\d)(?:,\\!|\{,\}|\\,|\\!|\\ )(?=\d{3}(?!\d))", "", s)
    if re.fullmatch(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s.strip()):
        s = s.replace(",", "")
    s = s.replace("\\!", "").replace("\\,", "").replace("\\;", "").replace("\\:", "")
    s = re.sub(r"\s+", " ", s).strip().rstrip(".").strip()
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


def _pm(s: str) -> int:
    return s.count("\\pm") + s.count("\\mp") + s.count("±")


# ------------------------------------------------------------------------- comparison


def equivalent_inproc(gold: str, pred: str) -> bool:
    """The comparison itself, in this process (math-verify may take long: see MathPool)."""
    g, p = normalize(gold), normalize(pred)
    if not g or not p:
        return False
    if g == p:
        return True
    if _pm(g) != _pm(p):
        return False
    go, gc, gparts = split_parts(g)
    po, pc, pparts = split_parts(p)
    if len(gparts) > 1 or len(pparts) > 1:
        if len(gparts) != len(pparts):
            return False
        unordered = {(None, None), ("\\{", "\\}")}  # a bare list of solutions or a set
        if (go, gc) in unordered and (po, pc) in unordered:
            return _multiset_equal(gparts, pparts)
        if (go, gc) != (po, pc):
            return False  # tuple vs interval, or (a,b] vs [a,b]
        return all(_mv_equal(a, b) for a, b in zip(gparts, pparts))
    return _mv_equal(g, p)


def _multiset_equal(gold: list[str], pred: list[str]) -> bool:
    left = list(pred)
    for a in gold:
        hit = next((i for i, b in enumerate(left) if _mv_equal(a, b)), None)
        if hit is None:
            return False
        left.pop(hit)
    return not left


def _mv_equal(gold: str, pred: str) -> bool:
    from math_verify import parse, verify

    if normalize(gold) == normalize(pred):
        return True
    g = parse(f"${gold}$")
    p = parse(f"${pred}$")
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
