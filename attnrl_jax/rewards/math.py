"""``grade(response, gold)``: the 0/1 correctness reward of AttnRL (ALGORITHM.md section 4).

Pure and in-process. Two rewards (``reward``):
  hybrid (default) the authors' order: the last ``\\boxed{}``/``\\fbox{}`` after the last
                   ``</think>`` (:mod:`extract`) against each gold form by normalised exact match
                   and structure/sympy (:mod:`equivalence`, the DeepScaleR graders' role); then
                   a run of boxes against a multi-part gold (sets, tuple lists, and/or-joined and
                   labelled lists: ``\\boxed{k = 45}`` and ``\\boxed{n = 2}`` for ``45, 2``); then
                   Math-Verify over the whole region (:mod:`fallback`).
  boxed            the last box only: exact, sympy, then Math-Verify on the box's content.
A gold is used as-is, or taken from its own last box (as the authors do) or last run of boxes.
When the gold is one value, the last box still decides (a revised answer counts): a multi-box
response passes only through a multi-part gold. Time is bounded by ``time_budget_s`` on the main
thread (SIGALRM) and by refusing explosive inputs everywhere; :mod:`batch` adds a hard per-item
process deadline.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from attnrl_jax.rewards.equivalence import Verdict, _is_constant, equivalent
from attnrl_jax.rewards.extract import answer_region, boxed_spans, extract_answer, last_box_run
from attnrl_jax.rewards.limits import intractable
from attnrl_jax.rewards.normalize import canonical, normalize
from attnrl_jax.rewards.structure import parse_structure

DEFAULT_TIME_BUDGET_S = 4.0
REWARDS = ("hybrid", "boxed")
MAX_PARTS = 16  # more boxes than this are not the parts of one answer


@dataclass(frozen=True)
class GradeResult:
    """``reason``: exact | sympy | multi_box | math_verify (correct), mismatch | no_answer |
    no_gold | guarded | stage_timeout | error: <exception type> (incorrect); the batch grader
    adds ``timeout`` and ``error``. ``extracted``: the last box, or (hybrid, no box) the answer
    Math-Verify found in the text."""

    correct: bool
    extracted: str | None
    reason: str


def gold_forms(gold: str | int | float | Sequence[str]) -> list[str]:
    """The accepted gold strings: a number from JSON is its text; a boxed gold is its last box,
    or its last run of boxes joined by commas (``\\boxed{2}, \\boxed{3}``: the parts)."""
    if isinstance(gold, str | int | float):
        gold = [str(gold)]
    forms = []
    for g in gold:
        if isinstance(g, str):
            parts = [b for b in last_box_run(g) if b]
            forms.append(", ".join(parts) if parts else g)
    return forms


def _last_box(extracted: str, golds: list[str], deadline: float, math_verify: bool) -> Verdict:
    reason = "mismatch"
    for g in golds:
        try:
            verdict = equivalent(extracted, g, deadline, math_verify=math_verify)
        except Exception as e:  # a parser or sympy corner case: a reward, never a crash
            if reason == "mismatch":
                reason = f"error: {type(e).__name__}"
            continue
        if verdict.equal:
            return verdict
        if reason == "mismatch":
            reason = verdict.reason
    return Verdict(False, reason)


def _multi_box(region: str, golds: list[str], deadline: float) -> bool:
    """The distinct boxes of the last run of boxes in ``region``, joined by commas, equal a
    multi-part gold."""
    parts: dict[str, str] = {}
    for b in last_box_run(region):
        if b.strip():
            parts.setdefault(canonical(normalize(b)), b)
        if len(parts) > MAX_PARTS:
            return False
    if len(parts) < 2:
        return False
    joined = ", ".join(parts.values())
    for g in golds:
        if parse_structure(normalize(g)).kind not in ("list", "set"):
            continue
        try:
            if equivalent(joined, g, deadline, math_verify=False).equal:
                return True
        except Exception:  # noqa: BLE001 - as in _last_box
            continue
    return False


def _fallback_reads_only(region: str, extracted: str, golds: list[str]) -> bool:
    """Math-Verify over ``region`` would read just this box, and box and golds are constants, so
    the fallback would repeat the sympy verdict (it compares two constants with our exact check):
    one box, and no "final answer" phrase (its only patterns that outrank a box)."""
    if len(boxed_spans(region)) != 1 or "final answer" in region.lower():
        return False
    forms = [normalize(x) for x in (extracted, *golds)]
    return all(not intractable(f) and _is_constant(f) for f in forms)


def grade(
    response: str,
    gold: str | Sequence[str],
    *,
    reward: str = "hybrid",
    time_budget_s: float = DEFAULT_TIME_BUDGET_S,
) -> GradeResult:
    """Grade one response against a gold answer or a list of accepted gold forms."""
    if reward not in REWARDS:
        raise ValueError(f"reward must be one of {REWARDS}, got {reward!r}")
    golds = gold_forms(gold)
    extracted = extract_answer(response)
    boxed = bool(extracted and extracted.strip())  # an empty box is no answer either
    if not boxed and reward == "boxed":
        return GradeResult(False, extracted, "no_answer")
    if not golds:
        return GradeResult(False, extracted, "no_gold")
    deadline = time.monotonic() + time_budget_s
    verdict = Verdict(False, "no_answer")
    if boxed:
        verdict = _last_box(extracted, golds, deadline, math_verify=reward == "boxed")
        if verdict.equal or reward == "boxed":
            return GradeResult(verdict.equal, extracted, verdict.reason)
    from attnrl_jax.rewards.fallback import math_verify_text  # imports Math-Verify

    region = answer_region(response)
    if boxed and _multi_box(region, golds, deadline):
        return GradeResult(True, extracted, "multi_box")
    if boxed and _fallback_reads_only(region, extracted, golds):
        return GradeResult(False, extracted, verdict.reason)
    mv, found = math_verify_text(region, golds, deadline)
    if boxed:
        return GradeResult(mv.equal, extracted, mv.reason if mv.equal else verdict.reason)
    return GradeResult(mv.equal, found or extracted, mv.reason)
