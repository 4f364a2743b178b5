"""Rotary position embeddings: the frequencies of each rope_scaling kind, cos/sin, rotation.

Frequencies are computed in float32 in the order transformers uses, so angles match its
PyTorch reference to float32 rounding.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from attnrl_jax.models.config import ModelConfig


def inverse_frequencies(cfg: ModelConfig) -> jax.Array:
    """[D/2] float32: theta^(-2i/D), rescaled as cfg.rope_scaling says."""
    d, scaling = cfg.head_dim, cfg.rope_scaling
    inv_freq = 1.0 / (cfg.rope_theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
    if scaling.kind == "linear":
        return inv_freq / scaling.factor
    if scaling.kind == "llama3":
        return _llama3(inv_freq, scaling)
    return inv_freq


def _llama3(inv_freq: jax.Array, s) -> jax.Array:
    """Llama-3.1: long wavelengths divided by `factor`, short ones kept, a linear blend between."""
    old = s.original_max_position_embeddings
    low_freq_wavelen, high_freq_wavelen = old / s.low_freq_factor, old / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = jnp.where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq)
    smooth = (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    blended = (1 - smooth) * scaled / s.factor + smooth * scaled
    medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return jnp.where(medium, blended, scaled)


def rope_cos_sin(positions: jax.Array, cfg: ModelConfig) -> tuple[jax.Array, jax.Array]:
    """cos, sin [B, T, D] in float32 for integer positions [B, T] (Hugging Face's half layout)."""
    angles = positions.astype(jnp.float32)[..., None] * inverse_frequencies(cfg)
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates x [B, T, H, D] by cos/sin [B, T, D]; computed in float32, returned in x.dtype."""
    xf = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
    out = xf * cos[:, :, None, :] + rotated * sin[:, :, None, :]
    return out.astype(x.dtype)
