"""The compiled halves of continuous batching: admission (prefill into slots) and decode chunks.

B slots decode together. Each slot holds one row (request i, sample s) or nothing; scheduler.py
decides which, between device calls:

    admit(state, Admission)   prefill the admitted rows' contexts [A_ctx, C] once, write their
                              pages (paged_cache.py), choose each row's token 0, reset the rows'
                              slot state (and FCI state)
    decode_chunk(state, K)    a while_loop of at most K steps: feed every slot's last token,
                              choose its next one; rows stop at an EOS id or their budget. Ends
                              early once `target` slots are finished (rows wait for them).

On a mesh with S = data x fsdp > 1 batch shards, both run per shard (jax.shard_map over the
batch axes, `tensor` left automatic): slots B split into S blocks of B/S, and the pool into S
blocks of N/S pages, so shard k's slots read and write only shard k's pages, named by local page
ids (pages.py keeps one page table per shard). The page gather stays on the device; the only
collective across shards is the sum of finished slots that ends a chunk early.

A slot's row keeps its own token counter, so token t of row (i, s) is drawn with
fold_in(fold_in(fold_in(key(seed), i), s), t), as in the lock-step sampler: what a row generates
does not depend on its slot, its neighbours or when it was admitted.

With a `DecodeWatch` that feeds the last token (FCI), a finished row stays one more step to feed
its last token, as the lock-step loop's extra forward does; `finished` says when a slot can be
harvested.

Static (a new value compiles a new program): the model config, SamplerConfig, the FCI option,
K, and the shapes: slots B, pages per slot M, pool pages N, admission rows A, contexts A_ctx and
context length C (all from buckets). Everything else is traced.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from attnrl_jax.models import sharding
from attnrl_jax.models.config import ModelConfig
from attnrl_jax.models.lm import Params, forward_hidden, logits_from_hidden
from attnrl_jax.sampling import fci_decode
from attnrl_jax.sampling.cache import KVCache
from attnrl_jax.sampling.fci_decode import DecodeFci
from attnrl_jax.sampling.paged_cache import (
    chunk_size,
    constrain_pool,
    constrain_shards,
    empty_pool,
    paged_decode_attend,
    paged_prefill_attend,
)
from attnrl_jax.sampling.sampler import DecodeWatch, NoWatch, SamplerConfig
from attnrl_jax.sampling.token_choice import SamplingParams, choose_tokens


class Slots(NamedTuple):
    """Per-slot row state, each [B]. An empty slot is done with num = fed = 0."""

    token: jax.Array  # int32: the last chosen token (fed next)
    length: jax.Array  # int32: context length (response token t sits at position length + t)
    num: jax.Array  # int32: tokens chosen so far
    fed: jax.Array  # int32: response tokens fed so far (num - 1 or num)
    budget: jax.Array  # int32: most tokens the row may choose
    done: jax.Array  # bool: chooses no more tokens (EOS, budget, or empty)
    request_index: jax.Array  # int32 } the row's random stream (see the module docstring)
    sample_index: jax.Array  # int32 }
    sampling: SamplingParams


class EngineState(NamedTuple):
    slots: Slots
    pool: KVCache  # paged_cache.py
    watched: Any  # the DecodeWatch's per-slot state (None without one)


class Admission(NamedTuple):
    """Rows entering slots; padding rows have slot = B (their writes are dropped)."""

    contexts: jax.Array  # [A_ctx, C] int32, right-padded
    context_lengths: jax.Array  # [A_ctx] int32, >= 1
    source: jax.Array  # [A] int32: the context each row continues
    slot: jax.Array  # [A] int32
    writes: jax.Array  # [A, C] bool: context positions the row writes (paged_cache.py)
    budget: jax.Array  # [A] int32
    request_index: jax.Array  # [A] int32
    sample_index: jax.Array  # [A] int32
    sampling: SamplingParams  # [A] each


class Call(NamedTuple):
    """Per-call constants, replicated."""

    seed: jax.Array  # [] int32
    eos_ids: jax.Array  # [E] int32, padded with -1
    separators: jax.Array | None  # [V] bool (only with FCI)


def make_watch(cfg: ModelConfig, fci: DecodeFci | None, call: Call) -> DecodeWatch:
    if fci is None:
        return NoWatch()
    return fci_decode.FciWatch(
        fci, call.separators, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads
    )


def _keys(seed, request_index, sample_index, token_index) -> jax.Array:
    """uniform [B]: row (request, sample)'s draw for its token `token_index`."""
    base = jax.random.key(seed)

    def one(request, sample, t):
        key = jax.random.fold_in(jax.random.fold_in(base, request), sample)
        return jax.random.uniform(jax.random.fold_in(key, t))

    return jax.vmap(one)(request_index, sample_index, token_index)


def _stops(token, count, budget, eos_ids) -> jax.Array:
    return jnp.any(token[:, None] == eos_ids[None, :], axis=-1) | (count >= budget)


