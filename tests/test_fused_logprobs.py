"""The fused, vocabulary-chunked log-probs and entropies equal the plain [B, T, V] computation,
values and gradients (float32, 1e-5: the two differ only in summation order)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnrl_jax.scoring.logprobs import token_logprobs_entropies, vocab_chunking

B, T, E, V = 3, 13, 8, 67  # T not a multiple of the token chunk, V not of the vocabulary chunk
TEMPERATURE = 0.7


def unfused(params, hidden, tokens, valid, temperature):
    kernel = params["lm_head"]["kernel"] if "lm_head" in params else params["embed"].T
    logits = (hidden[:, :-1] @ kernel) / temperature
    logp_all = jax.nn.log_softmax(logits, axis=-1)
    logp = jnp.take_along_axis(logp_all, tokens[:, 1:, None], axis=-1)[..., 0]
    ent = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
    keep = valid[:, 1:] & valid[:, :-1]
    pad = lambda x: jnp.pad(jnp.where(keep, x, 0.0), ((0, 0), (1, 0)))  # noqa: E731
    return pad(logp), pad(ent)


@pytest.fixture(scope="module", params=["untied", "tied"])
def inputs(request):
    k = jax.random.split(jax.random.key(0), 4)
    params = {"embed": jax.random.normal(k[0], (V, E))}
    if request.param == "untied":
        params["lm_head"] = {"kernel": jax.random.normal(k[1], (E, V))}
    hidden = jax.random.normal(k[2], (B, T, E))
    tokens = jax.random.randint(k[3], (B, T), 0, V)
    valid = jnp.arange(T)[None, :] < jnp.array([[T], [9], [1]])
    return params, hidden, tokens, valid


@pytest.mark.parametrize("chunk, vocab_chunk", [(4, 16), (16, 8192)])
def test_fused_equals_unfused_with_gradients(inputs, chunk, vocab_chunk):
    params, hidden, tokens, valid = inputs
    w = jax.random.normal(jax.random.key(5), (2, B, T))

    def objective(fn):
        def f(p, h):
            logp, ent = fn(p, h)
            return jnp.sum(w[0] * logp + w[1] * ent), (logp, ent)

        return jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))

    fused = objective(
        lambda p, h: token_logprobs_entropies(p, h, tokens, valid, chunk, TEMPERATURE, vocab_chunk)
    )
    plain = objective(lambda p, h: unfused(p, h, tokens, valid, TEMPERATURE))
    (_, got), got_grads = fused(params, hidden)
    (_, want), want_grads = plain(params, hidden)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(want[1]).max()) > 1.0  # the entropies are not trivially 0
    flat_got, flat_want = jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)
    assert float(jnp.abs(want_grads[1]).max()) > 0 and float(jnp.abs(flat_want[-2]).max()) > 0
    for a, b in zip(flat_got, flat_want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_vocab_chunking_covers_the_vocabulary_with_little_padding():
    assert vocab_chunking(67, 16) == (5, 14)
    n, width = vocab_chunking(151936, 8192)
    assert width % 128 == 0 and (n - 1) * width < 151936 <= n * width
    assert n * width / 151936 < 1.01
