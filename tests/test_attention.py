"""The one attention kernel: its chunkings, layouts and observers against a dense reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnrl_jax.models.attention import (
    MASK_VALUE,
    attention,
    cache_mask,
    causal_mask,
    hide_keys,
    tree_mask,
)

B, T, HQ, HKV, D = 2, 16, 4, 2, 8


def dense(q, k, v, full_mask):
    """Reference: probs [B, Hq, T, S] and out [B, T, Hq, D] from a full [B, T, S] mask."""
    k = jnp.repeat(k, HQ // HKV, axis=2)
    v = jnp.repeat(v, HQ // HKV, axis=2)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) * D**-0.5
    probs = jax.nn.softmax(jnp.where(full_mask[:, None], scores, MASK_VALUE), axis=-1)
    return probs, jnp.einsum("bhqk,bkhd->bqhd", probs, v)


class Rows:
    """An observer that keeps each query chunk's probabilities over all S keys, in the state
    [B, Hkv, G, T, S], assembled from key chunks with the running-softmax rescale."""

    def __init__(self, query_chunk):
        self.cq = query_chunk

    def start(self, state, q_start):
        b, hkv, g, _, s = state.shape
        return jnp.zeros((b, hkv, g, self.cq, s), jnp.float32)

    def add(self, acc, probs, rescale, q_start, k_start):
        if rescale is None:
            return probs
        acc = acc * rescale[..., None]
        return jax.lax.dynamic_update_slice_in_dim(acc, probs, k_start, axis=4)

    def finish(self, state, acc, total, q_start):
        if total is not None:
            acc = acc / total[..., None]
        return jax.lax.dynamic_update_slice_in_dim(state, acc, q_start, axis=3)


@pytest.fixture(scope="module")
def qkv():
    kq, kk, kv = jax.random.split(jax.random.key(0), 3)
    return (
        jax.random.normal(kq, (B, T, HQ, D)),
        jax.random.normal(kk, (B, T, HKV, D)),
        jax.random.normal(kv, (B, T, HKV, D)),
    )


def full(mask, t=T, s=T):
    return mask(0, t, 0, s)


@pytest.mark.parametrize(
    "query_chunk, key_chunk", [(None, None), (4, None), (None, 4), (8, 2), (16, 16)]
)
def test_chunkings_equal_dense_attention_and_observe_exact_probabilities(
    qkv, query_chunk, key_chunk
):
    q, k, v = qkv
    segments = jnp.asarray([[1] * 10 + [2] * 4 + [0] * 2, [1] * T])
    mask = causal_mask(segments)
    observer = Rows(T if query_chunk is None else query_chunk)
    state = jnp.zeros((B, HKV, HQ // HKV, T, T), jnp.float32)
    out, seen = attention(
        q,
        k,
        v,
        mask,
        query_chunk=query_chunk,
        key_chunk=key_chunk,
        observer=observer,
        observed=state,
    )
    probs, ref = dense(q, k, v, full(mask))
    # float32 throughout; the running softmax reassociates sums (a few ulps of 1)
    np.testing.assert_allclose(out, ref, atol=2e-6)
    np.testing.assert_allclose(seen.reshape(B, HQ, T, T), probs, atol=2e-6)


def test_cache_layout_key_limit_and_cache_mask(qkv):
    """Decode: one query per row over a cache [B, Hkv, D, S] / [B, Hkv, S, D], reading only
    the key chunks up to the furthest row; equal to dense attention over slots <= position."""
    q, k, v = qkv
    positions = jnp.asarray([5, 9])
    mask = cache_mask(positions)
    keys, values = jnp.transpose(k, (0, 2, 3, 1)), jnp.transpose(v, (0, 2, 1, 3))
    # garbage past the furthest row's chunk: never read, so it cannot change the result
    keys = keys.at[..., 12:].set(jnp.nan)
    values = values.at[:, :, 12:].set(jnp.nan)
    out, _ = attention(
        q[:, :1], keys, values, mask, key_chunk=4, key_limit=positions.max() + 1, cache_layout=True
    )
    _, ref = dense(q[:, :1], k, v, full(mask, 1))
    np.testing.assert_allclose(out, ref, atol=2e-6)


def test_hide_keys_removes_exactly_the_hidden_range_from_the_softmax(qkv):
    """Decode after a hidden range (the Fig. 3 disruption): equal to dense attention whose mask
    drops those keys; an empty range changes nothing; key chunks straddle the range."""
    q, k, v = qkv
    positions = jnp.asarray([13, 15])
    starts, ends = jnp.asarray([3, 6]), jnp.asarray([7, 6])  # row 1: nothing hidden
    mask = hide_keys(cache_mask(positions), starts, ends)
    keys, values = jnp.transpose(k, (0, 2, 3, 1)), jnp.transpose(v, (0, 2, 1, 3))
    out, _ = attention(q[:, :1], keys, values, mask, key_chunk=4, cache_layout=True)
    slots = np.arange(T)
    expected = np.stack([
        (slots <= 13) & ~((slots >= 3) & (slots < 7)),
        slots <= 15,
    ])[:, None, :]  # fmt: skip
    np.testing.assert_array_equal(full(mask, 1), expected)
    _, ref = dense(q[:, :1], k, v, jnp.asarray(expected))
    np.testing.assert_allclose(out, ref, atol=2e-6)
    unhidden, _ = attention(q[:, :1], keys, values, cache_mask(positions), cache_layout=True)
    np.testing.assert_allclose(out[1], unhidden[1], atol=2e-6)
    assert np.abs(np.asarray(out[0] - unhidden[0])).max() > 1e-3  # row 0 did change


def test_bad_chunk_raises(qkv):
    q, k, v = qkv
    with pytest.raises(ValueError, match="not a multiple of query_chunk 5"):
        attention(q, k, v, causal_mask(jnp.ones((B, T), jnp.int32)), query_chunk=5)


def random_dfs_tree(rng, num_nodes):
    """Parents of nodes 1..K-1 in DFS pre-order (node 0 the root), and ancestors [K, K]."""
    parent = [-1]
    path = [0]  # the current root path: in pre-order a node's parent is on it
    for n in range(1, num_nodes):
        path = path[: rng.integers(1, len(path) + 1)]
        parent.append(path[-1])
        path = path + [n]
    ancestors = np.eye(num_nodes, dtype=bool)
    for n in range(1, num_nodes):
        ancestors[n] |= ancestors[parent[n]]
    return ancestors


def test_tree_mask_equals_brute_force_ancestor_matrix():
    rng = np.random.default_rng(0)
    t, k = 40, 9
    ancestors, nodes = [], []
    for _ in range(3):
        anc = random_dfs_tree(rng, k)
        # each node's tokens after its parent's: pre-order placement, random lengths (some 0)
        sizes = rng.integers(0, 6, k)
        sizes[0] = max(sizes[0], 1)
        row = np.repeat(np.arange(k), sizes)[:t]
        row = np.concatenate([row, np.full(t - len(row), -1)])
        ancestors.append(anc)
        nodes.append(row)
    ancestors, nodes = np.stack(ancestors), np.stack(nodes).astype(np.int32)
    valid = nodes >= 0
    safe = np.maximum(nodes, 0)
    brute = np.stack([ancestors[b][safe[b][:, None], safe[b][None, :]] for b in range(len(nodes))])
    brute &= np.tril(np.ones((t, t), bool))[None] & valid[:, None, :] & valid[:, :, None]
    mask = tree_mask(jnp.asarray(nodes), jnp.asarray(ancestors))
    for start in range(0, t, 8):
        chunk = np.asarray(mask(start, 8, 0, t))
        np.testing.assert_array_equal(chunk, brute[:, start : start + 8])


def test_fci_column_sums_refuse_a_running_softmax(qkv):
    """Column sums over queries cannot take a per-query rescale: a clear error, not a wrong sum."""
    from attnrl_jax.scoring.fci import ColumnSumObserver

    q, k, v = qkv
    steps = jnp.zeros((B, T), jnp.int32)
    observer = ColumnSumObserver(steps, jnp.ones((B, T)), 1)
    z = jnp.zeros((B, HKV, HQ // HKV, T))
    mask = causal_mask(jnp.ones((B, T), jnp.int32))
    with pytest.raises(ValueError, match="FCI column sums need whole-key attention"):
        attention(q, k, v, mask, key_chunk=4, observer=observer, observed=z)
