"""Token choice: sampled frequencies, truncation against transformers' warpers, greedy, logprobs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from scipy.stats import chisquare
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from attnrl_jax.sampling.token_choice import SamplingParams, choose_tokens, inverse_cdf, truncate

LOGITS = np.array([2.0, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0, 1.5], np.float32)


@jax.jit
def _choose(logits, temperature, top_p, top_k, u):
    return choose_tokens(logits, SamplingParams(temperature, top_p, top_k), u)


def _draw(logits_row, n, temperature=1.0, top_p=1.0, top_k=0, seed=0):
    logits = jnp.broadcast_to(jnp.asarray(logits_row), (n, len(logits_row)))
    u = jnp.asarray(np.random.default_rng(seed).random(n, dtype=np.float32))

    def full(value, dtype):
        return jnp.full((n,), value, dtype)

    tokens, logprobs = _choose(
        logits, full(temperature, jnp.float32), full(top_p, jnp.float32), full(top_k, jnp.int32), u
    )
    return np.asarray(tokens), np.asarray(logprobs)


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


@pytest.mark.parametrize(
    "temperature, top_p, top_k, kept",
    [
        (1.0, 1.0, 0, [0, 1, 2, 3, 4, 5, 6, 7]),
        (0.7, 1.0, 0, [0, 1, 2, 3, 4, 5, 6, 7]),
        (1.0, 1.0, 3, [0, 1, 7]),
        (1.0, 0.8, 0, [0, 1, 2, 7]),
        (1.3, 0.7, 5, [0, 1, 7]),
    ],
)
def test_sampled_frequencies_match_the_distribution(temperature, top_p, top_k, kept):
    n = 40_000
    tokens, _ = _draw(LOGITS, n, temperature, top_p, top_k, seed=1)
    counts = np.bincount(tokens, minlength=len(LOGITS))
    probs = _softmax(LOGITS.astype(np.float64) / temperature)
    truncated = np.zeros_like(probs)
    truncated[kept] = probs[kept] / probs[kept].sum()
    assert set(np.flatnonzero(counts)) == set(kept)  # never a filtered-out token
    assert chisquare(counts[kept], n * truncated[kept]).pvalue > 1e-3


def test_truncation_matches_transformers_warpers():
    rng = np.random.default_rng(2)
    rows, vocab = 64, 300
    logits = (rng.normal(size=(rows, vocab)) * rng.uniform(0.5, 4, size=(rows, 1))).astype(
        np.float32
    )
    top_k = rng.choice([0, 1, 2, 7, 50, 299, 400], size=rows).astype(np.int32)
    top_p = rng.choice([1.0, 0.999, 0.9, 0.5, 0.1, 1e-6], size=rows).astype(np.float32)
    weights = jnp.exp(logits - logits.max(axis=1, keepdims=True))
    ours = np.asarray(jax.jit(truncate)(weights, jnp.asarray(top_k), jnp.asarray(top_p))) > 0
    for r in range(rows):
        scores = torch.as_tensor(logits[r : r + 1])
        if top_k[r] > 0:
            scores = TopKLogitsWarper(int(top_k[r]))(None, scores)
        if top_p[r] < 1:
            scores = TopPLogitsWarper(float(top_p[r]))(None, scores)
        expected = torch.isfinite(scores)[0].numpy()
        np.testing.assert_array_equal(ours[r], expected, err_msg=f"top_k={top_k[r]} p={top_p[r]}")


def test_greedy_takes_the_first_maximum_and_reports_its_log_prob():
    logits = np.array([[0.0, 3.0, 1.0, 3.0], [5.0, -1.0, 5.0, 2.0], [-2.0, -1.0, -3.0, -1.5]])
    rows = len(logits)
    tokens, logprobs = _choose(
        jnp.asarray(logits, jnp.float32),
        jnp.zeros(rows),
        jnp.full(rows, 0.5),  # filters do not change greedy choices
        jnp.full(rows, 2, jnp.int32),
        jnp.full(rows, 0.99),
    )
    np.testing.assert_array_equal(tokens, [1, 0, 1])
    expected = jax.nn.log_softmax(logits, axis=-1)[np.arange(rows), [1, 0, 1]]
    np.testing.assert_allclose(logprobs, expected, atol=1e-6)


def test_log_probs_are_under_the_untruncated_tempered_distribution():
    temperature = 0.6
    tokens, logprobs = _draw(LOGITS, 256, temperature, top_p=0.5, top_k=2, seed=3)
    expected = np.asarray(jax.nn.log_softmax(LOGITS / temperature))[tokens]
    np.testing.assert_allclose(logprobs, expected, atol=1e-6)


def test_rows_with_different_settings_do_not_affect_each_other():
    rng = np.random.default_rng(4)
    logits = jnp.asarray(rng.normal(size=(4, 50)) * 2, jnp.float32)
    settings = (
        jnp.asarray([0.0, 1.0, 0.8, 1.5]),
        jnp.asarray([1.0, 0.3, 1.0, 0.9]),
        jnp.asarray([0, 0, 5, 0], jnp.int32),
    )
    u = jnp.asarray(rng.random(4), jnp.float32)
    together = _choose(logits, *settings, u)
    for r in range(4):
        alone = _choose(logits[r : r + 1], *(s[r : r + 1] for s in settings), u[r : r + 1])
        np.testing.assert_array_equal(alone[0], together[0][r : r + 1])
        np.testing.assert_allclose(alone[1], together[1][r : r + 1], atol=1e-6)


def test_inverse_cdf_never_picks_a_zero_weight_token():
    vocab = 1000
    weights = np.zeros((6, vocab), np.float32)
    weights[:, [3, 517, 998]] = [0.2, 0.5, 0.3]
    u = np.array([0.0, 0.19, 0.21, 0.69, 0.71, 1.0 - 2**-24], np.float32)
    tokens = np.asarray(jax.jit(inverse_cdf)(jnp.asarray(weights), jnp.asarray(u)))
    np.testing.assert_array_equal(tokens, [3, 3, 517, 517, 998, 998])
