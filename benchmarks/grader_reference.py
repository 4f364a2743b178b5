"""The authors' reward (rllm_skywork / math_reward_v2; ALGORITHM.md section 4), reproduced with
Math-Verify as the reference for benchmarks/grader.py and benchmarks/grader_peer.py.

The text after the last ``</think>``; its last ``\\boxed{}``/``\\fbox{}`` (brace counting); a gold
taken from its own last box if it has one; correct if the box equals the gold string or
Math-Verify equates the box with the gold (a stand-in for DeepScaleR's ``grade_answer_mathd`` /
``grade_answer_sympy``, which are not installed here and not copied); otherwise Math-Verify over
the whole text: ``parse(text, parsing_timeout=5)`` with >= 2 entries, ``parsed[1]`` equal to a
gold string, or ``verify(parse("\\boxed{gold}"), parsed, timeout_seconds=5)``.
"""

from __future__ import annotations

import logging

from attnrl_jax.rewards.math import GradeResult


def _authors_last_box(text: str) -> str | None:
    """The last ``\\boxed{...}`` / ``\\fbox{...}`` by brace counting from its start."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j]
    return None


def authors_grade(response: str, golds, *, time_budget_s: float = 0.0) -> GradeResult:
    """The authors' 0/1 reward (see the module docstring); a GradeFn for the worker pool."""
    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # a timeout warning quotes the text
    golds = [golds] if isinstance(golds, str) else list(golds)
    golds = [_authors_last_box(g) or g if "\\boxed" in g else g for g in golds]
    text = response.split("</think>")[-1]
    box = _authors_last_box(text)
    if box is not None:
        for g in golds:
            if box.strip() == g.strip():
                return GradeResult(True, box, "exact")
            try:
                gp = parse("\\boxed{" + g + "}", parsing_timeout=5)
                bp = parse("\\boxed{" + box + "}", parsing_timeout=5)
                if gp and bp and verify(gp, bp, timeout_seconds=5):
                    return GradeResult(True, box, "box_math_verify")
            except Exception:  # noqa: BLE001 - as the authors: an error is "not correct"
                pass
    try:
        parsed = parse(text, parsing_timeout=5)
    except Exception:  # noqa: BLE001
        return GradeResult(False, box, "parse_error")
    if len(parsed) < 2:
        return GradeResult(False, box, "no_parse")
    if parsed[1] in golds:
        return GradeResult(True, box, "text_string")
    for g in golds:
        try:
            if verify(parse("\\boxed{" + g + "}", parsing_timeout=5), parsed, timeout_seconds=5):
                return GradeResult(True, box, "text_math_verify")
        except Exception:  # noqa: BLE001
            continue
    return GradeResult(False, box, "mismatch")
