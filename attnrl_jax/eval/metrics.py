"""Benchmark metrics over n graded samples per problem: avg@k, pass@k and maj@k.

Pure functions of per-sample correctness and extracted answers, so they are checked against
hand-computed values and shared by the evaluate tool and evaluation during training.

- avg@k: the mean correctness of a problem's k samples (the paper's "Pass@1" is avg@32 or avg@4).
- pass@k: the unbiased estimator 1 - C(n-c, k) / C(n, k) of "at least one of k samples is
  correct" (Chen et al. 2021), from n >= k samples of which c are correct; computed as the
  product 1 - prod_{i=n-c+1}^{n} (1 - k/i), which never forms the huge binomials.
- maj@k: whether the majority answer among the first k samples is correct. Samples without an
  extracted answer do not vote. Ties go to the answer seen first (the earliest sample), as
  `collections.Counter.most_common` does over answers in sample order.

Benchmark values are means over problems (each problem weighs the same), as fractions in [0, 1].
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Hashable, Mapping, Sequence

import numpy as np

_SPACE = re.compile(r"\s+")


def avg_at_k(correct: Sequence[bool]) -> float:
    """Mean correctness of one problem's samples (k = their number)."""
    if not correct:
        raise ValueError("avg@k needs at least one sample")
    return float(np.mean(np.asarray(correct, dtype=np.float64)))


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with c correct of n samples."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def normalize_answer(answer: str) -> str:
    """Default maj@k vote key: whitespace removed, one pair of enclosing `$` dropped."""
    key = _SPACE.sub("", answer)
    if len(key) >= 2 and key[0] == key[-1] == "$":
        key = key[1:-1]
    return key


def majority_index(
    answers: Sequence[str | None],
    *,
    key: Callable[[str], Hashable] = normalize_answer,
    equivalent: Callable[[str, str], bool] | None = None,
) -> int | None:
    """Index of the first sample of the winning answer group, or None if no sample answered.

    Groups are formed by `equivalent` when given (a sample joins the first group whose first
    member it is equivalent to), otherwise by equal `key`. Ties: the earliest group wins.
    """
    firsts: list[int] = []
    counts: list[int] = []
    by_key: dict[Hashable, int] = {}
    for i, answer in enumerate(answers):
        if answer is None:
            continue
        if equivalent is None:
            group = by_key.setdefault(key(answer), len(firsts))
        else:
            group = next(
                (g for g, f in enumerate(firsts) if equivalent(answers[f], answer)), len(firsts)
            )
        if group == len(firsts):
            firsts.append(i)
            counts.append(0)
        counts[group] += 1
    if not counts:
        return None
    return firsts[int(np.argmax(counts))]  # argmax returns the first maximum: earliest group


def maj_at_k(
    answers: Sequence[str | None],
    correct: Sequence[bool],
    k: int,
    *,
    key: Callable[[str], Hashable] = normalize_answer,
    equivalent: Callable[[str, str], bool] | None = None,
) -> float:
    """1.0 if the majority answer of the first k samples is correct, else 0.0 (also when none
    of them has an answer). The winner's correctness is that of its first sample."""
    if len(answers) != len(correct):
        raise ValueError(f"{len(answers)} answers but {len(correct)} correctness flags")
    if not 1 <= k <= len(answers):
        raise ValueError(f"maj@k needs 1 <= k <= {len(answers)} samples, got k={k}")
    winner = majority_index(answers[:k], key=key, equivalent=equivalent)
    return float(winner is not None and bool(correct[winner]))


@dataclasses.dataclass(frozen=True)
class ProblemResult:
    """One problem's graded samples: per-sample correctness and extracted answer (None: none)."""

    correct: Sequence[bool]
    answers: Sequence[str | None]


def problem_metrics(
    result: ProblemResult,
    ks: Sequence[int],
    *,
    key: Callable[[str], Hashable] = normalize_answer,
    equivalent: Callable[[str, str], bool] | None = None,
) -> dict[str, float]:
    """avg@n over all n samples, and pass@k and maj@k for each k, of one problem.

    Keys: "avg@32", "pass@1", "maj@4", ...
    """
    n, c = len(result.correct), int(sum(bool(x) for x in result.correct))
    metrics = {f"avg@{n}": avg_at_k(result.correct)}
    for k in ks:
        metrics[f"pass@{k}"] = pass_at_k(n, c, k)
    for k in ks:
        metrics[f"maj@{k}"] = maj_at_k(
            result.answers, result.correct, k, key=key, equivalent=equivalent
        )
    return metrics


def benchmark_metrics(
    results: Sequence[ProblemResult],
    ks: Sequence[int],
    *,
    key: Callable[[str], Hashable] = normalize_answer,
    equivalent: Callable[[str, str], bool] | None = None,
) -> dict[str, float]:
    """Per-problem metrics averaged over a benchmark's problems (all with the same n)."""
    if not results:
        raise ValueError("a benchmark needs at least one problem")
    sizes = sorted({len(r.correct) for r in results})
    if len(sizes) > 1:
        raise ValueError(f"problems of one benchmark have different sample counts {sizes}")
    rows = [problem_metrics(r, ks, key=key, equivalent=equivalent) for r in results]
    return {name: float(np.mean([row[name] for row in rows])) for name in rows[0]}


def macro_average(per_benchmark: Mapping[str, Mapping[str, float]], metric: str) -> float:
    """The unweighted mean of one metric over benchmarks (the paper's "avg" column)."""
    if not per_benchmark:
        raise ValueError("no benchmarks to average")
    return float(np.mean([m[metric] for m in per_benchmark.values()]))
