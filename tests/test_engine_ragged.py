"""Ragged paged decode attention (sampling/ragged_attention.py) against the one kernel over the
dense cache each page table spells out: outputs, and the attention probabilities an observer sees.

Float32; tolerances 1e-6: the same sums in another order (a slot's items in one block are
added before they join its running sums), over at most 96 of 128 keys.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnrl_jax.models.attention import attention, cache_mask
from attnrl_jax.sampling.ragged_attention import live_chunks, ragged_attention

SLOTS, HQ, HKV, D, P, M, N = 5, 4, 2, 8, 4, 32, 160  # M pages per slot of P positions; N pages


class DenseProbs(NamedTuple):
    """Test observer: each slot's attention row over all M * P keys, as given."""

    def start(self, state, q_start):
        return jnp.zeros((SLOTS, HKV, HQ // HKV, M * P), jnp.float32)

    def add(self, acc, probs, rescale, q_start, k_start):  # the reference reads keys whole
        assert rescale is None and probs.shape[-1] == M * P
        return probs[:, :, :, 0]

    def add_items(self, acc, probs, rescale, slots, k_starts):
        keys = k_starts[:, None] + jnp.arange(probs.shape[-1])  # [W, Ck]
        rows = jnp.broadcast_to(slots[:, None], keys.shape)
        moved = jnp.moveaxis(probs, 3, 1)  # [W, Ck, Hkv, G]
        added = jnp.zeros_like(acc).at[rows, :, :, keys].add(moved, mode="drop")
        return acc * rescale[..., None] + added

    def finish(self, state, acc, total, q_start):
        return acc if total is None else acc / total[..., 0, None]


def _case(seed):
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.normal(size=(SLOTS, 1, HQ, D)), jnp.float32)
    keys = jnp.asarray(rng.normal(size=(N, HKV, D, P)), jnp.float32)
    values = jnp.asarray(rng.normal(size=(N, HKV, P, D)), jnp.float32)
    table = rng.permutation(N)[: SLOTS * M].reshape(SLOTS, M)  # distinct pages per slot
    table[1, :2] = table[0, :2]  # two slots share their first pages (a request's prompt)
    positions = jnp.asarray([95, 0, 17, 40, 63], jnp.int32)
    return q, keys, values, jnp.asarray(table, jnp.int32), positions


def _dense(pool, table, keys: bool):
    pages = pool[table]  # [B, M, Hkv, D, P] or [B, M, Hkv, P, D]
    if keys:
        return jnp.transpose(pages, (0, 2, 3, 1, 4)).reshape(SLOTS, HKV, D, M * P)
    return jnp.transpose(pages, (0, 2, 1, 3, 4)).reshape(SLOTS, HKV, M * P, D)


@jax.jit
def _reference(q, keys, values, table, positions):
    k, v = _dense(keys, table, True), _dense(values, table, False)
    return attention(
        q, k, v, cache_mask(positions), cache_layout=True, observer=DenseProbs(), observed=0
    )


@pytest.mark.parametrize("chunk, block", [(4, SLOTS), (8, 3), (16, 16), (32, 1)])
def test_equals_the_kernel_over_the_dense_cache(chunk, block):
    q, keys, values, table, positions = _case(chunk + block)
    needed = jnp.asarray([True, True, True, False, True])
    counts = live_chunks(positions, needed, chunk)
    assert counts.tolist() == [95 // chunk + 1, 1, 17 // chunk + 1, 0, 63 // chunk + 1]
    run = jax.jit(ragged_attention, static_argnames=("chunk", "block", "observer"))
    out, probs = run(
        q,
        keys,
        values,
        table,
        positions,
        counts,
        chunk=chunk,
        block=block,
        observer=DenseProbs(),
        observed=0,
    )
    expected, expected_probs = _reference(q, keys, values, table, positions)
    live = np.asarray(needed)
    np.testing.assert_allclose(out[live], expected[live], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(probs[live], expected_probs[live], rtol=1e-6, atol=1e-7)
    assert np.all(np.asarray(out[~live]) == 0)  # a slot with no items reads nothing
    # keys past a slot's position get exactly nothing
    beyond = np.arange(M * P)[None, :] > np.asarray(positions)[:, None]  # [B, S]
    assert np.all(np.asarray(probs)[live] * beyond[live][:, None, None, :] == 0)


def test_a_chunk_of_partial_pages_is_named():
    q, keys, values, table, positions = _case(0)
    counts = live_chunks(positions, jnp.ones(SLOTS, bool), 6)
    with pytest.raises(ValueError, match="ragged chunk 6 must be whole pages of 4"):
        ragged_attention(q, keys, values, table, positions, counts, 6, 4)
