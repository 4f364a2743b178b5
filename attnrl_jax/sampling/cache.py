"""The KV cache: one row per sample, each row with its own length, as `Attend` functions.

Row r holds its context (prompt + response prefix) in slots [0, length_r) and writes the
token it generates at step i into slot length_r + i, which is also that token's position. So
rows continue from different prefix lengths in one batch: there is no shared write offset, and
no left padding to correct positions for. Slots past a row's current token are never attended.

Layout, chosen for the decode step on CPU (measured: scores over a [.., S, D] key layout ran 6x
slower than over [.., D, S], which needs no transpose):

    keys[layer]   [R, Hkv, D, S]
    values[layer] [R, Hkv, S, D]

one array per layer (a tuple), so the decode loop indexes no stacked buffer. Sharded like the
batch (rows over data x fsdp) and the attention heads (Hkv over tensor).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding

from attnrl_jax.models import sharding
from attnrl_jax.models.attention import Attend, Observer, attention, cache_mask, causal_attend

CACHE_AXES = ("batch", "kv_heads", None, None)  # logical axes of keys and values alike


class KVCache(NamedTuple):
    keys: tuple[jax.Array, ...]  # per layer [R, Hkv, D, S]
    values: tuple[jax.Array, ...]  # per layer [R, Hkv, S, D]


def constrain(
    cache: KVCache, mesh: Mesh | None, rules: sharding.Rules, axes: tuple = CACHE_AXES
) -> KVCache:
    """Pins the cache's sharding on `mesh` (a no-op without one); axes: logical axes of each
    array."""
    if mesh is None:
        return cache

    def pin(x):
        spec = sharding.spec_for(axes, x.shape, mesh, rules)
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

    return jax.tree.map(pin, cache)


def prefill_attend(source: jax.Array, cache_length: int, query_chunk: int | None) -> Attend:
    """Causal attention over right-padded contexts [P, C] that also fills the rows' cache.

    source [R] int32: the context each row continues, so one prefilled context fans out to
    all its rows (its n samples) by a gather, not by prefilling n copies. Padding after a
    context's end is only ever attended by padding queries, so a causal mask suffices.
    The state is a KVCache of per-layer entries (filled in layer order; layer is a static int).
    """

    def attend(layer: int, q, k, v, cache: KVCache):
        out, _ = causal_attend(jnp.ones(q.shape[:2], jnp.int32), query_chunk)(layer, q, k, v, None)
        pad = cache_length - k.shape[1]
        keys = jnp.pad(jnp.transpose(k[source], (0, 2, 3, 1)), ((0, 0), (0, 0), (0, 0), (0, pad)))
        values = jnp.pad(jnp.transpose(v[source], (0, 2, 1, 3)), ((0, 0), (0, 0), (0, pad), (0, 0)))
        return out, KVCache(cache.keys + (keys,), cache.values + (values,))

    return attend


def decode_attend(
    positions: jax.Array,
    chunk: int,
    observe: Callable[[int], Observer | None] | None = None,
) -> Attend:
    """One new token per row: writes its k/v into slot positions[r] of row r, then attends
    over slots [0, positions[r]]. q, k, v [R, 1, H, D]; positions [R] int32 (in range).

    Slots are read in chunks (chunk divides the cache length) with a running softmax, and only
    up to the chunk of the furthest row: early in a long generation most of the cache is not
    read at all. (A chunk is copied before use, so a cache of one chunk, read whole, is cheapest
    when it is short.)

    The state is (KVCache, observed). observe(layer) (layer: a static int) gives that layer's
    attention `Observer`, or None for a layer nobody watches; `observed` is the observers' own
    state, threaded through untouched by the cache (None without observers).
    """
    read = cache_reader(positions, chunk, observe)

    def attend(layer: int, q, k, v, state):
        cache, observed = state
        rows = jnp.arange(q.shape[0])
        keys = cache.keys[layer].at[rows, :, :, positions].set(k[:, 0], mode="promise_in_bounds")
        values = cache.values[layer].at[rows, :, positions].set(v[:, 0], mode="promise_in_bounds")
        out, observed = read(layer, q, keys, values, observed)
        cache = KVCache(
            cache.keys[:layer] + (keys,) + cache.keys[layer + 1 :],
            cache.values[:layer] + (values,) + cache.values[layer + 1 :],
        )
        return out, (cache, observed)

    return attend


def cache_reader(
    positions: jax.Array,
    chunk: int,
    observe: Callable[[int], Observer | None] | None = None,
) -> Callable[[int, jax.Array, Any, Any, Any], tuple[jax.Array, Any]]:
    """Decode attention over a cache already holding the new token, shared by the dense and
    the paged cache: read(layer, q, keys, values, observed) -> (out, observed).

    q [R, 1, Hq, D]; keys, values in the cache layout ([R, Hkv, D, S], [R, Hkv, S, D]) or
    readers of those shapes (paged_cache.PagedReader); row r sees slots [0, positions[r]],
    read `chunk` slots at a time, none past the furthest row's position.
    """
    mask = cache_mask(positions)
    limit = jnp.max(positions) + 1

    def read(layer: int, q, keys, values, observed):
        observer = None if observe is None else observe(layer)
        return attention(
            q,
            keys,
            values,
            mask,
            key_chunk=chunk,
            key_limit=limit,
            cache_layout=True,
            observer=observer,
            observed=observed,
        )

    return read
