"""Adversarial inputs finish within the time budget with a result, never an exception."""

from __future__ import annotations

import time

import pytest

from attnrl_jax.rewards.extract import extract_answer
from attnrl_jax.rewards.math import GradeResult, grade

BUDGET_S = 1.0
SLACK_S = 1.5  # parsing before/after the timed stages, on a loaded 2-core machine

ADVERSARIAL = {
    "nested_braces": ("\\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}", "1"),
    "nested_parens": ("\\boxed{" + "(" * 3000 + "1" + ")" * 3000 + "}", "1"),
    "tower_braced": ("\\boxed{9^{9^{9^{9}}}}", "1"),
    "tower_plain": ("\\boxed{9^9^9^9}", "1"),
    "tower_python": ("\\boxed{9**9**9**9}", "1"),
    "tower_grouped": ("\\boxed{(10^{299})^{9999}}", "1"),
    "huge_factorial": ("\\boxed{100000!}", "1"),
    "factorial_of_power": ("\\boxed{(10^{5})!}", "1"),
    "many_digits": ("\\boxed{" + "9" * 5000 + "}", "1"),
    "sympy_hang": ("\\boxed{(x+1)^{9999}}", "(x+2)^{9999}"),
    "big_power_pair": ("\\boxed{9999^{9999}}", "9999^{9998}"),
    "long_response": ("x" * 100_000 + " \\boxed{2}", "2"),
    "long_boxed": ("\\boxed{" + "1+" * 50_000 + "1}", "3"),
    "many_unclosed_boxes": ("\\boxed{1 " * 20_000, "1"),
    "unbalanced_open": ("\\boxed{\\frac{1}{2}", "\\frac12"),
    "unbalanced_close": ("}}}\\boxed{1}}}}{{{", "1"),
    "control_chars": ("\x00\x01\\boxed{1\x07}\x1b[31m\x7f", "1"),
    "lone_surrogate": ("\\boxed{\ud800}", "1"),
    "empty_box": ("\\boxed{}", "1"),
    "backslashes": ("\\boxed{\\\\\\\\\\}", "1"),
    "gold_is_garbage": ("\\boxed{1}", "}{\\frac{"),
    "latex_junk": ("\\boxed{\\begin{pmatrix} & & \\\\ \\end{pmatrix}}", "\\begin{array}"),
    "huge_matrix": ("\\boxed{\\begin{pmatrix}" + "1 & " * 3000 + "1\\end{pmatrix}}", "1"),
    "long_list": ("\\boxed{" + ",".join(map(str, range(3000))) + "}", "1,2"),
    "interval_junk": ("\\boxed{(,]}", "[,)"),
    # "i" becomes the imaginary unit, and sympy cannot order complex numbers
    "complex_order": ("\\boxed{i < 1}", "1"),
    "complex_order_gold": ("\\boxed{1}", "i > 2"),
    "long_repeating": ("\\boxed{0." + "1" * 5000 + "\\overline{" + "3" * 5000 + "}}", "1"),
    "many_repeating": ("\\boxed{" + "+".join(["0.1\\overline{23}"] * 3000) + "}", "1"),
    "huge_degrees": ("\\boxed{\\sin " + "9" * 5000 + "^\\circ}", "0"),
    "many_degrees": ("\\boxed{" + "".join(["\\cos 1^\\circ"] * 3000) + "}", "1"),
    "or_list": ("\\boxed{" + " or ".join(map(str, range(3000))) + "}", "1, 2"),
    # the hybrid reward's Math-Verify fallback reads the whole text after </think>
    "thousand_boxes": (" ".join(f"\\boxed{{{i}}}" for i in range(1000)), "999"),
    "thousand_boxes_multipart_gold": (" ".join(f"\\boxed{{{i}}}" for i in range(1000)), "1, 2"),
    "response_200kB": ("Let me think. " * 15_000 + "So the answer is \\boxed{2}.", "2"),
    "unboxed_200kB": ("We add $1+1$ here. " * 10_000 + "The final answer is $2$.", "2"),
    "unboxed_200kB_wrong": ("We add $1+1$ here. " * 10_000 + "The final answer is $3$.", "2"),
    "nested_boxes": ("\\boxed{" * 2000 + "1" + "}" * 2000, "1"),
    "few_nested_boxes": ("\\boxed{" * 5 + "1" + "}" * 5, "1"),
    "boxes_in_a_box": ("\\boxed{\\boxed{1} + \\boxed{2}} and \\boxed{\\boxed{3}}", "1, 3"),
    "long_expression_text": ("$" + "1+" * 30_000 + "1$", "3"),  # Math-Verify alone: ~4.5 s
    "tower_in_text": ("The answer is $9^{9^{9^{9}}}$, clearly.", "1"),
    "factorial_in_text": ("The answer is $(10^{5})!$ ways.", "1"),
    "many_carets_text": ("$x^2$ " * 20_000, "1"),
}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_adversarial_finishes_with_a_result(name: str):
    response, gold = ADVERSARIAL[name]
    start = time.monotonic()
    r = grade(response, gold, time_budget_s=BUDGET_S)
    elapsed = time.monotonic() - start
    assert isinstance(r, GradeResult)
    assert elapsed < BUDGET_S + SLACK_S, (name, elapsed, r)


