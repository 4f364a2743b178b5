"""Answer normalisation: strip presentation so that equal answers become equal strings.

Policy: remove what does not change the mathematical value of a final answer (``$``, ``\\left`` /
``\\right``, LaTeX spacing, ``\\text{}`` wrappers, trailing units after a number, degrees, percent
signs and words (``28 pct``, ``28 percentage``), a trailing period, thousands separators of a lone
number, a short left-hand side ``x =``). Percent and degree signs are dropped, not converted:
``50\\%`` equals ``50`` (not ``0.5``), as in DeepScaleR's and Hendrycks' graders. The exception is
a degree argument of a trigonometric function: ``\\sin 30^\\circ`` becomes
``\\sin(\\frac{30\\pi}{180})`` (dropping the sign would read it in radians). A repeating decimal
(``1.2\\overline{34}``) becomes its exact reduced fraction, so it is graded like that fraction.
Spaces are kept single for the LaTeX parser; :func:`canonical` removes them for string comparison.
"""

from __future__ import annotations

import re
from fractions import Fraction

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_TEXT_WRAP = re.compile(
    r"\\(?:text|textbf|textit|textrm|mbox|mathrm|mathbf|mathit|operatorname\*?|rm)\s*\{([^{}]*)\}"
)
_LEFT_RIGHT = re.compile(r"\\(?:left|right|big|Big|bigg|Bigg)(?![A-Za-z])\.?")
_SPACING = re.compile(r"(?<!\\)\\[,;:> ]|\\(?:quad|qquad|displaystyle|limits)(?![A-Za-z])|~")
_DEGREE = r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree(?![A-Za-z])"
_DEGREES = re.compile(_DEGREE)
# \sin 30^\circ, \cos(60°), \tan^2{45^\circ}: a signed number of degrees as the whole argument.
_NUM_DEG = rf"\s*([+-]?\s*\d+(?:\.\d+)?)\s*(?:{_DEGREE})\s*"
_TRIG_DEGREES = re.compile(
    rf"\\(sin|cos|tan|cot|sec|csc)(?![A-Za-z])\s*(\^\s*(?:\{{\s*\d\s*\}}|\d)\s*)?"
    rf"(?:\({_NUM_DEG}\)|\{{{_NUM_DEG}\}}|{_NUM_DEG})"
)
# 0.\overline{3}, 1.2\overline{34}, .\bar{6}, 0.1\dot{6} (one dotted digit); anchored at the start
# of the digit run, digit counts bounded so int() and the regex stay cheap on huge inputs.
_REPEATING = re.compile(
    r"(?<![\d.])(\d{0,100})\.(\d{0,100})\\(?:(?:overline|bar)\s*(?:\{\s*(\d{1,100})\s*\}|(\d))"
    r"|dot\s*\{(\d)\}(?!\s*\d|\s*\\dot))"
)
_PERCENT = re.compile(r"\\?%")
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")  # "32, 349" is two numbers
_THIN_COMMA = re.compile(r"(?<=\d),\s*\\!\s*(?=\d)")  # MATH's "11,\! 111": one number
_UNIT_TAIL = re.compile(r"(?<=[\d}).])\s+(?:[A-Za-z]{2,}\s*(?:\^\s*\{?\d\}?)?\s*)+$")
_UNIT_WORDS = re.compile(
    r"^(?:units?|square|sq|cubic|cm|mm|km|m|meters?|inch(?:es)?|feet|ft|foot|miles?|yards?|"
    r"degrees?|dollars?|cents?|hours?|minutes?|seconds?|days?|years?|kg|g|grams?|lbs?|pounds?|"
    r"Hz|GHz|MHz|eV|keV|MeV|J|W|K|s|mph|mi|percent(?:age)?s?|pct|L|mL|N|Pa|V|nm|mol|atm|sec|min|hrs?)$"
)
# A unit set off as text at the end (``1.5 \mathrm{~m}``): single letters count here too, and so
# do any words that start with a space (``3 \text{ apples}``), as in DeepScaleR's unit rule.
_TEXT_UNIT_TAIL = re.compile(
    r"(?<=[\d}) ])\s*\\(?:text|mathrm|mbox|textrm|rm)\s*\{(\s*~?\s*)([A-Za-z ]+?)\s*\}"
    r"(?:\s*\^\s*\{?\d\}?)?\s*\.?\s*$"
)
_SHORT_LHS = re.compile(r"^[A-Za-z](?:_\{?\w+\}?)?(?:\([A-Za-z]\))?\s*=(?!=)")
_CHOICE = re.compile(r"^\(([A-E])\)$")


