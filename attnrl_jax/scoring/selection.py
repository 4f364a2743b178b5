"""Where to branch initial responses: ATB (ALGORITHM.md section 3) and the baseline selectors,
as one jitted function over a padded batch of responses.

Every selector maps a response to N branch points, given as RESPONSE-relative token offsets in the
order they were chosen (consumers sort them), with a validity mask where the rules give fewer: the
continuation's prefix is response[:offset], so the token at `offset` (for step selectors: the whole
chosen step) is re-generated. A selector is a per-response function of fixed-shape arrays; `select`
vmaps it over the batch, so there is no Python loop per response and shapes are static (pad rows
and steps to powers of two with `selection_inputs` in branch_batch.py, so nothing recompiles
across steps).

The rules follow the authors' released code where it is more specific than the paper; where it fails
(a one-step response makes its duplicate fallback loop forever) we return fewer points instead.

Numerics: FCI is float32 (>= 0, as the scoring pass and the sampler give it). The top-rho threshold
is numpy's float64 linear quantile; the decision only needs to know on which side of the two
sorted neighbours it falls, which is exact in float32 given the float64 interpolation weight of
each step count (a host table). One case is decided in float32: a weight that is float64 noise
(below 2^-28, from (1 - rho) * (S - 1) rounding) puts the threshold a rounding step above the lower
neighbour or exactly on it; float32 decides that to 2^-23 relative of the float64 rounding boundary.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from attnrl_jax.scoring.branch_batch import SelectionInputs, selection_inputs
from attnrl_jax.scoring.steps import StepLayout

__all__ = [
    "SELECTORS",
    "RuleParams",
    "SelectionConfig",
    "SelectionInputs",
    "register_selector",
    "rule_params",
    "select",
    "select_branch_points",
    "selection_inputs",
]


@dataclass(frozen=True)
class SelectionConfig:
    """Branch-selection settings (static under jit: frozen and hashable).

    method: a SELECTORS name: "atb" (attention, default), "entropy", "random", "earliest", "none".
    rho: ATB keeps steps whose FCI is in the top rho quantile. num_points: N, branch points wanted.
    min_token_distance: ATB's minimum absolute start of a chosen step and minimum gap between chosen
    steps, in tokens; 0 disables both.
    """

    method: str = "atb"
    rho: float = 0.2
    num_points: int = 2
    min_token_distance: int = 512

    def __post_init__(self):
        if self.method not in SELECTORS:
            raise ValueError(
                f"unknown selection method {self.method!r}; known: {sorted(SELECTORS)}"
            )
        if not 0.0 <= self.rho <= 1.0:
            raise ValueError(f"rho must be in [0, 1], got {self.rho}")
        if self.num_points < 0 or self.min_token_distance < 0:
            raise ValueError("num_points and min_token_distance must be >= 0")


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class RuleParams:
    """The array-valued part of a SelectionConfig, so rho and the distance do not recompile.

    lo, hi, kind: int32[S_pad + 1] and weight: float32[S_pad + 1], numpy's linear-quantile
    neighbours of 1 - rho per step count 0..S_pad (see _quantile_table); distance: int32[],
    min_token_distance.
    """

    lo: jax.Array
    hi: jax.Array
    kind: jax.Array
    weight: jax.Array
    distance: jax.Array


def rule_params(config: SelectionConfig, s_pad: int) -> RuleParams:
    """Host side: the RuleParams of `config` for S_pad step columns."""
    lo, hi, kind, weight = _quantile_table(s_pad + 1, config.rho)
    return RuleParams(lo, hi, kind, weight, np.int32(config.min_token_distance))


# (one response's SelectionInputs row, its key, RuleParams, N) -> (offsets int32[N], valid bool[N])
Selector = Callable[[SelectionInputs, jax.Array, RuleParams, int], tuple[jax.Array, jax.Array]]
SELECTORS: dict[str, Selector] = {}


def register_selector(name: str) -> Callable[[Selector], Selector]:
    """Register a per-response selector under `name` (the value of SelectionConfig.method)."""

    def add(fn: Selector) -> Selector:
        SELECTORS[name] = fn
        return fn

    return add


@partial(jax.jit, static_argnames=("method", "num_points"))
def _select(inputs, key, params, method, num_points):
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(inputs.row_id)
    run = SELECTORS[method]
    return jax.vmap(lambda row, k: run(row, k, params, num_points))(inputs, keys)


def select(
    inputs: SelectionInputs, key: jax.Array, config: SelectionConfig
) -> tuple[jax.Array, jax.Array]:
    """Branch points of every row: (offsets int32[B, N], valid bool[B, N]), choice order.

    One compiled program per (method, N, input shapes); rho and the distance are arguments.
    key: a jax PRNG key (used by "random"); row i draws from fold_in(key, row_id[i]).
    """
    params = rule_params(config, inputs.fci.shape[1])
    return _select(inputs, key, params, config.method, config.num_points)


def select_branch_points(
    layout: StepLayout,
    config: SelectionConfig,
    *,
    fci: np.ndarray | None = None,
    entropy: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
) -> list[int]:
    """Branch points of ONE response with `config.method` (tools and tests; training batches
    call `select` directly).

    fci: float[>= S+1], per step with step 0 first (extra entries are padding). Needed by "atb".
    entropy: float[>= R], per response token (extra entries are padding). Needed by "entropy".
    rng: needed by "random"; the jax key is drawn from it.
    """
    if config.method == "atb" and fci is None:
        raise ValueError("method 'atb' needs per-step FCI scores")
    if config.method == "entropy" and entropy is None:
        raise ValueError("method 'entropy' needs per-token entropies")
    if config.method == "random" and rng is None:
        raise ValueError("method 'random' needs a numpy Generator (rng)")
    inputs = selection_inputs(
        [layout], None if fci is None else [fci], None if entropy is None else [entropy]
    )
    key = jax.random.key(0 if rng is None else int(rng.integers(2**31)))
    offsets, valid = jax.device_get(select(inputs, key, config))
    return [int(o) for o, v in zip(offsets[0], valid[0], strict=True) if v]


# ----- rules -----------------------------------------------------------------------------------

_NOISE = 2.0**-28  # interpolation weights below this are float64 rounding noise (see module doc)


def _quantile_table(s1: int, rho: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per sample size n in [0, s1): numpy's linear-quantile neighbours and weight at 1 - rho.

    Returns (lo int32, hi int32, kind int32, weight float32): kind 0 = threshold is sorted[lo]
    exactly; 1 = strictly above sorted[lo] whenever sorted[hi] > sorted[lo]; 2 = a noise weight
    (weight is then scaled by 2^60 for the float32 comparison).
    """
    q = 1.0 - rho
    n = np.arange(s1, dtype=np.float64)
    virtual = (n - 1) * q  # numpy's "linear" virtual index
    lo = np.floor(virtual)
    gamma = virtual - lo
    last = np.maximum(n - 1, 0)
    hi = np.where(virtual >= last, last, np.maximum(lo + 1, 0))  # numpy clamps to the ends
    lo = np.where(virtual >= last, last, np.maximum(lo, 0))
    kind = np.where(gamma == 0, 0, np.where(gamma >= _NOISE, 1, 2))
    weight = np.where(kind == 2, gamma * 2.0**60, gamma)
    return (
        lo.astype(np.int32),
        hi.astype(np.int32),
        kind.astype(np.int32),
        weight.astype(np.float32),
    )