@pytest.mark.parametrize(
    ("name", "correct"),
    [
        ("long_response", True),
        ("unbalanced_close", True),
        ("control_chars", True),
        ("tower_plain", False),
        ("long_boxed", False),
        ("big_power_pair", False),  # both overflow a float: must still differ
        ("sympy_hang", False),
        ("complex_order", False),
        ("complex_order_gold", False),
        ("thousand_boxes", True),
        ("thousand_boxes_multipart_gold", False),
        ("response_200kB", True),
        ("unboxed_200kB", True),
        ("unboxed_200kB_wrong", False),
        ("nested_boxes", False),  # nested deeper than the fallback reads: refused
        ("few_nested_boxes", True),
        ("boxes_in_a_box", False),
        ("tower_in_text", False),
    ],
)
def test_adversarial_verdicts(name: str, correct: bool):
    response, gold = ADVERSARIAL[name]
    assert grade(response, gold, time_budget_s=BUDGET_S).correct is correct


def test_truncated_last_box_falls_back_to_previous_complete_box():
    assert extract_answer("\\boxed{1} then \\boxed{\\frac{2}{") == "1"


def test_empty_box_is_no_answer():
    assert grade("\\boxed{ }", "1") == GradeResult(False, " ".strip(), "no_answer")


def test_only_text_after_last_think_counts():
    assert extract_answer("\\boxed{1}</think>no box here") is None
    assert extract_answer("<think>\\boxed{1}</think>x</think>\\boxed{2}") == "2"
    assert extract_answer("no think tag \\boxed{3}") == "3"
    assert extract_answer("\\fbox{4}") == "4"
    assert extract_answer("\\boxed{\\boxed{\\frac{1}{2}}}") == "\\frac{1}{2}"
    assert extract_answer("\\boxed{\\boxed{1} + 2}") == "\\boxed{1} + 2"
    assert extract_answer("\\boxed 5$.") == "5"
    assert extract_answer("\\boxed{\\{1, 2\\}}") == "\\{1, 2\\}"


def test_an_exception_inside_a_comparison_is_an_incorrect_result(monkeypatch):
    """Any other gold form still counts; the error is the reason when none matches."""
    import attnrl_jax.rewards.math as math_module

    real = math_module.equivalent

    def flaky(a, b, deadline, **kwargs):
        if b == "bad":
            raise TypeError("corner case")
        return real(a, b, deadline, **kwargs)

    monkeypatch.setattr(math_module, "equivalent", flaky)
    assert grade("\\boxed{2}", ["bad"]) == GradeResult(False, "2", "error: TypeError")
    assert grade("\\boxed{2}", ["bad", "2"]).correct
