"""REFERENCE (tests only): the former host GRPO advantage in numpy float64, one group at a time.
The package runs attnrl_jax.rl.grpo.grpo_advantages (jitted over [P, G])."""

from __future__ import annotations

import numpy as np


def grpo_advantages(rewards: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """float[G] -> float[G]: (r - mean) / (std + eps), std unbiased as torch.std (verl's GRPO);
    a group of one gets 0."""
    r = np.asarray(rewards, dtype=np.float64)
    if r.size < 2:
        return np.zeros_like(r)
    return (r - r.mean()) / (r.std(ddof=1) + eps)
