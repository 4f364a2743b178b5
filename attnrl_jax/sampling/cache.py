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

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding

from attnrl_jax.models import sharding
from attnrl_jax.models.attention import MASK_VALUE, Attend, causal_attend
from attnrl_jax.sampling.fci_decode import add_layer, step_mass

CACHE_AXES = ("batch", "kv_heads", None, None)  # logical axes of keys and values alike


class KVCache(NamedTuple):
    keys: tuple[jax.Array, ...]  # per layer [R, Hkv, D, S]
    values: tuple[jax.Array, ...]  # per layer [R, Hkv, S, D]


def constrain(cache: KVCache, mesh: Mesh | None, rules: sharding.Rules) -> KVCache:
    """Pins the cache's sharding on `mesh` (a no-op without one)."""
    if mesh is None:
        return cache

    def pin(x):
        spec = sharding.spec_for(CACHE_AXES, x.shape, mesh, rules)
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


class StepMass(NamedTuple):
    """What `decode_attend` needs to also sum each counted layer's attention row by key step
    (see fci_decode.py). Built inside the decode step; not a jit argument."""

    slot_steps: jax.Array  # [R, S] int32, nondecreasing along S
    fed: jax.Array  # [R] bool: rows whose query counts
    max_steps: int  # S_max (static)
    layers: tuple[int, ...]  # counted layers (static), in the order of the state's tuple


def decode_attend(positions: jax.Array, chunk: int, mass: StepMass | None = None) -> Attend:
    """One new token per row: writes its k/v into slot positions[r] of row r, then attends
    over slots [0, positions[r]]. q, k, v [R, 1, H, D]; positions [R] int32 (in range).

    Slots are read in chunks (chunk divides the cache length), and only up to the chunk of the
    furthest row: early in a long generation most of the cache is not read at all. (A chunk is
    copied before use, so a cache of one chunk, read whole, is cheapest when it is short.)

    With `mass`, the state is (KVCache, per counted layer [R, H, S_max] float32) and each
    counted layer adds its attention row, summed by key step, for the rows in mass.fed.
    """

    def attend(layer: int, q, k, v, state):
        cache, current = (state, None) if mass is None else state
        rows = jnp.arange(q.shape[0])
        keys = cache.keys[layer].at[rows, :, :, positions].set(k[:, 0], mode="promise_in_bounds")
        values = cache.values[layer].at[rows, :, positions].set(v[:, 0], mode="promise_in_bounds")
        r, _, hq, d = q.shape
        qg = q.reshape(r, keys.shape[1], hq // keys.shape[1], d)
        counted = mass is not None and layer in mass.layers
        steps = mass if counted else None
        out, step_sums = _attend_chunks(qg, keys, values, positions, chunk, steps)
        cache = KVCache(
            cache.keys[:layer] + (keys,) + cache.keys[layer + 1 :],
            cache.values[:layer] + (values,) + cache.values[layer + 1 :],
        )
        out = out.astype(q.dtype).reshape(r, 1, hq, d)
        if mass is None:
            return out, cache
        if counted:
            i = mass.layers.index(layer)
            added = add_layer(current[i], step_sums, mass.fed)
            current = current[:i] + (added,) + current[i + 1 :]
        return out, (cache, current)

    return attend


def _attend_chunks(qg, keys, values, positions, chunk: int, mass: StepMass | None = None):
    """Softmax attention [R, Hkv, G, D] (float32) of qg [R, Hkv, G, D] over the slots
    [0, positions[r]] of keys [R, Hkv, D, S] and values [R, Hkv, S, D], one chunk of slots at a
    time with a running (online) softmax, skipping the chunks past every row's position.

    Also returns, with `mass`, the attention probabilities summed by key step [R, Hkv, G, S_max]
    (rescaled with the running softmax like the values), else None.
    """
    scale = qg.shape[-1] ** -0.5

    def step(j, carry):
        peak, total, acc, by_step = carry
        start = j * chunk
        k = jax.lax.dynamic_slice_in_dim(keys, start, chunk, axis=3)
        v = jax.lax.dynamic_slice_in_dim(values, start, chunk, axis=2)
        scores = jnp.einsum("rhgd,rhds->rhgs", qg, k, preferred_element_type=jnp.float32)
        visible = start + jnp.arange(chunk)[None, :] <= positions[:, None]
        scores = jnp.where(visible[:, None, None, :], scores * scale, MASK_VALUE)
        new_peak = jnp.maximum(peak, jnp.max(scores, axis=-1))
        probs = jnp.exp(scores - new_peak[..., None])
        shrink = jnp.exp(peak - new_peak)
        total = total * shrink + jnp.sum(probs, axis=-1)
        update = jnp.einsum(
            "rhgs,rhsd->rhgd", probs.astype(v.dtype), v, preferred_element_type=jnp.float32
        )
        if mass is not None:
            slots = jax.lax.dynamic_slice_in_dim(mass.slot_steps, start, chunk, axis=1)
            by_step = by_step * shrink[..., None] + step_mass(probs, slots, mass.max_steps)
        return new_peak, total, acc * shrink[..., None] + update, by_step

    stats = qg.shape[:-1]
    init = (
        jnp.full(stats, MASK_VALUE, jnp.float32),  # slot 0 is visible to every row
        jnp.zeros(stats, jnp.float32),
        jnp.zeros(qg.shape, jnp.float32),
        None if mass is None else jnp.zeros((*stats, mass.max_steps), jnp.float32),
    )
    if chunk == keys.shape[-1]:
        _, total, acc, by_step = step(0, init)
    else:
        needed = jnp.max(positions) // chunk + 1
        _, total, acc, by_step = jax.lax.fori_loop(0, needed, step, init)
    out = acc / total[..., None]
    return out, None if by_step is None else by_step / total[..., None]