def _trig_radians(m: re.Match) -> str:
    """``\\sin 30^\\circ`` -> ``\\sin(\\frac{30\\pi}{180})``: degrees converted, not dropped."""
    degrees = next(g for g in m.group(3, 4, 5) if g is not None).replace(" ", "")
    return f"\\{m.group(1)}{m.group(2) or ''}(\\frac{{{degrees}\\pi}}{{180}})"


def _repeating_fraction(m: re.Match) -> str:
    """``I.N\\overline{R}`` -> its exact value ``(INR - IN) / (10^|N| (10^|R| - 1))``, reduced."""
    whole, fixed = m.group(1), m.group(2)
    period = next(g for g in m.group(3, 4, 5) if g is not None)
    value = Fraction(
        int(whole + fixed + period) - int(whole + fixed or "0"),
        10 ** len(fixed) * (10 ** len(period) - 1),
    )
    if value.denominator == 1:
        return str(value.numerator)
    return f"\\frac{{{value.numerator}}}{{{value.denominator}}}"


def _strip_unit_tail(s: str) -> str:
    """Drop trailing unit words (``12 cm``, ``4.4e14 Hz``) after a number; keep other words."""
    m = _UNIT_TAIL.search(s)
    if not m:
        return s
    words = re.findall(r"[A-Za-z]+", m.group(0))
    return s[: m.start()].rstrip() if all(_UNIT_WORDS.match(w) for w in words) else s


def normalize(answer: str) -> str:
    """Normalised LaTeX of a final answer (single spaces kept)."""
    s = _CONTROL.sub(" ", answer)
    s = _THIN_COMMA.sub(",", s.replace("\\$", "").replace("$", ""))
    s = s.replace("\\!", "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _LEFT_RIGHT.sub("", s)  # before the trig rule: \sin\left(30^\circ\right)
    s = _TRIG_DEGREES.sub(_trig_radians, s)
    s = _DEGREES.sub("", s)
    if "\\overline" in s or "\\bar" in s or "\\dot" in s:
        s = _REPEATING.sub(_repeating_fraction, s)
    s = re.sub(r"\\frac\s*(\d)\s*(\d)", r"\\frac{\1}{\2}", s)  # \frac43
    s = re.sub(r"\\frac\s*(\{[^{}]*\})\s*(\d)", r"\\frac\1{\2}", s)
    s = re.sub(r"\\sqrt\s*(\d)", r"\\sqrt{\1}", s)  # \sqrt2
    m = _TEXT_UNIT_TAIL.search(s)
    if m and (m.group(1) or all(_UNIT_WORDS.match(w) for w in m.group(2).split())):
        s = s[: m.start()]
    for _ in range(3):  # nested \text{\textbf{..}} unwrap from the inside out
        s = _TEXT_WRAP.sub(r" \1 ", s)
    s = _SPACING.sub(" ", s)
    s = _PERCENT.sub("", s)
    s = re.sub(r"(\d)\{,\}(\d)", r"\1,\2", s)
    s = " ".join(s.split())
    s = s.rstrip(". ").strip()
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "").replace(" ", "")
    s = _strip_unit_tail(s)
    m = _CHOICE.match(s)
    return m.group(1) if m else s


def strip_lhs(s: str) -> str:
    """``x = 3`` -> ``3`` when the left side is a bare variable (DeepScaleR's equation rule)."""
    m = _SHORT_LHS.match(s)
    if m and "=" not in s[m.end() :]:
        return s[m.end() :].strip()
    return s


def lhs(s: str) -> str | None:
    """The bare-variable left side that :func:`strip_lhs` removes (``x_{1}`` of ``x_{1} = 3``)."""
    m = _SHORT_LHS.match(s)
    return s[: m.end() - 1].strip() if m and "=" not in s[m.end() :] else None


def canonical(s: str) -> str:
    """Space-free form for exact string comparison."""
    return re.sub(r"\s+", "", s)