def _above_lower(a: jax.Array, d: jax.Array, kind: jax.Array, weight: jax.Array) -> jax.Array:
    """Whether float64 lerp(a, a + d, gamma) > a (a >= 0, d >= 0 float32 values).

    For a noise gamma the float64 sum a + d * gamma leaves a iff d * gamma exceeds half an ulp of
    a, 2^(E - 53) (a tie rounds to a: a float32's float64 mantissa is even).
    """
    _, e = jnp.frexp(a)
    half_ulp_scaled = jnp.ldexp(jnp.float32(1.0), e - 1 - 53 + 60)
    noise_above = jnp.where(a == 0, d > 0, d * weight > half_ulp_scaled)
    return jnp.where(kind == 0, False, jnp.where(kind == 1, d > 0, noise_above))


def _order_key(y: jax.Array) -> jax.Array:
    """int32 keys in the order of the float32 values (sign-magnitude to two's complement)."""
    bits = jax.lax.bitcast_convert_type(y + 0.0, jnp.int32)  # + 0.0: -0.0 becomes +0.0
    return jnp.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


def _kth_smallest(y: jax.Array, k: jax.Array) -> jax.Array:
    """The k-th smallest (0-based) of y [S_pad] by bisection over the order keys: 32 counting passes
    instead of a sort (a sort of every row is the most expensive step on CPU)."""
    key = _order_key(y)

    def halve(_, bounds):
        lo, hi = bounds
        mid = (lo & hi) + ((lo ^ hi) >> 1)  # floor((lo + hi) / 2) without int32 overflow
        enough = (key <= mid).sum() >= k + 1
        return jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)

    lo, _ = jax.lax.fori_loop(0, 32, halve, (key.min(), key.max()))
    return jax.lax.bitcast_convert_type(jnp.where(lo < 0, lo ^ 0x7FFFFFFF, lo), jnp.float32)


