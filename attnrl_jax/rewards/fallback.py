"""Math-Verify over the whole answer region: the last stage of the authors' hybrid reward.

When the last box fails, the authors' reward (rllm_skywork, ``v2_math-verify``; ALGORITHM.md
section 4) parses the WHOLE text after ``</think>`` with ``math_verify.parse``: a parse with fewer
than 2 entries (no expression and its string) is incorrect; the matched string equal to a gold
string is correct; otherwise ``verify(parse("\\boxed{gold}"), parsed)`` decides. Math-Verify
joins every box of the text into one set and reads unboxed "the answer is $25$", so boxed parts
of a multi-part answer and unboxed answers can pass here.

Kept from :mod:`equivalence` (documented disagreements with the authors): the structure veto
(a tuple never equals a set), and for two constants our exact value comparison instead of
Math-Verify's (its 6-decimal rounding equates ``8.224 \\times 10^{-19}`` with
``1.325 \\times 10^{-27}``; it reads ``\\cos 60°`` as 60 and ``50\\%`` as 0.5, where our policy,
DeepScaleR's, drops the percent sign: :mod:`normalize`).

Bounds. Measured (math-verify 0.9.0, 1 core): ``parse`` reads 200 kB of prose in ~20 ms (a regex
pass, candidates tried rightmost first), so text length alone never reaches the authors' 5 s
parse timeout; what does is a long candidate expression (a 60 kB ``$1+1+...$`` takes 4.5 s), i.e.
their timeout gives 0 to a response whose candidates cannot be parsed in time. We do the same
with the stage deadline (``time_limit``, at most ``FALLBACK_STAGE_S``) and show Math-Verify only
the last ``MV_TEXT_CHARS`` characters (twice an 8k-token response), which bounds the regex pass
and changes a verdict only for a longer region whose answer is not in its tail. Texts that would
make the parser evaluate an explosive value (``9^{9^{9^9}}``, ``100000!``: one C call no timer
interrupts) are refused first (:func:`limits.explosive_text`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from attnrl_jax.rewards.equivalence import (
    Verdict,
    _is_constant,
    _mv_parse,
    _vetoed,
    structured_equal,
)
from attnrl_jax.rewards.limits import StageTimeout, explosive_text, intractable, time_limit
from attnrl_jax.rewards.normalize import normalize

MV_TEXT_CHARS = 64_000
FALLBACK_STAGE_S = 2.0


def _equal(parsed: list, found: str, gold: str) -> bool:
    from math_verify import verify

    a, b = normalize(found), normalize(gold)
    if not intractable(a) and not intractable(b):
        if _vetoed(a, b):
            return False
        if _is_constant(a) and _is_constant(b):
            return structured_equal(a, b)
    gold_parsed = _mv_parse(gold)
    return bool(gold_parsed and verify(gold_parsed, parsed, timeout_seconds=None))


def math_verify_text(
    region: str, golds: Sequence[str], deadline: float
) -> tuple[Verdict, str | None]:
    """The authors' fallback over ``region`` (the text after ``</think>``), bounded by
    ``deadline`` (monotonic clock). Returns the verdict and Math-Verify's matched string (None
    when it found no answer). Reasons: math_verify | mismatch | no_answer | guarded |
    stage_timeout."""
    from math_verify import parse  # heavy import, needed only on this fallback path

    text = region[-MV_TEXT_CHARS:]
    if explosive_text(text):
        return Verdict(False, "guarded"), None
    budget = max(0.0, min(FALLBACK_STAGE_S, deadline - time.monotonic()))
    found = None
    try:
        with time_limit(budget):
            parsed = parse(text, parsing_timeout=None)
            if len(parsed) < 2:
                return Verdict(False, "no_answer"), None
            found = str(parsed[1])
            if found in golds:
                return Verdict(True, "math_verify"), found
            for g in golds:
                try:
                    if _equal(parsed, found, g):
                        return Verdict(True, "math_verify"), found
                except Exception:  # noqa: BLE001 - a parser crash on odd input: not proven equal
                    continue
    except StageTimeout:
        return Verdict(False, "stage_timeout"), found
    return Verdict(False, "mismatch"), found
