"""The device side of the paged KV cache: one pool of pages per layer, as `Attend` functions.

    keys[layer]   [N, Hkv, D, P]    N pages of P positions (page 0: the trash page, pages.py)
    values[layer] [N, Hkv, P, D]

A slot's page table [M] int32 maps its logical page j (positions j*P .. j*P + P - 1) to a
physical page. Decode attention runs the one kernel with a `PagedReader` for keys and values:
each key chunk of the kernel's running softmax gathers that chunk's pages of every slot in
logical order, in the dense cache layout of cache.py, so the kernel and the FCI observer see
keys in the same order as the lock-step sampler's dense cache, and chunks past the furthest
slot's position are never gathered.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding

from attnrl_jax.buckets import largest_divisor
from attnrl_jax.models import sharding
from attnrl_jax.models.attention import Attend, Observer, causal_attend
from attnrl_jax.sampling.cache import KVCache, cache_reader, constrain
from attnrl_jax.sampling.ragged_attention import live_chunks, ragged_attention

POOL_AXES = (None, "kv_heads", None, None)  # one batch shard: pages whole on every device
SHARD_POOL_AXES = ("batch", "kv_heads", None, None)  # S shards: page blocks over data x fsdp


def empty_pool(
    num_layers: int, num_pages: int, kv_heads: int, head_dim: int, page_size: int, dtype
) -> KVCache:
    keys = jnp.zeros((num_pages, kv_heads, head_dim, page_size), dtype)
    values = jnp.zeros((num_pages, kv_heads, page_size, head_dim), dtype)
    return KVCache((keys,) * num_layers, (values,) * num_layers)


def constrain_pool(pool: KVCache, mesh: Mesh | None, rules: sharding.Rules) -> KVCache:
    """Pins the pool's sharding on `mesh`: heads over tensor, pages whole on every device."""
    if mesh is None:
        return pool
    return constrain(pool, mesh, rules, POOL_AXES)


def constrain_shards(tree, mesh: Mesh, rules: sharding.Rules):
    """Pins an engine state (continuous.EngineState) split per batch shard: every [B]-leading
    slot array over data x fsdp, the pool's pages too (S blocks of N/S) and heads over tensor."""
    state = tree._replace(pool=constrain(tree.pool, mesh, rules, SHARD_POOL_AXES))

    def rows(x):
        spec = sharding.spec_for(("batch",) + (None,) * (x.ndim - 1), x.shape, mesh, rules)
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

    return state._replace(
        slots=jax.tree.map(rows, state.slots), watched=jax.tree.map(rows, state.watched)
    )


def _write(pool: KVCache, layer: int, pages, offsets, k, v) -> KVCache:
    """k, v [..., Hkv, D] written at (pages, offsets) [...] of layer's pool."""
    keys = pool.keys[layer].at[pages, :, :, offsets].set(k, mode="promise_in_bounds")
    values = pool.values[layer].at[pages, :, offsets].set(v, mode="promise_in_bounds")
    return KVCache(
        pool.keys[:layer] + (keys,) + pool.keys[layer + 1 :],
        pool.values[:layer] + (values,) + pool.values[layer + 1 :],
    )


