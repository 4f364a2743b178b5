"""REFERENCE (tests only): the former host implementation of ADS in numpy float64. The package
runs attnrl_jax.rl.ads (jitted); tests/test_rl_ads.py checks both agree.

ADS, adaptive sampling (ALGORITHM.md section 6): how many responses of each problem to expand,
which ones, which all-correct problems deserve expansion, which problems to drop, how many prompts
the next batch takes, and padding of row counts to static buckets.

Host-side pure functions; the only state, the attention filter's running mean, is an explicit
value (AttentionFilterState) that the trainer checkpoints. Where paper and released code differ the
released code is the default:
- expansion count ceil(G * exp(-c / G)) (the paper writes round: `rounding="round"`);
- all-correct problems that pass the filter expand their FIRST ceil(G / e) responses (index order);
- mixed problems: minority outcome first (a tie goes to the incorrect ones), then a random sample of
  the others;
- the running mean includes the current batch before any of its problems is judged, and a problem
  expands only if its mean FCI is strictly greater;
- the zero-advantage filter drops problems whose training paths all have the same leaf reward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import jax
import numpy as np
from reference_tree import ProblemTree

EXPANSION_MODES = ("exp", "uniform")  # difficulty-aware count, or all G (ablation)
ALL_CORRECT_MODES = ("attention", "always")
ZERO_ADVANTAGE_FILTERS = ("same_reward", "zero_advantage", "off")


@dataclass(frozen=True)
class ADSConfig:
    """ADS settings (defaults: the published AttnRL run).

    expansion: "exp" (ceil(G * exp(-c / G)) responses) or "uniform" (all G; the ablation without
    difficulty-aware expansion). rounding: "ceil" (released code) or "round" (paper).
    all_correct: "attention" (the attention filter) or "always" (the ablation without it).
    zero_advantage_filter: "same_reward" (drop problems whose training paths all share one reward,
    released code), "zero_advantage" (drop problems whose every token advantage is 0) or "off".
    target_sequences: B', training sequences wanted per step (64 x 6 x 5). batch_lambda: weight of
    the previous prompt batch size. initial_prompt_batch_size: prompts in the first batches.
    row_buckets: static row counts that training batches are padded up to.
    """

    expansion: str = "exp"
    rounding: str = "ceil"
    all_correct: str = "attention"
    zero_advantage_filter: str = "same_reward"
    target_sequences: int = 1920
    batch_lambda: float = 0.9
    initial_prompt_batch_size: int = 64
    row_buckets: tuple[int, ...] = (8, 16, 32, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536)

    def __post_init__(self):
        choices = {
            "expansion": EXPANSION_MODES,
            "rounding": ("ceil", "round"),
            "all_correct": ALL_CORRECT_MODES,
            "zero_advantage_filter": ZERO_ADVANTAGE_FILTERS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"ADSConfig.{name}={getattr(self, name)!r}; allowed: {allowed}")
        if not 0.0 <= self.batch_lambda <= 1.0:
            raise ValueError(f"batch_lambda must be in [0, 1], got {self.batch_lambda}")
        if self.target_sequences < 1 or self.initial_prompt_batch_size < 1:
            raise ValueError("target_sequences and initial_prompt_batch_size must be >= 1")
        if not self.row_buckets or list(self.row_buckets) != sorted(set(self.row_buckets)):
            raise ValueError(f"row_buckets must be strictly increasing, got {self.row_buckets}")
        if self.row_buckets[0] < 1:
            raise ValueError("row_buckets must be positive")


def expansion_count(num_correct: int, group_size: int, config: ADSConfig = ADSConfig()) -> int:
    """Responses to expand when `num_correct` of `group_size` (G) initial responses are correct.

    "exp": ceil (or round) of G * exp(-c / G), so all-wrong gives G and all-correct ceil(G / e).
    Never below the minority count: exp(-x) >= 1 - x for all x, and >= x for x <= 1/2.
    """
    if not 0 <= num_correct <= group_size:
        raise ValueError(f"num_correct={num_correct} outside [0, {group_size}]")
    if config.expansion == "uniform":
        return group_size
    x = group_size * math.exp(-num_correct / group_size)
    return math.ceil(x) if config.rounding == "ceil" else round(x)


def choose_expansions(
    rewards: np.ndarray, rng: np.random.Generator, config: ADSConfig = ADSConfig()
) -> np.ndarray:
    """Indices (sorted) of the initial responses to expand, ignoring the all-correct filter.

    rewards: 0/1 [G]. Mixed: every minority-outcome response, then a random sample of the others up
    to the count (incorrect ones count as the minority on a tie). All-wrong: all G (the count is G).
    All-correct: the first `count` responses, as in the released code.
    """
    rewards = np.asarray(rewards)
    g, c = len(rewards), int((rewards > 0).sum())
    count = expansion_count(c, g, config)
    if c in (0, g):
        return np.arange(count)
    correct, wrong = np.flatnonzero(rewards > 0), np.flatnonzero(rewards <= 0)
    minority, others = (wrong, correct) if c >= g - c else (correct, wrong)
    extra = rng.choice(others, size=count - len(minority), replace=False)
    return np.sort(np.concatenate([minority, extra]))


def problem_mean_fci(fci: np.ndarray, num_steps: np.ndarray) -> float:
    """A problem's attention score: mean over its responses of the mean FCI of response steps.

    fci: float[G, >= S_max + 1], per step with step 0 (the prompt) first, as the scoring pass gives
    it; masked steps are zeros and stay in the mean. num_steps: int[G], S per response (>= 1).
    """
    fci = np.asarray(fci, dtype=np.float64)
    return float(np.mean([fci[i, 1 : 1 + int(s)].mean() for i, s in enumerate(num_steps)]))


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class AttentionFilterState:
    """Running count-weighted mean of all-correct problems' mean FCI: total / count.

    A pytree (two scalar leaves) so it checkpoints with the rest of the training state.
    """

    total: float = 0.0
    count: int = 0


def attention_filter(
    state: AttentionFilterState, scores: np.ndarray
) -> tuple[AttentionFilterState, np.ndarray]:
    """Judge a batch's all-correct problems; returns (new state, bool[P] expand).

    scores: float[P], problem_mean_fci of each all-correct problem of the batch. The batch is
    added to the running mean first (the released code does so before any decision), then a
    problem expands iff its score > the updated mean. An empty batch leaves the state unchanged.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if scores.size == 0:
        return state, np.zeros(0, dtype=bool)
    new = AttentionFilterState(float(state.total + scores.sum()), int(state.count + scores.size))
    return new, scores > new.total / new.count


