"""Cheap pre-checks and an in-process time limit for the symbolic stages.

Why both: a SIGALRM timer only interrupts Python bytecode, not a single huge big-integer
operation inside sympy (``9^{9^{9^9}}`` evaluates eagerly on construction), so inputs that can
explode are refused *before* sympy or Math-Verify sees them. The timer then bounds everything
else when we run on the main thread (worker processes, the CLI, a trainer calling ``grade``);
off the main thread no timer is possible and the batch grader's process deadline is the bound.
"""

from __future__ import annotations

import gc
import re
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

MAX_EXPR_CHARS = 400  # longer answers are compared as strings only
MAX_DEPTH = 12  # brace/bracket nesting
MAX_EXPONENT = 10_000  # |integer literal| allowed in an exponent
MAX_FACTORIAL = 500
MAX_DIGITS = 300
MAX_RESULT_DIGITS = 100_000  # digits of an integer power N^k, estimated as len(N) * k
_SCAN = MAX_EXPR_CHARS  # how far an exponent's base or operand is read: a whole screened answer


class StageTimeout(BaseException):
    """Raised by the timer; a BaseException so that sympy's ``except Exception`` cannot eat it."""


def _operand(s: str, i: int) -> tuple[str, int]:
    """The exponent operand starting at ``s[i]`` (a brace group or one token) and its end."""
    while i < len(s) and s[i] == " ":
        i += 1
    if i < len(s) and s[i] == "{":
        depth = 0
        for j in range(i, min(len(s), i + _SCAN)):
            depth += {"{": 1, "}": -1}.get(s[j], 0)
            if depth == 0:
                return s[i + 1 : j], j + 1
        return s[i + 1 : i + _SCAN], min(len(s), i + _SCAN)
    m = re.match(r"-?\d+|\\?[A-Za-z]+|.", s[i:])
    tok = m.group(0) if m else ""
    return tok, i + len(tok)


def _base(s: str, i: int) -> str:
    """The base before the ``^`` at ``s[i]``: a bracket group or a run of digits/letters."""
    j = i - 1
    while j >= 0 and s[j] == " ":
        j -= 1
    if j >= 0 and s[j] in ")}]":
        depth = 0
        for k in range(j, max(-1, j - _SCAN), -1):
            depth += {")": 1, "}": 1, "]": 1, "(": -1, "{": -1, "[": -1}.get(s[k], 0)
            if depth == 0:
                return s[k : j + 1]
        return s[max(0, j + 1 - _SCAN) : j + 1]
    m = re.search(r"[\\\w.]*$", s[max(0, j + 1 - _SCAN) : j + 1])
    return m.group(0) if m else ""


def _max_depth(s: str) -> int:
    depth = best = 0
    for c in s:
        if c in "{([":
            depth += 1
            best = max(best, depth)
        elif c in "})]":
            depth -= 1
    return best


def intractable(expr: str) -> str | None:
    """Why ``expr`` must not reach sympy (too long, too deep, exponent tower, ...), else None."""
    if len(expr) > MAX_EXPR_CHARS:
        return "too_long"
    if _max_depth(expr) > MAX_DEPTH:
        return "too_deep"
    return _explosive(expr)


def _explosive(expr: str, prose: bool = False) -> str | None:
    """The checks of :func:`intractable` for values that explode (towers, factorials).

    ``prose``: ``expr`` is a whole response, where ``!!`` is punctuation and ``(n-1)!`` is common,
    so a group's factorial is refused only when the group holds a power or a 4-digit number.
    """
    s = expr.replace("**", "^")
    if re.search(rf"\d{{{MAX_DIGITS + 1},}}", s):
        return "too_many_digits"
    for m in re.finditer(r"\^", s):
        op, end = _operand(s, m.end())
        tower = _NEXT_CARET.match(s, end) is not None
        base = _base(s, m.start())
        if "^" in op or "\\exp" in op or tower or "!" in op or "^" in base:
            return "exponent_tower"
        exps = [int(n) for n in re.findall(r"\d+", op)]
        if any(e > MAX_EXPONENT for e in exps):
            return "huge_exponent"
        if base.isdigit() and exps and len(base) * max(exps) > MAX_RESULT_DIGITS:
            return "huge_exponent"
    for n in re.findall(r"(\d+)\s*!", s):
        if int(n) > MAX_FACTORIAL:
            return "huge_factorial"
    group = _BIG_GROUP_FACTORIAL.search(s) if prose else re.search(r"[)}]\s*!|!\s*!", s)
    if group or "\\binom" in s and re.search(r"\d{6,}", s):
        return "huge_factorial"
    return None


MAX_OPERATORS = 5_000
MAX_TEXT_DEPTH = 40  # bracket nesting of a whole response: LaTeX answers nest far less
_BRACKET = re.compile(r"[{}()\[\]]")
_NEXT_CARET = re.compile(r"\s*\^")
_BIG_GROUP_FACTORIAL = re.compile(r"(?:\^|\d{4})[^!]{0,40}[)}]\s*!")


def explosive_text(text: str) -> str | None:
    """Why a whole response must not reach Math-Verify's parser (it evaluates what it reads), else
    None: :func:`intractable`'s tower/factorial/digit checks over the text, and a refusal of texts
    with more than ``MAX_OPERATORS`` ``^``/``!`` or brackets nested over ``MAX_TEXT_DEPTH``.
    Linear in ``len(text)``: each operand and base is read at most ``MAX_EXPR_CHARS`` far."""
    if text.count("^") + text.count("**") + text.count("!") > MAX_OPERATORS:
        return "too_many_operators"
    depth = 0  # Math-Verify's parser recurses per level: 2,000 nested braces take seconds
    for m in _BRACKET.finditer(text):
        depth += 1 if m.group() in "{([" else -1
        if depth > MAX_TEXT_DEPTH:
            return "too_deep"
    return _explosive(text, prose=True)


_REFIRE_S = 0.05  # after the deadline the timer keeps firing, so one swallowed raise is not enough


def _unsafe_to_raise(frame) -> bool:
    """Whether the interrupted code is a gc callback (jax registers one) or a finalizer: an
    exception raised there goes to sys.unraisablehook (pytest turns that into an error) instead
    of unwinding the stage, so the handler waits for the next alarm instead."""
    callbacks = {getattr(cb, "__code__", None) for cb in gc.callbacks}
    while frame is not None:
        if frame.f_code in callbacks or frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`StageTimeout` after ``seconds`` (main thread only; elsewhere unbounded here).

    ``None`` means no limit. Once the deadline passes the alarm repeats every ``_REFIRE_S``
    until the block exits: a raise that lands inside code which swallows every exception (a gc
    callback, a bare ``except:`` in a library) is followed by another. Saves and restores any
    SIGALRM handler and timer that the caller had installed; the caller's timer keeps counting
    (it fires at once if it expired meanwhile).
    """
    if seconds is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    if seconds <= 0:
        raise StageTimeout
    armed = [True]

    def _fire(signum: int, frame) -> None:
        if armed[0] and not _unsafe_to_raise(frame):
            raise StageTimeout

    previous = signal.signal(signal.SIGALRM, _fire)
    outer_delay, _ = signal.setitimer(signal.ITIMER_REAL, seconds, _REFIRE_S)
    start = time.monotonic()
    try:
        yield
    finally:
        while True:  # a late alarm may still raise while we disarm; disarming is idempotent
            try:
                armed[0] = False
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, previous)
                break
            except StageTimeout:
                continue
        if outer_delay:
            left = outer_delay - (time.monotonic() - start)
            signal.setitimer(signal.ITIMER_REAL, max(left, 1e-6))