def _candidates(row: SelectionInputs, params: RuleParams) -> jax.Array:
    """bool[S_pad]: steps 2..S whose FCI is >= the top-rho threshold (zero fallback applied)."""
    k = jnp.arange(row.fci.shape[0]) + 1  # the step of each column
    s = row.num_steps
    step = (k >= 1) & (k <= s)
    think = (row.think_end_step >= 0) & (k >= row.think_end_step)
    y = jnp.where(think, 0.0, row.fci.astype(jnp.float32))
    padded = jnp.where(step, y, jnp.inf)  # padding ranks last
    lo, hi, kind, weight = (t[s] for t in (params.lo, params.hi, params.kind, params.weight))
    a = _kth_smallest(padded, lo)
    # the hi-th smallest: a again if it repeats far enough, else the next larger value
    repeats = (padded <= a).sum() >= hi + 1
    b = jnp.where(repeats, a, jnp.where(padded > a, padded, jnp.inf).min())
    above = _above_lower(a, b - a, kind, weight)
    positive = step & (y > 0)
    zero_fallback = ~above & (a == 0) & positive.any()
    keep = jnp.where(zero_fallback, y > 0, jnp.where(above, y >= b, y >= a))
    return step & (k >= 2) & keep


def _fill_from_early_steps(
    row: SelectionInputs, chosen: jax.Array, count: jax.Array, n: int
) -> tuple[jax.Array, jax.Array]:
    """Chosen steps (int[N], the first `count` real), then starts of steps 2, 3, ... not chosen,
    then steps 2, 3, ... again with duplicates. Returns (offsets int32[N], valid bool[N]).

    O(N^2) per row: the q-th early step not chosen is the fixed point of x = 2 + q + #{chosen
    <= x} (chosen steps are distinct and within 2..S), reached in at most N + 1 rounds.
    """
    s = row.num_steps
    slot = jnp.arange(n)
    real = jnp.where(slot < count, chosen, 2**30)  # padding: never <= x
    q = jnp.maximum(slot - count, 0)
    x = 2 + q
    for _ in range(n + 1):  # static
        x = 2 + q + (real[None, :] <= x[:, None]).sum(-1)
    early = jnp.maximum(s - 1, 1)
    cycled = 2 + jnp.mod(slot - (s - 1), early)
    steps = jnp.where(slot < count, chosen, jnp.where(slot < s - 1, x, cycled))
    valid = (slot < count) | (s >= 2)
    offsets = row.starts[steps - 1] - row.prompt_len
    return jnp.where(valid, offsets, 0).astype(jnp.int32), valid


