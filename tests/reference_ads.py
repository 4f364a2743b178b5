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

from attnrl_jax.rl.ads import (  # noqa: F401 (re-exported for the tests)
    ALL_CORRECT_MODES,
    EXPANSION_MODES,
    ZERO_ADVANTAGE_FILTERS,
    ADSConfig,
)

DEFAULT_CONFIG = ADSConfig()


def expansion_count(num_correct: int, group_size: int, config: ADSConfig = DEFAULT_CONFIG) -> int:
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
    rewards: np.ndarray, rng: np.random.Generator, config: ADSConfig = DEFAULT_CONFIG
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
    config: ADSConfig = DEFAULT_CONFIG,
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


def keep_problem(tree: ProblemTree, config: ADSConfig = DEFAULT_CONFIG) -> bool:
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


def next_prompt_batch_size(
    prev: int, last_sequences: int, config: ADSConfig = DEFAULT_CONFIG
) -> int:
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
