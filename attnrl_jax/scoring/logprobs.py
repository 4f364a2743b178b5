"""Per-token log-probabilities and entropies from final hidden states, fused with the LM head.

Each row is cut into chunks of `chunk` token positions and the vocabulary into chunks of about
`vocab_chunk` columns; the projection, an online log-sum-exp and the entropy's running sums run
block by block, so the largest live logits block is [B, chunk, vocab_chunk] float32, never
[T, V] (for a 151,936-token vocabulary and 9k-token rows that is 5.5 GB per row). Rows stay a
batch axis (never flattened into batch x length), so rows split over devices stay where they
are. The backward pass is a custom VJP that recomputes each block's logits from the saved
log-sum-exp and mean logit instead of storing them:

    d logp / d l_v = [v = target] - p_v        d entropy / d l_v = -p_v (l_v - E_p[l])
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp

from attnrl_jax.models.lm import Params, lm_head_kernel

VOCAB_CHUNK = 8192
_LANE = 128  # vocabulary chunks above this are rounded up to a multiple of it (TPU lanes)


def vocab_chunking(vocab: int, vocab_chunk: int) -> tuple[int, int]:
    """(number of chunks, chunk width) covering `vocab` columns with chunks of at most about
    `vocab_chunk`, padding the last one by as little as possible."""
    n = -(-vocab // vocab_chunk)
    width = -(-vocab // n)
    if width > _LANE:
        width = -(-width // _LANE) * _LANE
    return -(-vocab // width), width


def _block_logits(h, kernel, j, width, vocab, inv_temp):
    """h [B, c, E] x kernel columns [j * width, (j + 1) * width) -> logits [B, c, width] float32
    (columns past the vocabulary at -inf) and their column ids [width]."""
    w = jax.lax.dynamic_slice_in_dim(kernel, j * width, width, axis=1)
    logits = jnp.einsum("bce,ev->bcv", h, w, preferred_element_type=jnp.float32) * inv_temp
    cols = j * width + jnp.arange(width)
    return jnp.where(cols < vocab, logits, -jnp.inf), cols


def _chunk_forward(h, kernel, targets, inv_temp, vocab, n_vocab, width):
    """One token chunk: h [B, c, E], targets [B, c] -> (max logit m, log sum exp(l - m),
    E_p[l] - m, target logit), each [B, c] float32, by an online pass over the vocabulary
    chunks. Sums run over l - m <= 0, not l, so the entropy log s - E_p[l - m] loses no bits to
    the logits' magnitude."""

    def body(carry, j):
        m, s, w, chosen = carry  # s = sum exp(l - m), w = sum exp(l - m) (l - m)
        logits, cols = _block_logits(h, kernel, j, width, vocab, inv_temp)
        m_new = jnp.maximum(m, jnp.max(logits, axis=-1))
        shifted = logits - m_new[..., None]
        e = jnp.exp(shifted)
        scale = jnp.exp(m - m_new)
        moved = jnp.where(s > 0, s * (m - m_new), 0.0)  # re-centre w on m_new (m = -inf first)
        w = scale * (w + moved) + jnp.sum(jnp.where(cols < vocab, e * shifted, 0.0), axis=-1)
        s = s * scale + jnp.sum(e, axis=-1)
        chosen = chosen + jnp.sum(jnp.where(cols == targets[..., None], logits, 0.0), axis=-1)
        return (m_new, s, w, chosen), None

    zeros = jnp.zeros(targets.shape, jnp.float32)
    init = (jnp.full(targets.shape, -jnp.inf), zeros, zeros, zeros)
    (m, s, w, chosen), _ = jax.lax.scan(body, init, jnp.arange(n_vocab))
    return m, jnp.log(s), w / s, chosen