@functools.partial(
    jax.jit,
    static_argnames=("cfg", "config", "slots", "num_pages", "page_size", "cache_length", "fci"),
)
def empty_state(
    call: Call,
    cfg: ModelConfig,
    config: SamplerConfig,
    slots: int,
    num_pages: int,
    page_size: int,
    cache_length: int,
    fci: DecodeFci | None,
) -> EngineState:
    """Every slot empty; a zeroed pool of num_pages pages (all shards' together); cache_length
    = M * page_size."""
    zeros = jnp.zeros((slots,), jnp.int32)
    empty = Slots(
        zeros,
        zeros,
        zeros,
        zeros,
        zeros,
        jnp.ones((slots,), bool),
        zeros,
        zeros,
        SamplingParams(jnp.zeros((slots,), jnp.float32), jnp.ones((slots,), jnp.float32), zeros),
    )
    pool = empty_pool(
        cfg.num_layers, num_pages, cfg.num_kv_heads, cfg.head_dim, page_size, cfg.compute_dtype
    )
    watched = make_watch(cfg, fci, call).initial(slots, cache_length, zeros)
    if config.batch_shards > 1:  # created in place: no device ever holds the whole pool
        return constrain_shards(EngineState(empty, pool, watched), config.mesh, config.rules)
    return EngineState(empty, constrain_pool(pool, config.mesh, config.rules), watched)


def _put(old, new, slot):
    """new's rows [A, ...] written into old's slots (rows with slot = B are dropped)."""
    return jax.tree.map(lambda o, n: o.at[slot].set(n, mode="drop"), old, new)


def _batch_axes(config: SamplerConfig) -> tuple[str, ...]:
    return tuple(a for a in sharding.BATCH_AXES if a in config.mesh.axis_names)


def _per_shard(body, config: SamplerConfig, in_specs, out_specs):
    """`body` run on each batch shard's block of the [B]- or [A]-leading arguments (specs:
    True for those, False for the replicated ones); `tensor` stays automatic."""
    axes = _batch_axes(config)

    def spec(split):
        return PartitionSpec(axes) if split else PartitionSpec()

    return jax.shard_map(
        body,
        mesh=config.mesh,
        in_specs=jax.tree.map(spec, in_specs),
        out_specs=jax.tree.map(spec, out_specs),
        axis_names=set(axes),
        # The decoder's loops start carries from constants (token_choice's bisection, the
        # attention's running softmax): with varying-axis checks each would need a pcast.
        # Replicated outputs (steps run) are equal on every shard by construction (psum).
        check_vma=False,
    )


@functools.partial(jax.jit, static_argnames=("cfg", "config", "fci"), donate_argnames=("state",))
def admit(
    params: Params,
    state: EngineState,
    batch: Admission,
    table: jax.Array,
    call: Call,
    cfg: ModelConfig,
    config: SamplerConfig,
    fci: DecodeFci | None,
) -> tuple[EngineState, jax.Array, jax.Array]:
    """Prefills the admitted rows into their slots: (state, token 0 [A], its log-prob [A]).

    params: layers unstacked (`lm.unstack_layers`). table [B, M] int32: every slot's pages.
    With S batch shards every [A]-leading field of `batch` is S blocks, one per shard, whose
    `source` and `slot` are local to the block (slot B/S: padding), and table's page ids are
    local to each slot's shard.
    """
    if config.batch_shards == 1:
        return _admit(params, state, batch, table, call, cfg, config, fci, manual=False)

    def body(params, state, batch, table, call):
        return _admit(params, state, batch, table, call, cfg, config, fci, manual=True)

    run = _per_shard(body, config, (False, True, True, True, False), (True, True, True))
    return run(params, state, batch, table, call)


def _admit(params, state, batch, table, call, cfg, config, fci, manual: bool):
    slots, pages_per_slot = table.shape
    contexts = batch.contexts
    length = contexts.shape[1]
    chunk = config.query_chunk if config.query_chunk and config.query_chunk < length else None
    positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), contexts.shape)
    rows_table = table[jnp.minimum(batch.slot, slots - 1)]
    attend = paged_prefill_attend(batch.source, rows_table, batch.writes, chunk)
    hidden, pool = forward_hidden(params, cfg, contexts, positions, attend, state.pool)
    if not manual:
        pool = constrain_pool(pool, config.mesh, config.rules)
    last = jnp.take_along_axis(hidden, (batch.context_lengths - 1)[:, None, None], axis=1)
    logits = logits_from_hidden(params, last[batch.source, 0])
    zero = jnp.zeros_like(batch.budget)
    u = _keys(call.seed, batch.request_index, batch.sample_index, zero)
    token, logprob = choose_tokens(logits, batch.sampling, u)
    lengths = batch.context_lengths[batch.source]
    rows = Slots(
        token,
        lengths,
        zero + 1,
        zero,
        batch.budget,
        _stops(token, 1, batch.budget, call.eos_ids),
        batch.request_index,
        batch.sample_index,
        batch.sampling,
    )
    watched = state.watched
    if fci is not None:
        cache_length = pages_per_slot * pool.keys[0].shape[-1]
        fresh = make_watch(cfg, fci, call).initial(lengths.shape[0], cache_length, lengths)
        watched = _put(watched, fresh, batch.slot)
    return EngineState(_put(state.slots, rows, batch.slot), pool, watched), token, logprob


