"""avg@k, pass@k and maj@k against hand-computed values."""

from fractions import Fraction
from math import comb

import pytest

from attnrl_jax.eval.metrics import (
    ProblemResult,
    avg_at_k,
    benchmark_metrics,
    macro_average,
    maj_at_k,
    majority_index,
    normalize_answer,
    pass_at_k,
    problem_metrics,
)


def test_avg_at_k():
    assert avg_at_k([True, False, False, True]) == 0.5
    assert avg_at_k([False]) == 0.0
    with pytest.raises(ValueError):
        avg_at_k([])


def test_pass_at_k_hand_values():
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(8, 3, 1) == pytest.approx(3 / 8)  # pass@1 is c/n
    assert pass_at_k(4, 0, 4) == 0.0
    assert pass_at_k(4, 2, 3) == 1.0  # fewer than k wrong samples: some draw has a right one


def test_pass_at_k_matches_exact_binomials():
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - Fraction(comb(n - c, k), comb(n, k))
                assert pass_at_k(n, c, k) == pytest.approx(float(exact), abs=1e-12), (n, c, k)


def test_pass_at_k_is_stable_for_large_n():
    # C(10000, 5000) has about 3000 digits; the product form never builds it.
    exact = 1 - Fraction(comb(9997, 5000), comb(10000, 5000))
    assert pass_at_k(10000, 3, 5000) == pytest.approx(float(exact), rel=1e-12)
    assert pass_at_k(1000, 1, 500) == pytest.approx(0.5, rel=1e-12)
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)


def test_majority_vote_and_tie_rule():
    answers = ["1", "2", "2", None, "1"]
    correct = [True, False, False, False, True]
    assert majority_index(answers) == 0  # "1" and "2" tie at 2 votes: "1" was seen first
    assert maj_at_k(answers, correct, 5) == 1.0
    assert maj_at_k(answers, correct, 3) == 0.0  # "2" has 2 of the first 3
    assert maj_at_k(answers, correct, 1) == 1.0
    assert majority_index(["2", "1", "1", "2"]) == 0
    assert majority_index([None, None]) is None
    assert maj_at_k([None, None], [False, False], 2) == 0.0
    # The winner's correctness is that of its first sample.
    assert maj_at_k([None, "5", "5"], [False, True, False], 3) == 1.0


def test_majority_keys_and_equivalence():
    assert normalize_answer(" $ \\frac{1}{2} $ ") == "\\frac{1}{2}"
    assert majority_index(["3", "$3$", " 4", "4 ", "4"]) == 2
    answers, correct = ["2", "0.5", "1/2"], [False, True, True]
    assert maj_at_k(answers, correct, 3) == 0.0  # three different strings: the first wins
    same = lambda a, b: Fraction(a) == Fraction(b)
    assert majority_index(answers, equivalent=same) == 1
    assert maj_at_k(answers, correct, 3, equivalent=same) == 1.0
    assert majority_index(["A", "a", "b"], key=str.lower) == 0
    with pytest.raises(ValueError, match="answers but"):
        maj_at_k(["1"], [True, False], 1)
    with pytest.raises(ValueError, match="1 <= k <= 2"):
        maj_at_k(["1", "2"], [True, False], 3)


def test_problem_and_benchmark_metrics():
    first = ProblemResult([True, False, False, False], ["7", "3", "3", "5"])
    second = ProblemResult([True] * 4, ["1"] * 4)
    assert problem_metrics(first, [1, 2, 4]) == pytest.approx(
        {
            "avg@4": 0.25,
            "pass@1": 0.25,
            "pass@2": 0.5,
            "pass@4": 1.0,
            "maj@1": 1.0,
            "maj@2": 1.0,
            "maj@4": 0.0,
        }
    )
    assert benchmark_metrics([first, second], [1, 2, 4]) == pytest.approx(
        {
            "avg@4": 0.625,
            "pass@1": 0.625,
            "pass@2": 0.75,
            "pass@4": 1.0,
            "maj@1": 1.0,
            "maj@2": 1.0,
            "maj@4": 0.5,
        }
    )
    with pytest.raises(ValueError, match="different sample counts"):
        benchmark_metrics([first, ProblemResult([True], ["1"])], [1])
    with pytest.raises(ValueError, match="at least one problem"):
        benchmark_metrics([], [1])
    per_benchmark = {"aime24": {"avg@4": 0.5}, "math500": {"avg@4": 0.25}}
    assert macro_average(per_benchmark, "avg@4") == 0.375
