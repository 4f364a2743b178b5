"""GRPO without a tree: each initial response is one training path with the group-normalised
outcome advantage (r - mean(r)) / (std(r) + eps) of its problem (the `none` branching baseline).

The result is a ProblemTree of one root child per response (path count 1), so batching, packing
and the loss treat GRPO and tree methods alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from attnrl_jax.rl.tree import ORIGINAL, ProblemTree, Segment, TrainingPath


def grpo_advantages(rewards: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """float[G] -> float[G]: (r - mean) / (std + eps), std unbiased as torch.std (verl's GRPO);
    a group of one gets 0."""
    r = np.asarray(rewards, dtype=np.float64)
    if r.size < 2:
        return np.zeros_like(r)
    return (r - r.mean()) / (r.std(ddof=1) + eps)


def grpo_tree(responses: Sequence[np.ndarray], rewards: np.ndarray, eps: float = 1e-6):
    """One problem's G responses (int[R_i] each) and 0/1 rewards [G] as a flat ProblemTree."""
    adv = grpo_advantages(rewards, eps)
    segments, paths = [], []
    for i, (tokens, reward) in enumerate(zip(responses, rewards, strict=True)):
        tokens = np.asarray(tokens, dtype=np.int32)
        segments.append(
            Segment(i, -1, 0, tokens, ORIGINAL, ORIGINAL, float(reward), 1, float(adv[i]))
        )
        paths.append(
            TrainingPath(
                response=i,
                branch=ORIGINAL,
                continuation=ORIGINAL,
                segments=(i,),
                tokens=tokens,
                advantages=np.full(len(tokens), adv[i], np.float32),
                from_response=np.ones(len(tokens), bool),
                reward=float(reward),
            )
        )
    return ProblemTree(float(np.mean(rewards)), tuple(segments), tuple(paths))