def finished(slots: Slots, feeds_last: bool) -> jax.Array:
    """[B] bool: slots whose row is complete (or that are empty)."""
    if feeds_last:
        return slots.done & (slots.fed == slots.num)
    return slots.done


class ChunkResult(NamedTuple):
    tokens: jax.Array  # [B, K] int32: step j's token of each slot that chose one (else 0)
    logprobs: jax.Array  # [B, K] float32
    fci: jax.Array | None  # [B, S_max] float32, the watch's result (only with FCI)
    steps: jax.Array | None = None  # [] int32: steps run


@functools.partial(
    jax.jit, static_argnames=("cfg", "config", "steps", "fci"), donate_argnames=("state",)
)
def decode_chunk(
    params: Params,
    state: EngineState,
    table: jax.Array,
    target: jax.Array,
    call: Call,
    cfg: ModelConfig,
    config: SamplerConfig,
    steps: int,
    fci: DecodeFci | None,
) -> tuple[EngineState, ChunkResult]:
    """At most `steps` (K) decode steps of every slot; ends early once `target` ([] int32)
    slots are finished. params: layers unstacked; table [B, M] int32 (page ids local to each
    slot's batch shard)."""
    if config.batch_shards == 1:
        return _decode(params, state, table, target, call, cfg, config, steps, fci, None)

    def body(params, state, table, target, call):
        axes = _batch_axes(config)
        return _decode(params, state, table, target, call, cfg, config, steps, fci, axes)

    outs = (True, ChunkResult(True, True, True, False))
    run = _per_shard(body, config, (False, True, True, False, False), outs)
    return run(params, state, table, target, call)


def _decode(params, state, table, target, call, cfg, config, steps, fci, axes):
    """decode_chunk's body; axes: the batch axes it runs manual over (None: not sharded)."""
    slots_count, pages_per_slot = table.shape
    page_size = state.pool.keys[0].shape[-1]
    cache_length = pages_per_slot * page_size
    chunk = chunk_size(pages_per_slot, page_size, config.attention_chunk)
    ragged = None
    if config.decode_attention == "ragged":  # items of whole pages, a block of one per slot
        ragged = (chunk_size(pages_per_slot, page_size, config.ragged_chunk), slots_count)
    watch = make_watch(cfg, fci, call)
    feeds_last = watch.feeds_last

    def running(carry):
        j, state, _ = carry
        done = jnp.sum(finished(state.slots, feeds_last))
        if axes is not None:  # every shard stops at the same step
            done = jax.lax.psum(done, axes)
        return (j < steps) & (done < target)

    def step(carry):
        j, state, out = carry
        s = state.slots
        feeding = s.fed < s.num  # the last chosen token is new to the cache
        if not feeds_last:
            feeding = feeding & ~s.done  # a finished row's last token is never needed
        positions = jnp.clip(s.length + s.num - 1, 0, cache_length - 1)
        watched, observe = watch.begin(state.watched, positions, feeding)
        attend = paged_decode_attend(table, positions, feeding, chunk, observe, ragged)
        hidden, (pool, watched) = forward_hidden(
            params, cfg, s.token[:, None], positions[:, None], attend, (state.pool, watched)
        )
        watched = watch.end(watched, s.token, feeding)
        if axes is None:
            pool = constrain_pool(pool, config.mesh, config.rules)
        logits = logits_from_hidden(params, hidden[:, 0])
        u = _keys(call.seed, s.request_index, s.sample_index, s.num)
        token, logprob = choose_tokens(logits, s.sampling, u)
        live = ~s.done
        out = ChunkResult(
            out.tokens.at[:, j].set(jnp.where(live, token, 0)),
            out.logprobs.at[:, j].set(jnp.where(live, logprob, 0.0)),
            None,
        )
        num = s.num + live
        s = s._replace(
            token=jnp.where(live, token, s.token),
            num=num,
            fed=jnp.where(feeding, s.num, s.fed),
            done=s.done | (live & _stops(token, num, s.budget, call.eos_ids)),
        )
        return j + 1, EngineState(s, pool, watched), out

    empty = ChunkResult(
        jnp.zeros((slots_count, steps), jnp.int32),
        jnp.zeros((slots_count, steps), jnp.float32),
        None,
    )
    steps_run, state, out = jax.lax.while_loop(running, step, (jnp.int32(0), state, empty))
    return state, out._replace(fci=watch.result(state.watched), steps=steps_run)
