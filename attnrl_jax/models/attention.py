"""Rotary embeddings and the default (masked, causal, grouped-query) attention kernel.

The decoder never calls a kernel directly: it calls an `Attend` function, so the sampler can
plug in a KV cache and the scoring pass can accumulate attention statistics, each threading its
own state through the layer scan (see `qwen2.forward_hidden`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

# attend(layer_index, q [B,T,Hq,D], k [B,T,Hkv,D], v [B,T,Hkv,D], state) -> (out [B,T,Hq,D], state)
Attend = Callable[[jax.Array, jax.Array, jax.Array, jax.Array, Any], tuple[jax.Array, Any]]

MASK_VALUE = -1e30  # finite, so a fully masked (padding) row gives a uniform row, never NaN


def rope_cos_sin(
    positions: jax.Array, head_dim: int, theta: float, linear_factor: float = 1.0
) -> tuple[jax.Array, jax.Array]:
    """cos, sin [B, T, D] in float32 for integer positions [B, T] (Hugging Face's half layout)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = positions.astype(jnp.float32)[..., None] * (inv_freq / linear_factor)
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates x [B, T, H, D] by cos/sin [B, T, D]; computed in float32, returned in x.dtype."""
    xf = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
    out = xf * cos[:, :, None, :] + rotated * sin[:, :, None, :]
    return out.astype(x.dtype)


def attention_scores(q: jax.Array, k: jax.Array) -> jax.Array:
    """Scaled scores [B, Hkv, G, Tq, Tk] in float32 for q [B,Tq,Hq,D], k [B,Tk,Hkv,D]."""
    b, tq, hq, d = q.shape
    hkv = k.shape[2]
    qg = q.reshape(b, tq, hkv, hq // hkv, d)
    scores = jnp.einsum("bqhgd,bkhd->bhgqk", qg, k, preferred_element_type=jnp.float32)
    return scores * (d**-0.5)


def attention_output(probs: jax.Array, v: jax.Array) -> jax.Array:
    """Weighted values [B, Tq, Hq, D] from probs [B, Hkv, G, Tq, Tk] and v [B, Tk, Hkv, D]."""
    out = jnp.einsum("bhgqk,bkhd->bqhgd", probs.astype(v.dtype), v)
    b, tq, hkv, g, d = out.shape
    return out.reshape(b, tq, hkv * g, d)


def causal_segment_mask(q_segments: jax.Array, k_segments: jax.Array, q_index, k_index):
    """[B, 1, 1, Tq, Tk] bool: same non-zero segment and key not after query (by index).

    Index order rather than position ids decides causality, so left padding, right padding
    and packed sequences (several segments in one row) all mask correctly.
    """
    same = (q_segments[:, :, None] == k_segments[:, None, :]) & (k_segments[:, None, :] != 0)
    causal = k_index[None, None, :] <= q_index[None, :, None]
    return (same & causal)[:, None, None]


def causal_attend(segment_ids: jax.Array, query_chunk: int | None = None) -> Attend:
    """The plain full-sequence attention: causal within segments (segment 0 = padding).

    segment_ids: [B, T] int. With `query_chunk`, queries are processed in chunks so the score
    tensor is [B, H, chunk, T] rather than [B, H, T, T] (same result: each row's softmax is exact).
    """

    def attend(layer, q, k, v, state):
        del layer
        t = q.shape[1]
        index = jnp.arange(t)
        chunk = t if query_chunk is None or query_chunk >= t else query_chunk
        if t % chunk:
            raise ValueError(f"sequence length {t} is not a multiple of query_chunk {chunk}")

        def one_chunk(start):
            qc = jax.lax.dynamic_slice_in_dim(q, start, chunk, axis=1)
            seg_q = jax.lax.dynamic_slice_in_dim(segment_ids, start, chunk, axis=1)
            mask = causal_segment_mask(seg_q, segment_ids, start + jnp.arange(chunk), index)
            scores = jnp.where(mask, attention_scores(qc, k), MASK_VALUE)
            return attention_output(jax.nn.softmax(scores, axis=-1), v)

        if chunk == t:
            return one_chunk(0), state
        outs = jax.lax.map(one_chunk, jnp.arange(0, t, chunk))  # [n, B, chunk, Hq, D]
        out = jnp.moveaxis(outs, 0, 1).reshape(q.shape[0], t, *q.shape[2:])
        return out, state

    return attend