def plan_expansions(
    rewards: np.ndarray,
    mean_fci: np.ndarray,
    state: AttentionFilterState,
    rng: np.random.Generator,
    config: ADSConfig = ADSConfig(),
) -> tuple[AttentionFilterState, list[np.ndarray]]:
    """Which responses of each problem of a batch to expand.

    rewards: 0/1 [P, G]. mean_fci: float[P], problem_mean_fci per problem (read only for
    all-correct problems). Returns the updated filter state and, per problem, the sorted indices
    to expand (empty for an all-correct problem that is filtered out). Problems draw from `rng` in
    order.
    """
    rewards = np.asarray(rewards)
    all_correct = (rewards > 0).all(axis=1)
    keep = np.ones(len(rewards), dtype=bool)
    if config.all_correct == "attention":
        state, passed = attention_filter(state, np.asarray(mean_fci)[all_correct])
        keep[all_correct] = passed
    chosen = [
        choose_expansions(r, rng, config) if k else np.zeros(0, dtype=np.int64)
        for r, k in zip(rewards, keep, strict=True)
    ]
    return state, chosen


def keep_problem(tree: ProblemTree, config: ADSConfig = ADSConfig()) -> bool:
    """Zero-advantage filter: whether a problem's training paths carry any learning signal.

    A problem without training paths is always dropped.
    """
    if not tree.paths:
        return False
    if config.zero_advantage_filter == "same_reward":
        return len({p.reward for p in tree.paths}) > 1
    if config.zero_advantage_filter == "zero_advantage":
        return any(bool(np.any(p.advantages != 0)) for p in tree.paths)
    return True


def next_prompt_batch_size(prev: int, last_sequences: int, config: ADSConfig = ADSConfig()) -> int:
    """B_next = ceil((1 - lambda) * floor(B_prev * B' / B'') + lambda * B_prev).

    prev: B_prev, prompts in the last batch. last_sequences: B'', training sequences in the last
    batch after filtering. Computed exactly (lambda as its decimal value): the released code uses
    float64 and its ceil rounds float noise up by one in about 1% of cases. B'' = 0 gives no ratio
    to aim by, so the size stays. Never below 1.
    """
    if last_sequences <= 0:
        return max(prev, 1)
    lam = Fraction(repr(config.batch_lambda))
    target = (prev * config.target_sequences) // last_sequences
    return max(math.ceil((1 - lam) * target + lam * prev), 1)


def bucket_size(n: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket >= n; beyond the largest, the next multiple of the largest."""
    for b in buckets:
        if n <= b:
            return b
    return -(-n // buckets[-1]) * buckets[-1]


def pad_rows(arrays: dict[str, np.ndarray], buckets: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Pad each array's leading axis (N rows, equal for all) with zeros up to bucket_size(N).

    Adds "row_weight": float32[N_pad], 1 for real rows and 0 for padding, so padded rows carry
    zero weight (and zero advantage) in the loss while the jitted step sees a static shape.
    """
    sizes = {len(a) for a in arrays.values()}
    if len(sizes) != 1:
        raise ValueError(f"arrays disagree on the row count: {sorted(sizes)}")
    (n,) = sizes
    size = bucket_size(n, buckets)
    out = {
        k: np.pad(np.asarray(a), [(0, size - n)] + [(0, 0)] * (np.ndim(a) - 1))
        for k, a in arrays.items()
    }
    out["row_weight"] = (np.arange(size) < n).astype(np.float32)
    return out