@register_selector("atb")
def select_atb(
    row: SelectionInputs, key: jax.Array, params: RuleParams, n: int
) -> tuple[jax.Array, jax.Array]:
    """Attention-guided branching: high-FCI steps in step order, spaced apart, then early steps.

    Accepted steps are in step order, so a candidate's smallest gap to any accepted step is its
    start minus the last accepted step's end: each of the N picks is one first-match search.
    """
    dist = params.distance
    cand = _candidates(row, params)
    k = jnp.arange(cand.shape[0]) + 1
    chosen = jnp.zeros(n, jnp.int32)
    last_step, last_end, count = jnp.int32(0), jnp.int32(-(2**30)), jnp.int32(0)
    for j in range(n):  # static N
        ok = cand & (k > last_step) & (row.starts >= dist) & (row.starts - last_end >= dist)
        col = jnp.argmax(ok).astype(jnp.int32)
        found = ok[col]
        chosen = chosen.at[j].set(jnp.where(found, col + 1, 0))
        last_step = jnp.where(found, col + 1, last_step)
        last_end = jnp.where(found, row.ends[col], last_end)
        count = count + found
    return _fill_from_early_steps(row, chosen, count, n)


@register_selector("entropy")
def select_entropy(
    row: SelectionInputs, key: jax.Array, params: RuleParams, n: int
) -> tuple[jax.Array, jax.Array]:
    """TreeRL: the N highest-entropy token positions; the prefix ends before that token.

    As in the released code, the last response token is never chosen and position 0 may be (an
    empty prefix: a fresh sample). Ties go to the earlier position (lax.top_k's order); order is
    highest entropy first. Responses shorter than N + 1 tokens give fewer points.
    """
    r = row.entropy.shape[0]
    usable = jnp.arange(r) < row.response_len - 1
    e = jnp.where(usable, row.entropy.astype(jnp.float32), -jnp.inf)
    if n > r:
        e = jnp.pad(e, (0, n - r), constant_values=-jnp.inf)
    _, idx = jax.lax.top_k(e, n)
    valid = jnp.arange(n) < jnp.maximum(row.response_len - 1, 0)
    return jnp.where(valid, idx, 0).astype(jnp.int32), valid


@register_selector("random")
def select_random(
    row: SelectionInputs, key: jax.Array, params: RuleParams, n: int
) -> tuple[jax.Array, jax.Array]:
    """Uniformly random distinct steps among 2..S (step 1 would be an empty prefix), in random
    order, then the early-step fallback when there are fewer than N such steps."""
    s_pad = row.starts.shape[0]
    k = jnp.arange(s_pad) + 1
    early = (k >= 2) & (k <= row.num_steps)
    u = jnp.where(early, jax.random.uniform(key, (s_pad,)), 2.0)
    if n > s_pad:
        u = jnp.pad(u, (0, n - s_pad), constant_values=3.0)
    order = jax.lax.top_k(-u, n)[1].astype(jnp.int32) + 1  # n smallest draws' steps, in order
    count = jnp.minimum(n, jnp.maximum(row.num_steps - 1, 0))
    return _fill_from_early_steps(row, order, count, n)


@register_selector("earliest")
def select_earliest(
    row: SelectionInputs, key: jax.Array, params: RuleParams, n: int
) -> tuple[jax.Array, jax.Array]:
    """Steps 2, 3, ... (ATB's fallback alone, duplicates when fewer than N steps)."""
    return _fill_from_early_steps(row, jnp.zeros(n, jnp.int32), jnp.int32(0), n)


@register_selector("none")
def select_none(
    row: SelectionInputs, key: jax.Array, params: RuleParams, n: int
) -> tuple[jax.Array, jax.Array]:
    """Plain GRPO: no tree, no branch points."""
    return jnp.zeros(n, jnp.int32), jnp.zeros(n, bool)
