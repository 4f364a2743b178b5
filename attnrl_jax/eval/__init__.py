"""Evaluation: avg@k, pass@k and maj@k over graded samples of benchmark problems.

metrics.py (the formulas), benchmarks.py (bundled sets, the demo set, user files), run.py
(`evaluate_policy`: sample, grade, aggregate), report.py (report.json / report.md), training.py
(the trainer's periodic evaluation). Only the metrics are imported here, so importing the
package stays light; import the others from their modules.
"""

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
