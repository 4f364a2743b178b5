"""The host loop of continuous batching: slots, admission, page growth and harvest.

    while rows wait or slots are live:
        admit waiting rows into free slots (pages: the shared context pages, private pages for
            the next K tokens, the rest of the row's worst case reserved) -> continuous.admit
        grow every live row's pages to cover its next K tokens
        run one decode chunk of at most K steps                -> continuous.decode_chunk
        read the chunk's tokens back; finished rows become raw results, their pages return

One device->host read per chunk (its tokens, log-probs, the slots' counters, FCI of finished
rows); nothing per token. Rows are admitted longest budget first (the long rows start early
and the short ones fill the gaps), the n samples of a request together where slots allow.
Rows wait when the page pool cannot promise their worst case (SamplerConfig.kv_pages).
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
from attnrl_jax.sampling.pages import PageTable
from attnrl_jax.sampling.sampler import SamplerConfig
from attnrl_jax.sampling.token_choice import SamplingParams


@dataclasses.dataclass
class EngineStats:
    """Counts of one call (no timings): for utilisation and KV-memory reports.

    slot_steps: decode steps x slots; token_steps: tokens chosen in decode steps (useful
    work); chunks: decode chunks run; peak_pages: most pages allocated at once (x page_size
    = positions of KV memory); peak_needed: most positions the live rows needed at once (their
    tokens, each request's context once); worst_ratio: max over chunk ends of allocated /
    needed positions; leaked_pages: pages still allocated after the call.
    """

    page_size: int = 0
    slot_steps: int = 0
    token_steps: int = 0
    chunks: int = 0
    peak_pages: int = 0
    peak_needed: int = 0
    worst_ratio: float = 0.0
    leaked_pages: int = 0

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
    fci: np.ndarray | None  # [S_max] raw watch result (with FCI)


_unstack = jax.jit(unstack_layers)


def slot_count(config: SamplerConfig) -> int:
    return round_up(config.buckets.max_rows, config.batch_shards)


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
) -> list[RawRow]:
    """Generates every row of `requests` (validated: contexts and budgets per request) in
    config.buckets.max_rows slots; returns the rows in the order they finished."""
    slots, page_size, steps = slot_count(config), config.page_size, config.decode_chunk
    totals = [len(c) + b for c, b in zip(contexts, budgets, strict=True)]
    cache_length = round_up(config.buckets.fit_length(max(totals)), page_size)
    per_slot = cache_length // page_size
    num_pages = config.kv_pages or slots * per_slot + 1
    pages = PageTable(num_pages, page_size, slots, per_slot)
    for i, (context, total) in enumerate(zip(contexts, totals, strict=True)):
        worst = pages.cost(i, len(context), total)
        if worst > num_pages - 1:
            raise ValueError(
                f"request {i}: needs {worst} KV pages of {page_size} positions; "
                f"SamplerConfig.kv_pages={num_pages} holds {num_pages - 1}"
            )
    stats = stats if stats is not None else EngineStats()
    stats.page_size = page_size
    static_fci = None if options.fci is None else options.fci.static()
    eos = np.full(config.max_eos_ids, -1, np.int32)
    eos[: len(options.eos_ids)] = options.eos_ids
    device = _device_of(params, config)
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
        for b in range(slots):
            if not waiting:
                break
            if rows[b] is not None:
                continue
            i, s = waiting[0]
            context = len(contexts[i])
            if pages.cost(i, context, totals[i]) > pages.available:
                break  # wait for pages (first come, first served)
            waiting.popleft()
            shared, new = pages.shared_pages(i, context)
            pages.admit(b, shared, context, totals[i], steps + 1)
            left[i] -= 1
            if left[i] == 0:
                pages.drop_request(i)
            rows[b], count[b] = (i, s), 0
            admitted.append((b, i, s, 0 if new else len(shared) * page_size))
        if not admitted and not any(r is not None for r in rows):
            # Cannot happen: with no live row every page is free but the head request's own
            # shared pages, and its worst case was checked against the pool above.
            raise RuntimeError(f"no slot could take request {waiting[0][0]} with every slot free")
        first = None
        if admitted:
            batch = _admission(admitted, requests, contexts, budgets, options, config, slots)
            batch = _rows(batch, config, device)
            table = _shared(pages.table, config, device)
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
        table, target = _shared((pages.table, np.int32(target)), config, device)
        state, out = continuous.decode_chunk(
            params, state, table, target, call, cfg, config, steps, static_fci
        )
        s = state.slots
        host = to_host((out, s.num, s.done, s.fed, first))
        (chunk_tokens, chunk_logprobs, raw_fci, steps_run), num, done, fed, first = host
        if admitted:
            for a, (b, *_) in enumerate(admitted):
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
        for b in np.flatnonzero(complete):
            i, sample = rows[b]
            ids = np.concatenate(tokens[b]).astype(np.int32)
            lps = np.concatenate(logprobs[b]).astype(np.float32)
            fci = None if raw_fci is None else raw_fci[b].copy()
            results.append(RawRow(i, sample, ids, lps, fci))
            pages.release(b)
            rows[b], tokens[b], logprobs[b] = None, [], []
        if progress is not None and complete.any():
            progress(int(complete.sum()))
    stats.peak_pages = max(stats.peak_pages, pages.peak)
    stats.leaked_pages = pages.in_use
    return results


def _count_memory(stats: EngineStats, pages: PageTable, rows, contexts, count) -> None:
    """Allocated vs needed KV positions at this chunk's end (before finished rows leave);
    needed: each live row's tokens plus its request's context once."""
    live = [(b, row[0]) for b, row in enumerate(rows) if row is not None]
    needed = sum(int(count[b]) for b, _ in live)
    needed += sum(len(contexts[i]) for i in {i for _, i in live})
    allocated = pages.in_use * pages.page_size
    stats.peak_needed = max(stats.peak_needed, needed)
    if needed:
        stats.worst_ratio = max(stats.worst_ratio, allocated / needed)


def _admission(admitted, requests, contexts, budgets, options, config, slots) -> Admission:
    """The padded admission batch of rows (slot, request, sample, first written position).

    Its row and context counts are powers of two up to the slot count (not Buckets.rows,
    which sizes lock-step batches and the slot count), so admitting a few rows prefills a few
    contexts: programs per context-length bucket are at most (log2 B + 1)(log2 B + 2) / 2."""
    buckets, shards = config.buckets, config.batch_shards

    def fit(n):  # powers of two: a few rows admitted prefill a few contexts, not every slot's
        return min(slots, round_up(power_of_two(n), shards))

    used = list(dict.fromkeys(i for _, i, _, _ in admitted))
    where = {i: p for p, i in enumerate(used)}
    num_contexts, num_rows = fit(len(used)), fit(len(admitted))
    length = smallest_fit(buckets.lengths, max(len(contexts[i]) for i in used), "lengths")
    tokens = np.zeros((num_contexts, length), np.int32)
    lengths = np.ones(num_contexts, np.int32)
    for p, i in enumerate(used):
        tokens[p, : len(contexts[i])] = contexts[i]
        lengths[p] = len(contexts[i])
    ints = np.zeros((5, num_rows), np.int32)  # source, slot, budget, request index, sample
    ints[1] = slots  # padding rows: dropped
    writes = np.zeros((num_rows, length), bool)
    for a, (b, i, s, start) in enumerate(admitted):
        index = i if requests[i].index is None else requests[i].index
        ints[:, a] = where[i], b, budgets[i], index, s
        writes[a, start : len(contexts[i])] = True

    def per_row(value, dtype):
        return np.full(num_rows, value, dtype)

    batch = Admission(
        contexts=tokens,
        context_lengths=lengths,
        source=ints[0],
        slot=ints[1],
        writes=writes,
        budget=ints[2],
        request_index=ints[3],
        sample_index=ints[4],
        sampling=SamplingParams(
            per_row(options.temperature, np.float32),
            per_row(options.top_p, np.float32),
            per_row(options.top_k, np.int32),
        ),
    )
    return batch


def _device_of(params: Params, config: SamplerConfig):
    """Without a mesh: the params' device, so every argument is committed to it (a program is
    cached per committed/uncommitted argument pattern: mixing them compiles twice)."""
    if config.mesh is not None:
        return None
    return next(iter(jax.tree.leaves(params)[0].devices()))


def _shared(tree, config: SamplerConfig, device):
    if device is None:
        return replicated_to_device(tree, config.mesh)
    return jax.device_put(tree, device)


def _rows(tree, config: SamplerConfig, device):
    if device is None:
        return rows_to_device(tree, config.mesh)
    return jax.device_put(tree, device)
