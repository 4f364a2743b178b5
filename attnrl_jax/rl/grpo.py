"""GRPO without a tree: each initial response is one training path with the group-normalised
outcome advantage (r - mean(r)) / (std(r) + eps) of its problem (the `none` branching baseline).

Advantages and the zero-advantage filter are jitted over [P, G] (float32); the result per problem
is a ProblemTree of one root child per response (path count 1), so batching, packing and the loss
treat GRPO and tree methods alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from attnrl_jax.rl.tree_nodes import ORIGINAL, ProblemTree, Segment, TrainingPath


@jax.jit
def grpo_advantages(rewards: jax.Array, eps: float = 1e-6) -> jax.Array:
    """float[..., G] -> float32[..., G]: (r - mean) / (std + eps) per group, std unbiased as
    torch.std (verl's GRPO); a group of one gets 0."""
    r = jnp.asarray(rewards, jnp.float32)
    g = r.shape[-1]
    if g < 2:
        return jnp.zeros_like(r)
    centred = r - r.mean(-1, keepdims=True)
    std = jnp.sqrt((centred**2).sum(-1, keepdims=True) / (g - 1))
    return centred / (std + eps)


@partial(jax.jit, static_argnames="mode")
def keep_groups(
    rewards: jax.Array, advantages: jax.Array, lengths: jax.Array, mode: str = "same_reward"
) -> jax.Array:
    """Zero-advantage filter for GRPO groups [P, G] (ads.keep_problems' modes): bool[P].

    "same_reward": rewards not all equal; "zero_advantage": some non-empty response has a
    nonzero advantage; "off": keep all.
    """
    if mode == "same_reward":
        return rewards.max(-1) > rewards.min(-1)
    if mode == "zero_advantage":
        return ((advantages != 0) & (lengths > 0)).any(-1)
    return jnp.ones(rewards.shape[0], bool)


def grpo_tree(
    responses: Sequence[np.ndarray],
    rewards: np.ndarray,
    eps: float = 1e-6,
    advantages: np.ndarray | None = None,
):
    """One problem's G responses (int[R_i] each) and 0/1 rewards [G] as a flat ProblemTree.

    advantages: float[G] when already computed for the batch (grpo_advantages over [P, G]).
    """
    adv = np.asarray(grpo_advantages(rewards, eps) if advantages is None else advantages)
    segments = tuple(
        Segment(i, -1, 0, np.asarray(tokens, np.int32), ORIGINAL, ORIGINAL, float(r), 1, float(a))
        for i, (tokens, r, a) in enumerate(zip(responses, rewards, adv, strict=True))
    )
    paths = tuple(
        TrainingPath(i, ORIGINAL, ORIGINAL, (i,), float(r), segments) for i, r in enumerate(rewards)
    )
    return ProblemTree(float(np.mean(rewards)), segments, paths)
