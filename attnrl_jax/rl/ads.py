"""ADS, adaptive sampling (ALGORITHM.md section 6): how many responses of each problem to expand,
which ones, which all-correct problems deserve expansion, which problems to drop and how many
prompts the next batch takes.

Jitted functions over a padded batch of problems ([P, G] rewards; no Python loop per problem); the
only state, the attention filter's running mean, is an explicit value (AttentionFilterState) that
the trainer checkpoints. Random picks draw from fold_in(key, problem index), so they do not depend
on padding or batching. The attention scores and the filter's running mean are float64 (x64 is
switched on for those two calls only), so ties break as in the released float64 code; that is P
scalars per step, cheap even where float64 is emulated. Where paper and released code differ the
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
from dataclasses import dataclass, replace
from fractions import Fraction
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from attnrl_jax.buckets import power_of_two
from attnrl_jax.rl.tree import TreeInputs, TreeValues

EXPANSION_MODES = ("exp", "uniform")  # difficulty-aware count, or all G (ablation)
ALL_CORRECT_MODES = ("attention", "always")
ZERO_ADVANTAGE_FILTERS = ("same_reward", "zero_advantage", "off")


@dataclass(frozen=True)
class ADSConfig:
    """ADS settings (defaults: the published AttnRL run). Frozen and hashable: static under jit.

    expansion: "exp" (ceil(G * exp(-c / G)) responses) or "uniform" (all G; the ablation without
    difficulty-aware expansion). rounding: "ceil" (released code) or "round" (paper).
    all_correct: "attention" (the attention filter) or "always" (the ablation without it).
    zero_advantage_filter: "same_reward" (drop problems whose training paths all share one reward,
    released code), "zero_advantage" (drop problems whose every token advantage is 0) or "off".
    target_sequences: B', training sequences wanted per step (64 x 6 x 5). batch_lambda: weight of
    the previous prompt batch size. initial_prompt_batch_size: prompts in the first batches.
    """

    expansion: str = "exp"
    rounding: str = "ceil"
    all_correct: str = "attention"
    zero_advantage_filter: str = "same_reward"
    target_sequences: int = 1920
    batch_lambda: float = 0.9
    initial_prompt_batch_size: int = 64

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


def expansion_count(num_correct: int, group_size: int, config: ADSConfig = ADSConfig()) -> int:
    """Responses to expand when `num_correct` of `group_size` (G) initial responses are correct.

    "exp": ceil (or round) of G * exp(-c / G), so all-wrong gives G and all-correct ceil(G / e).
    Never below the minority count: exp(-x) >= 1 - x for all x, and >= x for x <= 1/2. Computed
    in float64 on the host; jitted code reads it from a table per c (expansion_table).
    """
    if not 0 <= num_correct <= group_size:
        raise ValueError(f"num_correct={num_correct} outside [0, {group_size}]")
    if config.expansion == "uniform":
        return group_size
    x = group_size * math.exp(-num_correct / group_size)
    return math.ceil(x) if config.rounding == "ceil" else round(x)


def expansion_table(group_size: int, config: ADSConfig = ADSConfig()) -> np.ndarray:
    """int32[G + 1]: expansion_count(c, G) for c = 0..G."""
    return np.array(
        [expansion_count(c, group_size, config) for c in range(group_size + 1)], np.int32
    )


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class AttentionFilterState:
    """Running count-weighted mean of all-correct problems' mean FCI: total / count.

    A pytree (two scalar leaves) so it checkpoints with the rest of the training state.
    """

    total: float = 0.0
    count: int = 0


@jax.jit
def _problem_mean_fci(fci: jax.Array, num_steps: jax.Array) -> jax.Array:
    s = jnp.maximum(num_steps, 1)
    k = jnp.arange(fci.shape[-1])
    inside = (k >= 1) & (k <= s[..., None])
    per_response = jnp.where(inside, fci.astype(jnp.float64), 0.0).sum(-1) / s
    return per_response.mean(-1)


def problem_mean_fci(fci: jax.Array, num_steps: jax.Array) -> jax.Array:
    """A problem's attention score: mean over its responses of the mean FCI of response steps.

    fci: float[..., G, S1], per step with step 0 (the prompt) first, as the scoring pass gives it;
    masked steps are zeros and stay in the mean, entries past S are padding. num_steps: int[..., G],
    S per response (0 counts as 1: an empty response scores its single zero). Returns float64[...].
    """
    with jax.enable_x64(True):
        return _problem_mean_fci(fci, num_steps)


def expansion_plan(
    rewards: jax.Array,
    problem_valid: jax.Array,
    mean_fci: jax.Array,
    state: AttentionFilterState,
    key: jax.Array,
    config: ADSConfig = ADSConfig(),
) -> tuple[AttentionFilterState, jax.Array, jax.Array]:
    """Which responses of each problem to expand: (new state, expand bool[P, G], filtered [P]).

    rewards: 0/1 [P, G]; problem_valid: bool[P] (padding rows False); mean_fci: float[P]
    (problem_mean_fci, read only for all-correct problems); state: the attention filter's running
    sums (returned as 0-d arrays; float() / int() them to store). Released-code rules: the count
    is ceil(G exp(-c / G)); all-wrong and all-correct problems expand their FIRST `count`
    responses; mixed ones every minority-outcome response (a tie makes the incorrect ones the
    minority), then a uniformly random sample of the others from fold_in(key, problem index).
    The filter adds the batch's all-correct problems to the running mean first; such a problem
    expands iff its score > the updated mean. `filtered` marks the all-correct problems the
    filter left unexpanded.
    """
    with jax.enable_x64(True):
        total, count, expand, filtered = _expansion_plan(
            jnp.asarray(rewards), jnp.asarray(problem_valid), jnp.asarray(mean_fci, jnp.float64),
            jnp.float64(state.total), jnp.int64(state.count), key, config,
        )  # fmt: skip
    return AttentionFilterState(total, count), expand, filtered


@partial(jax.jit, static_argnames="config")
def _expansion_plan(rewards, problem_valid, mean_fci, total, count, key, config):
    p, g = rewards.shape
    correct = rewards > 0
    c = correct.sum(-1)
    n = jnp.asarray(expansion_table(g, config))[c]
    all_correct = problem_valid & (c == g)
    keep = jnp.ones(p, bool)
    if config.all_correct == "attention":
        scores = jnp.where(all_correct, mean_fci, 0.0)
        total = total + scores.sum()
        count = count + all_correct.sum()
        keep = ~all_correct | (scores > total / jnp.maximum(count, 1))
    wrong_minority = c >= g - c
    minority = jnp.where(wrong_minority[:, None], ~correct, correct)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(p))
    u = jax.vmap(lambda k: jax.random.uniform(k, (g,)))(keys)
    u = jnp.where(minority, 2.0, u)  # rank the others only
    rank = jnp.argsort(jnp.argsort(u, axis=-1), axis=-1)
    extra = n - minority.sum(-1)
    mixed_pick = minority | (rank < extra[:, None])
    uniform = (c == 0) | (c == g)
    first = jnp.arange(g)[None, :] < n[:, None]
    chosen = jnp.where(uniform[:, None], first, mixed_pick)
    expand = chosen & (keep & problem_valid)[:, None]
    return total, count, expand, all_correct & ~keep


def plan_expansions(
    rewards: np.ndarray,
    mean_fci: np.ndarray,
    state: AttentionFilterState,
    rng: np.random.Generator,
    config: ADSConfig = ADSConfig(),
) -> tuple[AttentionFilterState, list[np.ndarray]]:
    """Host convenience over expansion_plan: (new state, sorted indices to expand per problem).

    rewards: 0/1 [P, G]. mean_fci: float[P]. The jax key is drawn from `rng`.
    """
    rewards = np.asarray(rewards, np.float32)
    p, g = rewards.shape
    rows = power_of_two(p, 8)
    padded = np.zeros((rows, g), np.float32)
    padded[:p] = rewards
    fci = np.zeros(rows, np.float64)
    fci[:p] = mean_fci
    key = jax.random.key(int(rng.integers(2**31)))
    new, expand, _ = jax.device_get(
        expansion_plan(padded, np.arange(rows) < p, fci, state, key, config)
    )
    return AttentionFilterState(float(new.total), int(new.count)), [
        np.flatnonzero(e) for e in expand[:p]
    ]


def choose_expansions(
    rewards: np.ndarray, rng: np.random.Generator, config: ADSConfig = ADSConfig()
) -> np.ndarray:
    """Indices (sorted) of one problem's initial responses to expand, ignoring the all-correct
    filter (expansion_plan's rules). rewards: 0/1 [G]."""
    always = replace(config, all_correct="always")
    _, chosen = plan_expansions(np.asarray(rewards)[None], np.zeros(1), AttentionFilterState(),
                                rng, always)  # fmt: skip
    return chosen[0]


def attention_filter(
    state: AttentionFilterState, scores: np.ndarray
) -> tuple[AttentionFilterState, np.ndarray]:
    """Judge a batch of all-correct problems (expansion_plan's filter): (new state, bool[P] expand).

    scores: float[P], problem_mean_fci of each all-correct problem. An empty batch leaves the
    state unchanged.
    """
    scores = np.asarray(scores, np.float64).reshape(-1)
    if scores.size == 0:
        return state, np.zeros(0, dtype=bool)
    ones = np.ones((scores.size, 1), np.float32)  # G = 1, correct: every problem is all-correct
    new, chosen = plan_expansions(ones, scores, state, np.random.default_rng(0))
    return new, np.array([len(c) > 0 for c in chosen])


@partial(jax.jit, static_argnames="mode")
def keep_problems(inputs: TreeInputs, values: TreeValues, mode: str = "same_reward") -> jax.Array:
    """Zero-advantage filter over a batch of trees: bool[P], whether a problem's training paths
    carry any learning signal. A problem without training paths (no expanded response) is dropped.

    "same_reward": keep iff the leaf rewards of its training paths (expanded responses' own
    rewards and their continuations) are not all equal. "zero_advantage": keep iff some node with
    tokens has a nonzero advantage. "off": keep every problem with training paths.
    """
    expanded = values.num_groups > 0  # [P, G]
    has_paths = expanded.any(-1)
    if mode == "off":
        return has_paths
    if mode == "same_reward":
        cont = inputs.cont_valid & expanded[..., None, None]
        inf = jnp.float32(jnp.inf)
        own = jnp.where(expanded, inputs.reward, inf)
        lo = jnp.minimum(own.min(-1), jnp.where(cont, inputs.cont_reward, inf).min((-3, -2, -1)))
        own = jnp.where(expanded, inputs.reward, -inf)
        hi = jnp.maximum(own.max(-1), jnp.where(cont, inputs.cont_reward, -inf).max((-3, -2, -1)))
        return has_paths & (hi > lo)
    i = jnp.arange(values.chain_start.shape[-1])
    chain = (i <= values.num_groups[..., None]) & expanded[..., None]
    chain = chain & (values.chain_end > values.chain_start) & (values.chain_advantage != 0)
    cont = inputs.cont_valid & (inputs.cont_len > 0) & (values.cont_advantage != 0)
    return has_paths & (chain.any((-2, -1)) | cont.any((-3, -2, -1)))


@partial(jax.jit, static_argnames=("target", "lam_num", "lam_den"))
def _next_size(prev, last, target, lam_num, lam_den):
    ratio = (prev * target) // jnp.maximum(last, 1)
    mixed = (lam_den - lam_num) * ratio + lam_num * prev  # lambda = num / den, exactly
    size = -(-mixed // lam_den)
    return jnp.maximum(jnp.where(last <= 0, prev, size), 1)


def next_prompt_batch_size(prev: int, last_sequences: int, config: ADSConfig = ADSConfig()) -> int:
    """B_next = ceil((1 - lambda) * floor(B_prev * B' / B'') + lambda * B_prev).

    prev: B_prev, prompts in the last batch. last_sequences: B'', training sequences in the last
    batch after filtering. Computed exactly in int32 (lambda as its decimal value): the released
    code uses float64 and its ceil rounds float noise up by one in about 1% of cases. B'' = 0
    gives no ratio to aim by, so the size stays. Never below 1.
    """
    lam = Fraction(repr(config.batch_lambda))
    bound = max(prev, 1) * config.target_sequences * lam.denominator
    if bound >= 2**31:
        raise ValueError(
            f"batch-size rule overflows int32: B_prev {prev} x B' x lambda denominator"
        )
    return int(
        _next_size(
            np.int32(prev), np.int32(last_sequences), config.target_sequences,
            lam.numerator, lam.denominator,
        )
    )  # fmt: skip
