"""Per-token log-probabilities and entropies from final hidden states, in chunks of tokens.

The vocabulary projection runs over `chunk` token positions at a time (a `lax.map`), so the
largest live logits block is [chunk, V] float32 rather than [B, T, V]: for a 151,936-token
vocabulary and 8k-token sequences that is the difference between about 5 GB per sequence and
about 150 MB per 256-token chunk.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from attnrl_jax.models.lm import Params, lm_head_kernel


def _chunk_stats(kernel: jax.Array, hidden: jax.Array, targets: jax.Array, inv_temp: jax.Array):
    """hidden [N, E], targets [N] -> log p(target) [N], entropy [N], both float32, under
    softmax(logits * inv_temp)."""
    logits = jnp.matmul(hidden, kernel, preferred_element_type=jnp.float32) * inv_temp  # [N, V]
    lse = jax.nn.logsumexp(logits, axis=-1)
    chosen = jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]
    probs = jnp.exp(logits - lse[:, None])
    entropy = lse - jnp.sum(probs * logits, axis=-1)
    return chosen - lse, entropy


def token_logprobs_entropies(
    params: Params,
    hidden: jax.Array,
    tokens: jax.Array,
    valid: jax.Array,
    chunk: int,
    temperature: jax.Array | float = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """Log-probs and entropies [B, T] float32, aligned with the tokens they predict.

    hidden: [B, T, E] final-normed hidden states; tokens: [B, T] int32; valid: [B, T] bool.
    logprobs[b, t] = log p(tokens[b, t] | tokens[b, :t]) and entropies[b, t] is the entropy of
    that predictive distribution, both from hidden[b, t - 1]; position 0 and invalid positions
    (padding, or whose previous position is padding) are 0. B * T must be a multiple of `chunk`
    (or smaller than it). temperature: a traced float32 scalar > 0; the distribution is
    softmax(logits / temperature), the one the sampler draws from and reports log-probs under.
    """
    b, t, e = hidden.shape
    previous = jnp.concatenate([jnp.zeros_like(hidden[:, :1]), hidden[:, :-1]], axis=1)
    n = b * t
    chunk = min(chunk, n)
    if n % chunk:
        raise ValueError(f"batch x length {n} is not a multiple of the logit chunk {chunk}")
    kernel = lm_head_kernel(params).astype(hidden.dtype)
    xs = (previous.reshape(n // chunk, chunk, e), tokens.reshape(n // chunk, chunk))
    inv_temp = 1.0 / jnp.asarray(temperature, jnp.float32)
    logprobs, entropies = jax.lax.map(lambda x: _chunk_stats(kernel, *x, inv_temp), xs)
    keep = valid & jnp.concatenate([jnp.zeros_like(valid[:, :1]), valid[:, :-1]], axis=1)
    return (
        jnp.where(keep, logprobs.reshape(b, t), 0.0),
        jnp.where(keep, entropies.reshape(b, t), 0.0),
    )