def _token_chunks(x: jax.Array, chunk: int) -> jax.Array:
    """[B, T, ...] -> [T / chunk, B, chunk, ...]."""
    b, t = x.shape[:2]
    return jnp.moveaxis(x.reshape(b, t // chunk, chunk, *x.shape[2:]), 1, 0)


def _rows(x: jax.Array) -> jax.Array:
    """[T / chunk, B, chunk, ...] -> [B, T, ...]."""
    n, b, c = x.shape[:3]
    return jnp.moveaxis(x, 0, 1).reshape(b, n * c, *x.shape[3:])


@partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _fused(hidden, kernel, targets, inv_temp, vocab, chunk, width):
    """hidden [B, T, E], kernel [E, n * width] (zero-padded), targets [B, T] -> log p(target)
    and entropy [B, T] float32. T is a multiple of chunk."""
    return _fused_fwd(hidden, kernel, targets, inv_temp, vocab, chunk, width)[0]


def _fused_fwd(hidden, kernel, targets, inv_temp, vocab, chunk, width):
    n_vocab = kernel.shape[1] // width
    run = partial(_chunk_forward, vocab=vocab, n_vocab=n_vocab, width=width)
    stats = jax.lax.map(
        lambda x: run(x[0], kernel, x[1], inv_temp),
        (_token_chunks(hidden, chunk), _token_chunks(targets, chunk)),
    )
    m, log_s, mean, chosen = map(_rows, stats)
    out = ((chosen - m) - log_s, log_s - mean)
    return out, (hidden, kernel, targets, inv_temp, m, log_s, mean)


def _fused_bwd(vocab, chunk, width, residuals, cotangents):
    hidden, kernel, targets, inv_temp, m, log_s, mean = residuals
    g_logp, g_ent = cotangents
    n_vocab = kernel.shape[1] // width
    dtype = hidden.dtype

    def token_chunk(d_kernel, xs):
        h, tgt, m_c, log_s_c, mean_c, gl, ge = xs

        def vocab_block(carry, j):
            d_h, d_kernel = carry
            logits, cols = _block_logits(h, kernel, j, width, vocab, inv_temp)
            shifted = logits - m_c[..., None]
            p = jnp.exp(shifted - log_s_c[..., None])  # 0 past the vocabulary
            centred = jnp.where(cols < vocab, shifted - mean_c[..., None], 0.0)
            onehot = (cols == tgt[..., None]).astype(jnp.float32)
            g = (gl[..., None] * (onehot - p) - ge[..., None] * p * centred) * inv_temp
            g = g.astype(dtype)
            w = jax.lax.dynamic_slice_in_dim(kernel, j * width, width, axis=1)
            d_h = d_h + jnp.einsum("bcv,ev->bce", g, w, preferred_element_type=jnp.float32)
            d_w = jnp.einsum("bce,bcv->ev", h, g, preferred_element_type=jnp.float32)
            old = jax.lax.dynamic_slice_in_dim(d_kernel, j * width, width, axis=1)
            d_kernel = jax.lax.dynamic_update_slice_in_dim(d_kernel, old + d_w, j * width, 1)
            return (d_h, d_kernel), None

        d_h = jnp.zeros(h.shape, jnp.float32)
        (d_h, d_kernel), _ = jax.lax.scan(vocab_block, (d_h, d_kernel), jnp.arange(n_vocab))
        return d_kernel, d_h.astype(dtype)

    xs = (hidden, targets, m, log_s, mean, g_logp, g_ent)
    xs = tuple(_token_chunks(x, chunk) for x in xs)
    d_kernel, d_hidden = jax.lax.scan(token_chunk, jnp.zeros(kernel.shape, jnp.float32), xs)
    return _rows(d_hidden), d_kernel.astype(kernel.dtype), None, jnp.zeros_like(inv_temp)


_fused.defvjp(_fused_fwd, _fused_bwd)


def token_logprobs_entropies(
    params: Params,
    hidden: jax.Array,
    tokens: jax.Array,
    valid: jax.Array,
    chunk: int,
    temperature: jax.Array | float = 1.0,
    vocab_chunk: int = VOCAB_CHUNK,
) -> tuple[jax.Array, jax.Array]:
    """Log-probs and entropies [B, T] float32, aligned with the tokens they predict.

    hidden: [B, T, E] final-normed hidden states; tokens: [B, T] int32; valid: [B, T] bool.
    logprobs[b, t] = log p(tokens[b, t] | tokens[b, :t]) and entropies[b, t] is the entropy of
    that predictive distribution, both from hidden[b, t - 1]; position 0 and invalid positions
    (padding, or whose previous position is padding) are 0. chunk: token positions per row per
    block (rows whose length is not a multiple are padded inside); vocab_chunk: about how many
    vocabulary columns per block. temperature: a traced float32 scalar > 0; the distribution is
    softmax(logits / temperature), the one the sampler draws from and reports log-probs under.
    Differentiable in params and hidden (the backward recomputes each block's logits).
    """
    b, t, _ = hidden.shape
    chunk = min(chunk, t)
    padded = math.ceil(t / chunk) * chunk
    previous = jnp.pad(hidden[:, :-1], ((0, 0), (1, padded - t), (0, 0)))
    targets = jnp.pad(tokens, ((0, 0), (0, padded - t)))
    kernel = lm_head_kernel(params)
    vocab = kernel.shape[1]
    n_vocab, width = vocab_chunking(vocab, vocab_chunk)
    kernel = jnp.pad(kernel.astype(hidden.dtype), ((0, 0), (0, n_vocab * width - vocab)))
    inv_temp = 1.0 / jnp.asarray(temperature, jnp.float32)
    logprobs, entropies = _fused(previous, kernel, targets, inv_temp, vocab, chunk, width)
    keep = valid & jnp.concatenate([jnp.zeros_like(valid[:, :1]), valid[:, :-1]], axis=1)
    return (
        jnp.where(keep, logprobs[:, :t], 0.0),
        jnp.where(keep, entropies[:, :t], 0.0),
    )
