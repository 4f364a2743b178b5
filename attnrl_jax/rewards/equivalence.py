"""Answer equivalence: exact normalised match, then structure + sympy, then Math-Verify.

The order mirrors the paper's hybrid verifier (DeepScaleR's string/sympy grader, Math-Verify as
the final fallback). Each symbolic stage runs under :func:`limits.time_limit` with what is left
of the caller's deadline, and only on inputs that pass :func:`limits.intractable`. A stage that
times out is treated as "not proven equal" and the next stage still runs.

Structure veto: Math-Verify is skipped when both answers are containers of incompatible kinds
(a tuple against a set, ``(a, b)`` against ``[a, b]``, a matrix against a list), because it equates
e.g. ``(1, 2)`` with ``\\{1, 2\\}``; an ordered pair is not a set of solutions. Two literal
constants (numbers, radicals, scientific notation) skip it too: sympy compared their values
exactly (or within 1e-4 relative for decimals), while Math-Verify's 6-decimal rounding equates
``8.224 \\times 10^{-19}`` with ``1.325 \\times 10^{-27}`` (seen on Minerva golds).
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass

import sympy

from attnrl_jax.rewards.limits import StageTimeout, intractable, time_limit
from attnrl_jax.rewards.normalize import canonical, lhs, normalize, strip_lhs
from attnrl_jax.rewards.structure import Structure, parse_structure
from attnrl_jax.rewards.symbolic import PLAIN_NUMBER, sympy_equal, to_sympy

SYMPY_STAGE_S = 2.0
MATH_VERIFY_STAGE_S = 2.0
_UNORDERED = {"set", "list", "union"}


def _drop_timeout_notice(record: logging.LogRecord) -> bool:
    """Math-Verify warns on every call made without its signal timeout; ours replaces it."""
    return not str(record.msg).startswith("Timeout is disabled")


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_drop_timeout_notice)


@dataclass(frozen=True)
class Verdict:
    """``reason``: exact | sympy | math_verify | mismatch | guarded | stage_timeout."""

    equal: bool
    reason: str


def _scalar_equal(a: str, b: str) -> bool:
    if canonical(a) == canonical(b):
        return True
    a, b = strip_lhs(a), strip_lhs(b)
    if canonical(a) == canonical(b):
        return True
    if intractable(a) or intractable(b):
        return False
    ea, eb = to_sympy(a), to_sympy(b)
    return ea is not None and eb is not None and sympy_equal(ea, eb)


def _unordered_equal(xs: tuple[str, ...], ys: tuple[str, ...]) -> bool:
    if len(xs) != len(ys):
        return False
    left = list(ys)
    for x in xs:
        j = next((k for k, y in enumerate(left) if _item_equal(x, y)), None)
        if j is None:
            return False
        left.pop(j)
    return True


def _item_equal(x: str, y: str) -> bool:
    """Items of two collections; two labelled items need the same label (in ``x = 1, y = 2``
    against ``y = 1, x = 2`` the labels carry the meaning, unlike ``f(x) = ...`` alone)."""
    lx, ly = lhs(x), lhs(y)
    if lx and ly and canonical(lx) != canonical(ly):
        return False
    return structured_equal(x, y)


def structured_equal(a: str, b: str) -> bool:
    """Equality of two normalised answers, recursing into tuples, sets, lists and matrices."""
    if canonical(a) == canonical(b):
        return True
    sa, sb = parse_structure(a), parse_structure(b)
    if sa.kind == "scalar" and sb.kind == "scalar":
        return _scalar_equal(a, b)
    if sa.kind in _UNORDERED and sb.kind in _UNORDERED and "union" not in (sa.kind, sb.kind):
        return _unordered_equal(sa.items, sb.items)  # {1, 2} and "1, 2" are both collections
    if sa.kind != sb.kind or sa.brackets != sb.brackets:
        return _lhs_list_equal(sa, sb)
    if sa.kind in _UNORDERED:
        return _unordered_equal(sa.items, sb.items)
    return len(sa.items) == len(sb.items) and all(
        structured_equal(x, y) for x, y in zip(sa.items, sb.items, strict=True)
    )


def _lhs_list_equal(sa: Structure, sb: Structure) -> bool:
    """``x = 1, y = 2`` against ``(1, 2)``: compare right-hand sides in order.

    Only for distinct left sides: ``x = 2 \\text{ or } x = 3`` is a set of solutions, not a point.
    """
    for lst, seq in ((sa, sb), (sb, sa)):
        if lst.kind == "list" and seq.kind == "seq" and _distinct_lhs(lst.items):
            rhs = tuple(strip_lhs(x) for x in lst.items)
            if len(rhs) == len(seq.items):
                return all(structured_equal(x, y) for x, y in zip(rhs, seq.items, strict=True))
    return False


def _distinct_lhs(items: tuple[str, ...]) -> bool:
    lhs = [x.split("=")[0].strip() for x in items if "=" in x]
    return len(lhs) == len(items) and len(set(lhs)) == len(lhs)


def _is_constant(s: str) -> bool:
    """A scalar that sympy reads as a number without variables (``2.88 \\times 10^{-19}``)."""
    s = strip_lhs(s)
    if PLAIN_NUMBER.fullmatch(s):
        return True
    if parse_structure(s).kind != "scalar":
        return False
    e = to_sympy(s)  # cached from the sympy stage
    return isinstance(e, sympy.Expr) and not e.free_symbols


def _skip_math_verify(a: str, b: str) -> bool:
    """Not for intractable input, vetoed structures, or two constants (sympy's verdict stands)."""
    if intractable(a) or intractable(b) or _vetoed(a, b):
        return True
    return _is_constant(a) and _is_constant(b)


def _vetoed(a: str, b: str) -> bool:
    """Both answers are containers whose kinds (or bracket types) cannot be equal."""
    sa, sb = parse_structure(a), parse_structure(b)
    if "scalar" in (sa.kind, sb.kind):
        return False
    if sa.kind in _UNORDERED and sb.kind in _UNORDERED:
        return False
    return (sa.kind, sa.brackets) != (sb.kind, sb.brackets)


@functools.lru_cache(maxsize=4096)
def _mv_parse(s: str) -> list:
    """Math-Verify's parse, cached: an RL step grades many samples against the same gold."""
    from math_verify import parse  # heavy import, needed only on this fallback path

    return parse("\\boxed{" + s + "}", parsing_timeout=None)


def _math_verify_equal(a: str, b: str) -> bool:
    from math_verify import verify

    gold, pred = _mv_parse(b), _mv_parse(a)
    return bool(gold and pred and verify(gold, pred, timeout_seconds=None))


def _remaining(deadline: float, cap: float) -> float:
    return max(0.0, min(cap, deadline - time.monotonic()))


def equivalent(pred: str, gold: str, deadline: float, *, math_verify: bool = True) -> Verdict:
    """Is the extracted ``pred`` equal to ``gold``? Bounded by ``deadline`` (monotonic clock).

    ``math_verify=False`` stops after sympy (the hybrid reward runs Math-Verify over the whole
    response instead, :mod:`fallback`)."""
    a, b = normalize(pred), normalize(gold)
    if canonical(a) == canonical(b):
        return Verdict(True, "exact")
    if intractable(a) == "too_long" and len(a) > 4 * len(b) + 100:
        return Verdict(False, "guarded")
    timed_out = False
    for stage, fn, cap in (
        ("sympy", structured_equal, SYMPY_STAGE_S),
        ("math_verify", _math_verify_equal, MATH_VERIFY_STAGE_S),
    ):
        if stage == "math_verify" and (not math_verify or _skip_math_verify(a, b)):
            break
        budget = _remaining(deadline, cap)
        if budget <= 0:
            timed_out = True
            break
        try:
            with time_limit(budget):
                if fn(a, b):
                    return Verdict(True, stage)
        except StageTimeout:
            timed_out = True
        except Exception:  # noqa: BLE001 - a parser crash on odd input means "not proven equal"
            continue
    if timed_out:
        return Verdict(False, "stage_timeout")
    return Verdict(False, "guarded" if intractable(a) else "mismatch")
