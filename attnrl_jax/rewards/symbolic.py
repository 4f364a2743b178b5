"""Scalar equality with sympy: numbers within tolerance, expressions by simplification.

Policy: two rationals must be equal; other exact values (radicals, pi) must agree to 1e-30
relative at 50 digits, so ``2^{100}`` never equals ``2^{100}+1``; when either side is a decimal
(a Float), 1e-4 relative is enough (``0.333`` vs ``1/3`` fails, ``4.4e7`` vs ``4.4 \\times 10^7``
passes). Expressions with free symbols are equal when ``simplify(a - b) == 0`` and never equal
a plain number (a cheap reject); equations are equal when their ``lhs - rhs`` agree up to sign.
Callers must screen inputs with :func:`limits.intractable` and run under a time limit.
"""

from __future__ import annotations

import functools
import re

import sympy
from latex2sympy2_extended import latex2sympy

EXACT_RTOL = 1e-30
FLOAT_RTOL = 1e-4
_I = sympy.Symbol("i")  # a final answer's "i" is the imaginary unit (``3+4i``, ``e^{i\\pi}``)
PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


@functools.lru_cache(maxsize=4096)
def to_sympy(s: str) -> sympy.Basic | None:
    """Parse a normalised answer; plain numbers directly (``025``, ``1.70e4``), else via LaTeX.

    Cached: the LaTeX parser costs ~20 ms and golds repeat across an RL step's samples.
    """
    if PLAIN_NUMBER.fullmatch(s):
        exact = not re.search(r"[.eE]", s)
        return sympy.Integer(int(s)) if exact else sympy.Float(s, 30)
    try:
        expr = latex2sympy(s)
    except Exception:  # the parser raises many types on malformed LaTeX
        return None
    if not isinstance(expr, sympy.Basic):
        return None
    try:  # i -> I can make a relation invalid (``i < 1``: no order on complex numbers)
        return expr.subs(_I, sympy.I) if _I in expr.free_symbols else expr
    except Exception:
        return None


def _numeric_equal(a: sympy.Expr, b: sympy.Expr) -> bool:
    inexact = a.has(sympy.Float) or b.has(sympy.Float)
    if not inexact:
        a, b = a.doit(), b.doit()  # the LaTeX parser leaves 2^{100} + 1 unevaluated
        if a.is_Rational and b.is_Rational:
            return a == b
    rtol = FLOAT_RTOL if inexact else EXACT_RTOL
    if any(x.has(sympy.zoo, sympy.nan) for x in (a, b)):
        return False  # undefined (12:00 read as 12/0) equals nothing
    if any(x.has(sympy.oo, -sympy.oo) for x in (a, b)):
        return a == b  # oo only equals oo
    try:  # sympy Floats (mpmath) have unbounded exponents: 9999^9999 does not overflow
        va, vb = sympy.N(a, 50), sympy.N(b, 50)
        scale = max(abs(va), abs(vb))
        return bool(abs(va - vb) <= rtol * scale)
    except (TypeError, ValueError, ArithmeticError):
        return False


def _is_zero(e: sympy.Basic) -> bool:
    try:
        return bool(sympy.simplify(e) == 0)
    except Exception:  # sympy raises assorted errors on unusual objects
        return False


def sympy_equal(a: sympy.Basic, b: sympy.Basic) -> bool:
    """Mathematical equality of two parsed answers (see module policy)."""
    if isinstance(a, sympy.Eq) != isinstance(b, sympy.Eq):
        return False
    if isinstance(a, sympy.Eq):
        da, db = a.lhs - a.rhs, b.lhs - b.rhs
        return _is_zero(da - db) or _is_zero(da + db)
    if isinstance(a, sympy.Expr) and isinstance(b, sympy.Expr):
        if not a.free_symbols and not b.free_symbols:
            return _numeric_equal(a, b)
        if not a.free_symbols or not b.free_symbols:
            return False  # a number never equals an expression in variables
        return _is_zero(a - b)
    try:
        return bool(a == b) or bool(sympy.simplify(a) == sympy.simplify(b))
    except Exception:
        return False
