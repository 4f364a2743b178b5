"""Ragged paged decode attention: each slot reads its own live pages, not the furthest slot's.

The gathered reader (paged_cache.PagedReader) runs the kernel's key chunks over every slot up
to the furthest slot's position, so on a length mix short rows pay for long ones. Here the work
is a flat list of items (slot, key chunk j) over each slot's live chunks only (j <= position //
chunk), slot-major, processed `block` items per iteration of a loop whose trip count is
ceil(items / block) (traced: nothing recompiles as rows grow). Each item scores its slot's query
against one chunk of that slot's pages; per slot the items combine as in split-K decoding
(flash-decoding): a running maximum, softmax denominator and weighted values per slot, updated
per block by scatter max / add over the items' slots. The result equals the kernel's running
softmax up to float rounding (items of one slot in one block are summed before they are added).

FCI observers see exact probabilities through `ItemObserver.add_items`: each item's
probabilities relative to its slot's running maximum, and the factor each slot's earlier sums
are rescaled by; the denominator comes at finish, as for the kernel's `Observer`.
"""

from __future__ import annotations

from typing import Any, Protocol

import jax
import jax.numpy as jnp

from attnrl_jax.models.attention import MASK_VALUE


class ItemObserver(Protocol):
    """An attention `Observer` (models/attention.py) that also takes ragged items: probs
    [W, Hkv, G, Ck] (exp(score - m) for the item slot's running maximum m), rescale [B, Hkv, G]
    (exp(m_old - m_new) per slot, for what acc holds), slots [W] int32 (B: a padding item, to
    drop) and k_starts [W] int32 (each item's first key position)."""

    def start(self, state: Any, q_start: Any) -> Any: ...

    def add_items(
        self, acc: Any, probs: jax.Array, rescale: jax.Array, slots: jax.Array, k_starts
    ) -> Any: ...

    def finish(self, state: Any, acc: Any, total: jax.Array | None, q_start: Any) -> Any: ...


def live_chunks(positions: jax.Array, needed: jax.Array, chunk: int) -> jax.Array:
    """[B] int32: key chunks slot b reads (its keys are [0, positions[b]]); 0 when not needed
    (its output is then 0)."""
    return jnp.where(needed, positions // chunk + 1, 0).astype(jnp.int32)


def ragged_attention(
    q: jax.Array,
    keys: jax.Array,
    values: jax.Array,
    table: jax.Array,
    positions: jax.Array,
    counts: jax.Array,
    chunk: int,
    block: int,
    observer: ItemObserver | None = None,
    observed: Any = None,
) -> tuple[jax.Array, Any]:
    """Decode attention out [B, 1, Hq, D] (q's dtype) and the observer's new state.

    q [B, 1, Hq, D]; keys [N, Hkv, D, P], values [N, Hkv, P, D]: one layer's page pool; table
    [B, M] int32 (each slot's pages in logical order); positions [B] int32: slot b sees keys
    [0, positions[b]]; counts [B] int32 from `live_chunks`; chunk: keys per item (whole pages,
    dividing M * P); block: items per loop iteration.
    """
    b, _, hq, d = q.shape
    _, hkv, _, p = keys.shape
    g = hq // hkv
    per = chunk // p  # pages per item
    if chunk % p or table.shape[1] % per:
        raise ValueError(f"ragged chunk {chunk} must be whole pages of {p} dividing the table")
    rows = q.reshape(b, hkv, g, d)
    ends = jnp.cumsum(counts)
    starts = ends - counts
    items = ends[-1]

    def step(i, carry):
        peak, total, acc, obs = carry
        w = i * block + jnp.arange(block)
        valid = w < items
        slot = jnp.where(valid, jnp.searchsorted(ends, w, side="right"), b)  # b: padding
        s = jnp.minimum(slot, b - 1)
        j = jnp.where(valid, w - starts[s], 0)
        logical = j[:, None] * per + jnp.arange(per)
        ids = jnp.where(valid[:, None], jnp.take_along_axis(table[s], logical, axis=1), 0)
        kc, vc = keys[ids], values[ids]  # [W, per, Hkv, D, P], [W, per, Hkv, P, D]
        if per == 1:
            kc, vc = kc[:, 0], vc[:, 0]
        else:
            kc = jnp.transpose(kc, (0, 2, 3, 1, 4)).reshape(block, hkv, d, chunk)
            vc = jnp.transpose(vc, (0, 2, 1, 3, 4)).reshape(block, hkv, chunk, d)
        scores = jnp.einsum("whgd,whdk->whgk", rows[s], kc, preferred_element_type=jnp.float32)
        visible = j[:, None] * chunk + jnp.arange(chunk) <= positions[s][:, None]
        scores = jnp.where(visible[:, None, None], scores * (d**-0.5), MASK_VALUE)
        new_peak = peak.at[slot].max(jnp.max(scores, axis=-1), mode="drop")
        shrink = jnp.exp(peak - new_peak)  # [B, Hkv, G]
        probs = jnp.exp(scores - new_peak[s][..., None])  # [W, Hkv, G, Ck]
        zeros = jnp.zeros_like(total)
        total = total * shrink + zeros.at[slot].add(jnp.sum(probs, axis=-1), mode="drop")
        update = jnp.einsum(
            "whgk,whkd->whgd", probs.astype(vc.dtype), vc, preferred_element_type=jnp.float32
        )
        acc = acc * shrink[..., None] + jnp.zeros_like(acc).at[slot].add(update, mode="drop")
        if observer is not None:
            obs = observer.add_items(obs, probs, shrink, slot, j * chunk)
        return new_peak, total, acc, obs

    init = (
        jnp.full((b, hkv, g), MASK_VALUE, jnp.float32),
        jnp.zeros((b, hkv, g), jnp.float32),
        jnp.zeros((b, hkv, g, d), jnp.float32),
        None if observer is None else observer.start(observed, 0),
    )
    trips = (items + block - 1) // block
    _, total, acc, obs = jax.lax.fori_loop(0, trips, step, init)
    # a slot with no items (counts 0) has total 0 and acc 0: its output is 0
    out = acc / jnp.where(total > 0, total, 1.0)[..., None]
    if observer is not None:
        observed = observer.finish(observed, obs, total[..., None], 0)
    return out.reshape(b, 1, hq, d).astype(q.dtype), observed
