"""REFERENCE (tests only): the former host implementation of branch selection, one response at a
time in numpy float64. The package runs attnrl_jax.scoring.selection (jitted);
tests/test_selection.py checks both agree (on the package's SelectionConfig).

Where to branch an initial response: ATB (ALGORITHM.md section 3) and the baseline selectors.

Every selector maps one response to branch points, given as RESPONSE-relative token offsets in
the order they were chosen (consumers sort them): the continuation's prefix is response[:offset],
so the token at `offset` (for step selectors: the whole chosen step) is re-generated. Selection is
host-side numpy over one response; it runs once per initial response and costs microseconds.

The rules follow the authors' released code where it is more specific than the paper; where it fails
(a one-step response makes its duplicate fallback loop forever) we return fewer points instead.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from attnrl_jax.scoring.selection import SelectionConfig
from attnrl_jax.scoring.steps import StepLayout

# (layout, fci float[>= S+1] or None, entropy float[>= R] or None, config, rng) -> offsets
Selector = Callable[
    [StepLayout, np.ndarray | None, np.ndarray | None, SelectionConfig, np.random.Generator | None],
    list[int],
]
SELECTORS: dict[str, Selector] = {}


def register_selector(name: str) -> Callable[[Selector], Selector]:
    """Register a selector under `name` (the value of SelectionConfig.method)."""

    def add(fn: Selector) -> Selector:
        SELECTORS[name] = fn
        return fn

    return add


def select_branch_points(
    layout: StepLayout,
    config: SelectionConfig,
    *,
    fci: np.ndarray | None = None,
    entropy: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
) -> list[int]:
    """Branch points of one response with `config.method`.

    fci: float[>= S+1], per step with step 0 first (extra entries are padding). Needed by "atb".
    entropy: float[>= R], per response token (extra entries are padding). Needed by "entropy".
    rng: needed by "random" (pass the trainer's checkpointed Generator for reproducible runs).
    """
    return SELECTORS[config.method](layout, fci, entropy, config, rng)


def atb_threshold(y: np.ndarray, rho: float) -> float:
    """The (1 - rho) quantile of y (linear interpolation, as torch.quantile), zero fallback applied.

    A zero threshold while some y > 0 becomes the smallest positive y, so zero-score (masked) steps
    are not candidates whenever a positive one exists.
    """
    threshold = float(np.quantile(y, 1.0 - rho, method="linear"))
    if threshold == 0.0 and (y > 0).any():
        threshold = float(y[y > 0].min())
    return threshold


def _far_enough(layout: StepLayout, step: int, accepted: list[int], distance: int) -> bool:
    """Released-code distance rule: absolute start >= distance (prompt counts), and >= distance
    between this step and every accepted one (gap from one's end to the other's start)."""
    start, end = layout.bounds[step]
    if start < distance:
        return False
    gaps = (max(start - layout.bounds[k][1], layout.bounds[k][0] - end) for k in accepted)
    return all(gap >= distance for gap in gaps)


def _fill_from_early_steps(layout: StepLayout, offsets: list[int], n: int) -> list[int]:
    """Fallback: append starts of steps 2, 3, ... (no score or distance check) skipping offsets
    already chosen; if still short, cycle through steps 2, 3, ... again allowing duplicates."""
    early = [layout.bounds[k][0] - layout.prompt_len for k in range(2, layout.num_steps + 1)]
    if not early:
        return offsets
    for off in early:
        if len(offsets) >= n:
            return offsets
        if off not in offsets:
            offsets.append(off)
    while len(offsets) < n:
        offsets.extend(early[: n - len(offsets)])
    return offsets


@register_selector("atb")
def select_atb(
    layout: StepLayout,
    fci: np.ndarray | None,
    entropy: np.ndarray | None,
    config: SelectionConfig,
    rng: np.random.Generator | None,
) -> list[int]:
    """Attention-guided branching: high-FCI steps in step order, spaced apart, then early steps."""
    if fci is None:
        raise ValueError("method 'atb' needs per-step FCI scores")
    s, n = layout.num_steps, config.num_points
    if s == 0 or n == 0:
        return []
    y = np.asarray(fci, dtype=np.float64)[1 : s + 1]
    if y.shape != (s,):
        raise ValueError(f"fci has {len(fci)} entries, need >= {s + 1} (step 0 included)")
    threshold = atb_threshold(y, config.rho)
    candidates = [k for k in range(2, s + 1) if y[k - 1] >= threshold]  # step 1 never branches
    accepted: list[int] = []
    for k in candidates:
        if len(accepted) == n:
            break
        if _far_enough(layout, k, accepted, config.min_token_distance):
            accepted.append(k)
    offsets = [layout.bounds[k][0] - layout.prompt_len for k in accepted]
    return _fill_from_early_steps(layout, offsets, n)


@register_selector("entropy")
def select_entropy(
    layout: StepLayout,
    fci: np.ndarray | None,
    entropy: np.ndarray | None,
    config: SelectionConfig,
    rng: np.random.Generator | None,
) -> list[int]:
    """TreeRL: the N highest-entropy token positions; the prefix ends before that token.

    As in the released code, the last response token is never chosen and position 0 may be (an
    empty prefix: a fresh sample). Ties go to the earlier position; order is highest entropy first.
    Responses shorter than N + 1 tokens give fewer points.
    """
    if entropy is None:
        raise ValueError("method 'entropy' needs per-token entropies")
    r = layout.response_len
    if len(entropy) < r:
        raise ValueError(f"entropy has {len(entropy)} entries, need >= {r} response tokens")
    e = np.asarray(entropy, dtype=np.float64)[: max(r - 1, 0)]
    order = np.argsort(-e, kind="stable")
    return [int(t) for t in order[: config.num_points]]


@register_selector("random")
def select_random(
    layout: StepLayout,
    fci: np.ndarray | None,
    entropy: np.ndarray | None,
    config: SelectionConfig,
    rng: np.random.Generator | None,
) -> list[int]:
    """Uniformly random distinct steps among 2..S (step 1 would be an empty prefix), then the
    early-step fallback when there are fewer than N such steps."""
    if rng is None:
        raise ValueError("method 'random' needs a numpy Generator (rng)")
    steps = np.arange(2, layout.num_steps + 1)
    chosen = rng.choice(steps, size=min(config.num_points, steps.size), replace=False)
    offsets = [layout.bounds[int(k)][0] - layout.prompt_len for k in chosen]
    return _fill_from_early_steps(layout, offsets, config.num_points)


@register_selector("earliest")
def select_earliest(
    layout: StepLayout,
    fci: np.ndarray | None,
    entropy: np.ndarray | None,
    config: SelectionConfig,
    rng: np.random.Generator | None,
) -> list[int]:
    """Steps 2, 3, ... (ATB's fallback alone, duplicates when fewer than N steps)."""
    return _fill_from_early_steps(layout, [], config.num_points)


@register_selector("none")
def select_none(
    layout: StepLayout,
    fci: np.ndarray | None,
    entropy: np.ndarray | None,
    config: SelectionConfig,
    rng: np.random.Generator | None,
) -> list[int]:
    """Plain GRPO: no tree, no branch points."""
    return []
