"""Evaluation: avg@k, pass@k and maj@k over graded samples of benchmark problems."""

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

__all__ = [
    "ProblemResult",
    "avg_at_k",
    "benchmark_metrics",
    "macro_average",
    "maj_at_k",
    "majority_index",
    "normalize_answer",
    "pass_at_k",
    "problem_metrics",
]