class PagedReader(NamedTuple):
    """One layer's keys or values of every slot, in logical order, as the attention kernel's
    key reader: `read(start, size)` gathers only the pages of positions [start, start + size)
    (size a multiple of the page size), so the kernel's chunks past key_limit cost nothing.

    pages: the layer's pool, keys [N, Hkv, D, P] or values [N, Hkv, P, D]; table [B, M].
    """

    pages: jax.Array
    table: jax.Array
    keys: bool

    @property
    def dtype(self):
        return self.pages.dtype

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """The dense cache layout (cache.py): keys [B, Hkv, D, S], values [B, Hkv, S, D]."""
        _, hkv, a, b = self.pages.shape
        slots, m = self.table.shape
        return (slots, hkv, a, m * b) if self.keys else (slots, hkv, m * a, b)

    def read(self, start, size: int) -> jax.Array:
        """Positions [start, start + size) of every slot: [B, Hkv, D, size] / [B, Hkv, size, D]."""
        p = self.pages.shape[-1] if self.keys else self.pages.shape[-2]
        ids = jax.lax.dynamic_slice_in_dim(self.table, start // p, size // p, axis=1)
        chunk = self.pages[ids]  # [B, n, Hkv, D, P] or [B, n, Hkv, P, D]
        b, n, hkv = chunk.shape[:3]
        if self.keys:
            return jnp.transpose(chunk, (0, 2, 3, 1, 4)).reshape(b, hkv, -1, n * p)
        return jnp.transpose(chunk, (0, 2, 1, 3, 4)).reshape(b, hkv, n * p, -1)


def chunk_size(pages_per_slot: int, page_size: int, most: int) -> int:
    """Decode attention's key chunk: whole pages, at most `most` positions when pages allow."""
    return page_size * largest_divisor(pages_per_slot, max(1, most // page_size))


def paged_prefill_attend(
    source: jax.Array,
    table: jax.Array,
    writes: jax.Array,
    query_chunk: int | None,
) -> Attend:
    """Causal attention over right-padded contexts [A_ctx, C] that writes admitted rows' pages.

    source [A] int32: the context each admitted row continues. table [A, M] int32: the rows'
    page tables. writes [A, C] bool: the context positions row a writes (its private pages, and
    the shared full pages for one row of a request that has none yet); others go to the trash
    page. The state is the pool (KVCache).
    """

    def attend(layer: int, q, k, v, pool: KVCache):
        out, _ = causal_attend(jnp.ones(q.shape[:2], jnp.int32), query_chunk)(layer, q, k, v, None)
        p = pool.keys[layer].shape[-1]
        positions = jnp.arange(k.shape[1])
        logical = jnp.minimum(positions // p, table.shape[1] - 1)
        pages = jnp.where(writes, table[:, logical], 0)  # [A, C]
        offsets = jnp.broadcast_to(positions % p, pages.shape)
        return out, _write(pool, layer, pages, offsets, k[source], v[source])

    return attend


def paged_decode_attend(
    table: jax.Array,
    positions: jax.Array,
    writes: jax.Array,
    chunk: int,
    observe: Callable[[int], Observer | None] | None = None,
    ragged: tuple[int, int] | None = None,
) -> Attend:
    """One new token per slot: written at positions[b] of slot b's pages when writes[b] (else
    into the trash page), then attends over positions [0, positions[b]] of the gathered cache.

    q, k, v [B, 1, H, D]; table [B, M]; positions [B] int32 in [0, M*P); chunk: whole pages
    (`chunk_size`). The state is (pool, observed), as cache.decode_attend's (observe: see
    there). ragged (item chunk, block), both from `chunk_size` / the slot count: read with
    ragged_attention.py instead, each slot only its own live pages, and only the slots that
    write (the others' output is 0); a layer whose observer cannot take ragged items reads gathered.
    """
    read = cache_reader(positions, chunk, observe)
    rows = jnp.arange(positions.shape[0])
    counts = None if ragged is None else live_chunks(positions, writes, ragged[0])

    def attend(layer: int, q, k, v, state):
        pool, observed = state
        p = pool.keys[layer].shape[-1]
        pages = jnp.where(writes, table[rows, positions // p], 0)
        pool = _write(pool, layer, pages, positions % p, k[:, 0], v[:, 0])
        observer = None if observe is None else observe(layer)
        if ragged is not None and (observer is None or hasattr(observer, "add_items")):
            out, observed = ragged_attention(
                q,
                pool.keys[layer],
                pool.values[layer],
                table,
                positions,
                counts,
                *ragged,
                observer=observer,
                observed=observed,
            )
            return out, (pool, observed)
        keys = PagedReader(pool.keys[layer], table, True)
        values = PagedReader(pool.values[layer], table, False)
        out, observed = read(layer, q, keys, values, observed)
        return out, (pool, observed)

    return attend
