"""``grade(response, gold)``: the 0/1 correctness reward of AttnRL (ALGORITHM.md section 4).

Pure and in-process. The answer is the last ``\\boxed{}``/``\\fbox{}`` after the last ``</think>``
(:mod:`extract`); it is compared with each accepted gold form (:mod:`equivalence`) and is correct
if any form matches. Time is bounded by ``time_budget_s`` on the main thread (SIGALRM) and by
refusing explosive inputs everywhere; :mod:`batch` adds a hard per-item process deadline.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from attnrl_jax.rewards.equivalence import equivalent
from attnrl_jax.rewards.extract import extract_answer

DEFAULT_TIME_BUDGET_S = 4.0


@dataclass(frozen=True)
class GradeResult:
    """``reason``: exact | sympy | math_verify (correct), mismatch | no_answer | no_gold |
    guarded | stage_timeout | error: <exception type> (incorrect); the batch grader adds
    ``timeout`` and ``error``."""

    correct: bool
    extracted: str | None
    reason: str


def grade(
    response: str, gold: str | Sequence[str], *, time_budget_s: float = DEFAULT_TIME_BUDGET_S
) -> GradeResult:
    """Grade one response against a gold answer or a list of accepted gold forms."""
    if isinstance(gold, str | int | float):  # a number from JSON is accepted as its text
        gold = [str(gold)]
    golds = [g for g in gold if isinstance(g, str)]
    extracted = extract_answer(response)
    if extracted is None or not extracted.strip():  # an empty box is no answer either
        return GradeResult(False, extracted, "no_answer")
    if not golds:
        return GradeResult(False, extracted, "no_gold")
    deadline = time.monotonic() + time_budget_s
    reason = "mismatch"
    for g in golds:
        try:
            verdict = equivalent(extracted, g, deadline)
        except Exception as e:  # a parser or sympy corner case: a reward, never a crash
            if reason == "mismatch":
                reason = f"error: {type(e).__name__}"
            continue
        if verdict.equal:
            return GradeResult(True, extracted, verdict.reason)
        if reason == "mismatch":
            reason = verdict.reason
    return GradeResult(False, extracted, reason)
