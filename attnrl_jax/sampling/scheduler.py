"""The host loop of continuous batching: slots, admission, page growth and harvest.

    while rows wait or slots are live:
        admit waiting rows into free slots (pages: the shared context pages, private pages for
            the next K tokens, the rest of the row's worst case reserved) -> continuous.admit
        grow every live row's pages to cover its next K tokens
        run one decode chunk of at most K steps                -> continuous.decode_chunk
        read the chunk's tokens back; finished rows become raw results, their pages return

One device->host read per chunk (its tokens, log-probs and the slots' counters: the host's
bookkeeping and the Samples' host arrays); nothing per token. With FCI, the raw FCI of the
chunk's finished fresh rows stays on the device: one jitted scatter into the call's buffer
(fci_rows.py), indexed by a small host array. Rows are admitted longest budget first (the long
rows start early and the short ones fill the gaps), the n samples of a request together where
slots allow. Rows wait when the page pool cannot promise their worst case (SamplerConfig.kv_pages).

On a mesh the slots and the pool split evenly over the S = data x fsdp batch shards
(shard_pages.py): a request's rows go to one shard, the one with most free pages when its
first row is admitted.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable, Sequence

import jax
import numpy as np

from attnrl_jax.buckets import power_of_two, round_up, smallest_fit
from attnrl_jax.models.config import ModelConfig
from attnrl_jax.models.lm import Params, unstack_layers
from attnrl_jax.models.transfer import replicated_to_device, rows_to_device, to_host
from attnrl_jax.sampling import continuous
from attnrl_jax.sampling.continuous import Admission, Call
from attnrl_jax.sampling.fci_rows import FciBuffer
from attnrl_jax.sampling.sampler import SamplerConfig
from attnrl_jax.sampling.shard_pages import ShardedPages
from attnrl_jax.sampling.token_choice import SamplingParams


@dataclasses.dataclass
class EngineStats:
    """Counts of one call (no timings): for utilisation and KV-memory reports.

    slots: slots the call decoded (`slot_count`); slot_steps: decode steps x slots;
    token_steps: tokens chosen in decode steps (useful work); chunks: decode chunks run;
    peak_pages: most pages allocated at once (x page_size = positions of KV memory; on a
    mesh, the sum of each batch shard's peak); peak_needed: most positions the live rows
    needed at once (their tokens, each request's context once per batch shard holding its
    rows); worst_ratio: max over chunk ends of allocated /
    needed positions; leaked_pages: pages still allocated after the call; most_admitted: most
    rows one admission prefilled in a batch shard (SamplerConfig.admit_rows caps it).
    """

    page_size: int = 0
    slots: int = 0
    slot_steps: int = 0
    token_steps: int = 0
    chunks: int = 0
    peak_pages: int = 0
    peak_needed: int = 0
    worst_ratio: float = 0.0
    leaked_pages: int = 0
    most_admitted: int = 0

    @property
    def utilisation(self) -> float:
        return self.token_steps / max(self.slot_steps, 1)


@dataclasses.dataclass(frozen=True)
class RawRow:
    """One finished row before Sample assembly (requests.py)."""

    request: int
    sample: int
    token_ids: np.ndarray  # [T] int32
    logprobs: np.ndarray  # [T] float32


_unstack = jax.jit(unstack_layers)


def slot_count(config: SamplerConfig, rows: int) -> int:
    """Slots for a call of `rows` rows: the smallest row bucket that holds them (at most
    buckets.max_rows), rounded up to whole batch shards, so a few rows decode a few slots and
    every call size reuses one of a few compiled programs."""
    buckets = config.buckets
    return buckets.fit_rows(min(max(rows, 1), buckets.max_rows), config.batch_shards)


def run(
    params: Params,
    cfg: ModelConfig,
    requests: Sequence,
    contexts: list[list[int]],
    budgets: list[int],
    options,
    config: SamplerConfig,
    separators: np.ndarray | None,
    progress: Callable[[int], None] | None = None,
    stats: EngineStats | None = None,
    fci_buffer: FciBuffer | None = None,
) -> list[RawRow]:
    """Generates every row of `requests` (validated: contexts and budgets per request) in
    `slot_count` slots; returns the rows in the order they finished. fci_buffer (with FCI): the
    call's device buffer, given each finished fresh row's raw FCI."""
    slots = slot_count(config, sum(r.n for r in requests))
    page_size, steps = config.page_size, config.decode_chunk
    shards = config.batch_shards
    totals = [len(c) + b for c, b in zip(contexts, budgets, strict=True)]
    cache_length = _cache_length(config, contexts, budgets, totals)
    per_slot = cache_length // page_size
    num_pages = config.kv_pages or slots * per_slot + shards
    pages = ShardedPages(num_pages, page_size, slots, per_slot, shards)
    for i, (context, total) in enumerate(zip(contexts, totals, strict=True)):
        worst = pages.worst(i, len(context), total)
        if worst > pages.pages_per_shard - 1:
            raise ValueError(
                f"request {i}: needs {worst} KV pages of {page_size} positions; "
                f"SamplerConfig.kv_pages={num_pages} holds {pages.pages_per_shard - 1} "
                f"per batch shard ({shards} shards)"
            )
    stats = stats if stats is not None else EngineStats()
    stats.page_size, stats.slots = page_size, slots
    static_fci = None if options.fci is None else options.fci.static()
    eos = np.full(config.max_eos_ids, -1, np.int32)
    eos[: len(options.eos_ids)] = options.eos_ids
    device = device_of(params, config)
    call = Call(*_shared((np.int32(options.seed), eos, separators), config, device))
    state = continuous.empty_state(
        call, cfg, config, slots, num_pages, page_size, cache_length, static_fci
    )
    if device is not None:
        state = jax.device_put(state, device)  # committed, like every later state
    params = _unstack(params)

    order = sorted(range(len(requests)), key=lambda i: -budgets[i])
    waiting = deque((i, s) for i in order for s in range(requests[i].n))
    left = [r.n for r in requests]
    rows: list[tuple[int, int] | None] = [None] * slots
    count = np.zeros(slots, np.int64)  # tokens read back per slot
    tokens: list[list[np.ndarray]] = [[] for _ in range(slots)]
    logprobs: list[list[np.ndarray]] = [[] for _ in range(slots)]
    results: list[RawRow] = []
    while waiting or any(r is not None for r in rows):
        admitted = []
        per_shard = np.zeros(shards, np.int64)  # rows admitted now, per batch shard
        while waiting:
            i, s = waiting[0]
            context = len(contexts[i])
            open_ = per_shard < (config.admit_rows or slots)
            free = [r is None and open_[b // (slots // shards)] for b, r in enumerate(rows)]
            b = pages.place(i, context, totals[i], free)
            if b is None:
                break  # wait for a slot or pages (first come, first served)
            waiting.popleft()
            start = pages.admit(b, i, context, totals[i], steps + 1)
            left[i] -= 1
            if left[i] == 0:
                pages.drop_request(i)
            rows[b], count[b] = (i, s), 0
            per_shard[b // (slots // shards)] += 1
            admitted.append((b, i, s, start))
        if not admitted and not any(r is not None for r in rows):
            # Cannot happen: with no live row every page is free but the head request's own
            # shared pages, and its worst case was checked against the pool above.
            raise RuntimeError(f"no slot could take request {waiting[0][0]} with every slot free")
        first = None
        stats.most_admitted = max(stats.most_admitted, int(per_shard.max()))
        if admitted:
            batch, places = _admission(
                admitted, requests, contexts, budgets, options, config, slots
            )
            batch = _rows(batch, config, device)
            table = _table(pages.table, config, device)
            state, *first = continuous.admit(
                params, state, batch, table, call, cfg, config, static_fci
            )
        fresh = {b for b, *_ in admitted}
        for b, row in enumerate(rows):
            if row is not None and b not in fresh:
                i = row[0]
                pages.grow(b, min(len(contexts[i]) + int(count[b]) + steps, totals[i]))
        free = sum(r is None for r in rows)
        target = slots if not waiting else min(slots, free + max(1, min(len(waiting), slots // 8)))
        table, target = (
            _table(pages.table, config, device),
            _shared(np.int32(target), config, device),
        )
        state, out = continuous.decode_chunk(
            params, state, table, target, call, cfg, config, steps, static_fci
        )
        s = state.slots
        host = to_host((out._replace(fci=None), s.num, s.done, s.fed, first))
        (chunk_tokens, chunk_logprobs, _, steps_run), num, done, fed, first = host
        if admitted:
            for a, (b, *_) in zip(places, admitted, strict=True):
                tokens[b] = [first[0][a : a + 1]]
                logprobs[b] = [first[1][a : a + 1]]
                count[b] = 1
        stats.chunks += 1
        live = np.array([r is not None for r in rows])
        chosen = np.where(live, num - count, 0)
        stats.token_steps += int(chosen.sum())
        stats.slot_steps += slots * int(steps_run)
        for b in np.flatnonzero(chosen):
            tokens[b].append(chunk_tokens[b, : chosen[b]])
            logprobs[b].append(chunk_logprobs[b, : chosen[b]])
        count = np.where(live, num, count)
        _count_memory(stats, pages, rows, contexts, count)
        complete = done & ((fed == num) | (static_fci is None)) & live
        if fci_buffer is not None and complete.any():  # the finished rows' raw FCI, on device
            harvested = [r if c else None for r, c in zip(rows, complete, strict=True)]
            fci_buffer.add(out.fci, fci_buffer.dest(harvested))
        for b in np.flatnonzero(complete):
            i, sample = rows[b]
            ids = np.concatenate(tokens[b]).astype(np.int32)
            lps = np.concatenate(logprobs[b]).astype(np.float32)
            results.append(RawRow(i, sample, ids, lps))
            pages.release(b)
            rows[b], tokens[b], logprobs[b] = None, [], []
        if progress is not None and complete.any():
            progress(int(complete.sum()))
    stats.peak_pages = max(stats.peak_pages, pages.peak)
    stats.leaked_pages = pages.in_use
    return results


def _cache_length(config: SamplerConfig, contexts, budgets, totals) -> int:
    """Positions per slot (M pages x P): as the lock-step sampler's cache for the same rows
    (padded context + padded budget, or a smaller length bucket holding the longest row),
    rounded up to whole pages, so decode attention reads no more than lock-step's."""
    buckets = config.buckets
    context = buckets.fit_length(max(len(c) for c in contexts))
    length = buckets.cache_length(context, buckets.fit_length(max(budgets)), max(totals))
    return round_up(length, config.page_size)


def _count_memory(stats: EngineStats, pages: ShardedPages, rows, contexts, count) -> None:
    """Allocated vs needed KV positions at this chunk's end (before finished rows leave);
    needed: each live row's tokens plus its request's context once per shard holding it."""
    live = [(b, row[0]) for b, row in enumerate(rows) if row is not None]
    needed = sum(int(count[b]) for b, _ in live)
    homes = {(b // (len(rows) // pages.shards), i) for b, i in live}  # a context per shard
    needed += sum(len(contexts[i]) for _, i in homes)
    allocated = pages.in_use * pages.page_size
    stats.peak_needed = max(stats.peak_needed, needed)
    if needed:
        stats.worst_ratio = max(stats.worst_ratio, allocated / needed)


def _admission(admitted, requests, contexts, budgets, options, config, slots):
    """(the padded admission batch, each admitted row's place in it) for the rows (slot,
    request, sample, first written position).

    With S batch shards it is S equal blocks, block k holding shard k's rows and the contexts
    they continue (source and slot local to the block and shard; padding rows: slot B/S).
    Per block, row and context counts are powers of two up to the shard's slots (not
    Buckets.rows, which sizes lock-step batches and the slot count), so admitting a few rows
    prefills a few contexts: programs per context-length bucket are at most
    (log2 B/S + 1)(log2 B/S + 2) / 2."""
    shards = config.batch_shards
    local = slots // shards
    blocks = [[a for a in admitted if a[0] // local == k] for k in range(shards)]
    used = [list(dict.fromkeys(i for _, i, _, _ in block)) for block in blocks]

    def fit(n):  # powers of two: a few rows admitted prefill a few contexts, not every slot's
        return min(local, power_of_two(max(n, 1)))

    num_contexts = fit(max(len(u) for u in used))
    num_rows = fit(max(len(block) for block in blocks))
    longest = max(len(contexts[i]) for u in used for i in u)
    length = smallest_fit(config.buckets.lengths, longest, "lengths")
    tokens = np.zeros((shards * num_contexts, length), np.int32)
    lengths = np.ones(shards * num_contexts, np.int32)
    ints = np.zeros((5, shards * num_rows), np.int32)  # source, slot, budget, request, sample
    ints[1] = local  # padding rows: dropped
    writes = np.zeros((shards * num_rows, length), bool)
    places = {}
    for k, (block, u) in enumerate(zip(blocks, used, strict=True)):
        where = {i: p for p, i in enumerate(u)}
        for p, i in enumerate(u):
            tokens[k * num_contexts + p, : len(contexts[i])] = contexts[i]
            lengths[k * num_contexts + p] = len(contexts[i])
        for j, (b, i, s, start) in enumerate(block):
            a = k * num_rows + j
            index = i if requests[i].index is None else requests[i].index
            ints[:, a] = where[i], b % local, budgets[i], index, s
            writes[a, start : len(contexts[i])] = True
            places[b] = a

    batch = Admission(
        contexts=tokens,
        context_lengths=lengths,
        source=ints[0],
        slot=ints[1],
        writes=writes,
        budget=ints[2],
        request_index=ints[3],
        sample_index=ints[4],
        sampling=SamplingParams.same_for(
            shards * num_rows, options.temperature, options.top_p, options.top_k
        ),
    )
    return batch, [places[b] for b, *_ in admitted]


def device_of(params: Params, config: SamplerConfig):
    """Without a mesh: the params' device, so every argument is committed to it (a program is
    cached per committed/uncommitted argument pattern: mixing them compiles twice)."""
    if config.mesh is not None:
        return None
    return next(iter(jax.tree.leaves(params)[0].devices()))


def _shared(tree, config: SamplerConfig, device):
    if device is None:
        return replicated_to_device(tree, config.mesh)
    return jax.device_put(tree, device)


def _table(table: np.ndarray, config: SamplerConfig, device):
    """The page table [B, M]: each shard's rows on its devices (whole on each with S = 1)."""
    if config.batch_shards == 1:
        return _shared(table, config, device)
    return _rows(table, config, device)


def _rows(tree, config: SamplerConfig, device):
    if device is None:
        return rows_to_device(tree, config.mesh)
    return jax.device_put(tree, device)
