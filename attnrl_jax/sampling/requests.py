"""Requests in, samples out: the host side of the sampler.

A call mixes two kinds of requests (ALGORITHM.md section 7): a prompt sampled n times, and a
prompt plus response prefix continued n times. Both are a context and a sample count; the
context is prefilled once and fanned out to its n rows. Requests are grouped by context length
into device batches of at most `Buckets.max_rows` rows, padded to bucket sizes, and run by
`sampler.sample_batch`; samples come back in request order.

Row (request i, sample s) draws from the random stream (seed, Request.index or i, s), so its
tokens do not depend on which other requests share the call or how they were batched.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
from jax.sharding import NamedSharding, PartitionSpec, Sharding, SingleDeviceSharding

from attnrl_jax.models.config import ModelConfig
from attnrl_jax.models.lm import Params
from attnrl_jax.models.transfer import replicated_to_device, rows_to_device, to_host
from attnrl_jax.sampling import scheduler
from attnrl_jax.sampling.fci_decode import SamplerFci
from attnrl_jax.sampling.fci_rows import FciBuffer, FciRow
from attnrl_jax.sampling.sampler import DeviceBatch, SamplerConfig, sample_batch
from attnrl_jax.sampling.scheduler import EngineStats, RawRow
from attnrl_jax.sampling.token_choice import SamplingParams


@dataclasses.dataclass(frozen=True)
class Request:
    """n samples continuing prompt_ids + prefix_ids (prefix: response tokens, may be empty).

    max_new_tokens: this request's budget (default: the call's). index: its random-stream
    identity (default: its position in the call).
    """

    prompt_ids: Sequence[int]
    prefix_ids: Sequence[int] = ()
    n: int = 1
    max_new_tokens: int | None = None
    index: int | None = None


@dataclasses.dataclass(frozen=True)
class SamplingOptions:
    """Per-call settings; all of them reach the compiled program as arrays (no recompiling),
    except that max_new_tokens picks a length bucket.

    temperature 0 is greedy; top_p 1 and top_k 0 turn those filters off. eos_ids: generation of
    a row stops after any of them (empty: only the budget stops it). fci: also compute the FCI
    of every fresh sample while decoding (`Sample.fci`; see fci_decode.py); its settings and
    max_steps are static (part of the compiled program).
    """

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    eos_ids: tuple[int, ...] = ()
    fci: SamplerFci | None = None

    def check(self, config: SamplerConfig) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.seed < 2**31:
            raise ValueError(f"seed must be in [0, 2**31), got {self.seed}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0: off), got {self.top_k}")
        if len(self.eos_ids) > config.max_eos_ids:
            raise ValueError(
                f"{len(self.eos_ids)} EOS ids, more than SamplerConfig.max_eos_ids="
                f"{config.max_eos_ids}"
            )
        if self.fci is not None and not isinstance(self.fci, SamplerFci):
            raise TypeError(f"SamplingOptions.fci must be a SamplerFci, got {type(self.fci)}")


@dataclasses.dataclass(frozen=True, init=False)
class Sample:
    """One generated row: tokens after the context, their log-probs (see token_choice.py).

    With SamplingOptions.fci, `fci` is its per-step FCI float32[S + 1] (step 0 = prompt), as
    the scoring forward returns it; None without the option, for continuations, and for
    responses the decode loop cannot score exactly (no "\\n\\n" separator, or too many steps):
    score those with scoring.forward.score_sequences. The native sampler keeps the FCI of a
    call on the device (`fci_row`: its row of the call's fci_rows.CallFci); reading `fci` makes
    the call's one host copy. An engine may pass a host array as `fci` instead.
    """

    request: int  # position of its request in the call
    sample: int  # 0 .. n-1
    token_ids: np.ndarray  # [T] int32
    logprobs: np.ndarray  # [T] float32
    finish_reason: str  # "eos" (ended with an EOS id) or "length" (budget or model limit)
    stored_fci: np.ndarray | FciRow | None

    def __init__(
        self,
        request: int,
        sample: int,
        token_ids: np.ndarray,
        logprobs: np.ndarray,
        finish_reason: str,
        fci: np.ndarray | FciRow | None = None,
    ):
        values = (request, sample, token_ids, logprobs, finish_reason, fci)
        for name, value in zip(self.__dataclass_fields__, values, strict=True):
            object.__setattr__(self, name, value)

    @property
    def fci(self) -> np.ndarray | None:
        """float32[S + 1] host FCI or None (see the class docstring)."""
        if isinstance(self.stored_fci, FciRow):
            return self.stored_fci.call.row(self.stored_fci.row)
        return self.stored_fci

    @property
    def fci_row(self) -> FciRow | None:
        """Its FCI on the device (the native sampler), None for a host array or no FCI."""
        return self.stored_fci if isinstance(self.stored_fci, FciRow) else None

    @property
    def has_fci(self) -> bool:
        """Whether `fci` is not None, without reading device FCI."""
        if isinstance(self.stored_fci, FciRow):
            return bool(self.stored_fci.call.exact[self.stored_fci.row])
        return self.stored_fci is not None


def check_request(request: Request, cfg: ModelConfig) -> list[int]:
    """The request's context (prompt + prefix), or a ValueError saying what is wrong with it."""
    if request.n < 1:
        raise ValueError(f"n must be >= 1, got {request.n}")
    if request.max_new_tokens is not None and request.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {request.max_new_tokens}")
    if len(request.prompt_ids) == 0:
        raise ValueError("the prompt is empty")
    context = [int(t) for t in request.prompt_ids] + [int(t) for t in request.prefix_ids]
    bad = [t for t in context if not 0 <= t < cfg.vocab_size]
    if bad:
        raise ValueError(f"token id {bad[0]} is outside the vocabulary [0, {cfg.vocab_size})")
    if len(context) >= cfg.max_position_embeddings:
        raise ValueError(
            f"prompt + prefix is {len(context)} tokens; the model's limit "
            f"(max_position_embeddings={cfg.max_position_embeddings}) leaves no room to generate"
        )
    return context


def sample(
    params: Params,
    cfg: ModelConfig,
    requests: Sequence[Request],
    options: SamplingOptions = SamplingOptions(),
    config: SamplerConfig | None = None,
    progress: Callable[[int], None] | None = None,
    stats: EngineStats | None = None,
) -> list[Sample]:
    """Samples every request; returns its n samples per request, in request order.

    A row's budget is its request's max_new_tokens, cut to what the model's position limit
    leaves (its finish reason is then "length"). config: static settings (default
    SamplerConfig(); its `scheduler` picks continuous batching or lock-step batches).
    progress(k) is called as k rows finish. stats: filled with the continuous engine's counts.
    """
    config = config or SamplerConfig()
    options.check(config)
    if not requests:
        return []
    contexts = []
    for i, request in enumerate(requests):
        try:
            contexts.append(check_request(request, cfg))
        except ValueError as e:
            raise ValueError(f"request {i}: {e}") from None
    budgets = [
        min(r.max_new_tokens or options.max_new_tokens, cfg.max_position_embeddings - len(c))
        for r, c in zip(requests, contexts, strict=True)
    ]
    separators, buffer = None, None
    if options.fci is not None:
        options.fci.config.layer_mask(cfg.num_layers)  # a bad layer subset fails before compiling
        separators = options.fci.separator_table(cfg.vocab_size)
        buffer = FciBuffer.for_call(
            requests, options.fci, config.buckets.max_rows, _fci_sharding(params, config)
        )
    if config.scheduler == "continuous":
        rows = scheduler.run(
            params, cfg, requests, contexts, budgets, options, config, separators, progress,
            stats, buffer,
        )  # fmt: skip
    else:
        rows = _lockstep(
            params, cfg, requests, contexts, budgets, options, config, separators, progress,
            buffer,
        )  # fmt: skip
    return _samples(rows, requests, options, cfg, buffer)


def _fci_sharding(params: Params, config: SamplerConfig) -> Sharding:
    """Where a call's FCI rows live: replicated over the mesh, or on the params' device."""
    if config.mesh is not None:
        return NamedSharding(config.mesh, PartitionSpec())
    return SingleDeviceSharding(scheduler.device_of(params, config))


def _lockstep(
    params, cfg, requests, contexts, budgets, options, config, separators, progress, buffer
) -> list[RawRow]:
    """Device batches of up to buckets.max_rows rows (longest context first), each run to its
    longest row's end by `sampler.sample_batch`; their raw FCI stays on the device (`buffer`)."""
    by_length = sorted(range(len(requests)), key=lambda i: -len(contexts[i]))
    rows = [(i, s) for i in by_length for s in range(requests[i].n)]
    raw = []
    for start in range(0, len(rows), config.buckets.max_rows):
        chunk = rows[start : start + config.buckets.max_rows]
        batch, new_tokens, cache_length = _pack(
            chunk, requests, contexts, budgets, options, config, separators
        )
        static_fci = None if options.fci is None else options.fci.static()
        result = sample_batch(params, batch, cfg, config, new_tokens, cache_length, static_fci)
        tokens, logprobs, counts = to_host((result.tokens, result.logprobs, result.num_tokens))
        if buffer is not None:
            padded = chunk + [None] * (len(counts) - len(chunk))
            buffer.add(result.fci, buffer.dest(padded))
        for r, (i, s) in enumerate(chunk):
            raw.append(RawRow(i, s, tokens[r, : counts[r]].copy(), logprobs[r, : counts[r]].copy()))
        if progress is not None:
            progress(len(chunk))
    return raw


def _samples(
    rows: list[RawRow],
    requests: Sequence[Request],
    options: SamplingOptions,
    cfg: ModelConfig,
    buffer: FciBuffer | None,
) -> list[Sample]:
    """Samples in request then sample order, with finish reasons and (with FCI) each fresh
    row's place in the call's FCI, finished on the device for every row at once."""
    rows = sorted(rows, key=lambda r: (r.request, r.sample))
    fci = [None] * len(rows)
    if buffer is not None:
        ids = {(r.request, r.sample): r.token_ids for r in rows}
        call = buffer.finish(requests, ids, options.fci, cfg.num_layers)
        fci = [
            None if (k := buffer.fresh_rows.get((r.request, r.sample))) is None else FciRow(call, k)
            for r in rows
        ]
    eos = set(options.eos_ids)
    samples = []
    for r, f in zip(rows, fci, strict=True):
        ended = len(r.token_ids) and int(r.token_ids[-1]) in eos
        reason = "eos" if ended else "length"
        samples.append(Sample(r.request, r.sample, r.token_ids, r.logprobs, reason, f))
    return samples


def _pack(
    rows: list[tuple[int, int]],
    requests: Sequence[Request],
    contexts: list[list[int]],
    budgets: list[int],
    options: SamplingOptions,
    config: SamplerConfig,
    separators: np.ndarray | None = None,
) -> tuple[DeviceBatch, int, int]:
    """One device batch for rows (request, sample), padded to buckets; plus M and S."""
    buckets, shards = config.buckets, config.batch_shards
    used = list(dict.fromkeys(i for i, _ in rows))  # each context once, in row order
    slot = {i: p for p, i in enumerate(used)}
    num_contexts = buckets.fit_rows(len(used), shards)
    num_rows = buckets.fit_rows(len(rows), shards)
    context_length = buckets.fit_length(max(len(contexts[i]) for i in used))
    new_tokens = buckets.fit_length(max(budgets[i] for i in used))
    longest = max(len(contexts[i]) + budgets[i] for i in used)
    cache_length = buckets.cache_length(context_length, new_tokens, longest)

    tokens = np.zeros((num_contexts, context_length), np.int32)
    lengths = np.ones(num_contexts, np.int32)
    for p, i in enumerate(used):
        tokens[p, : len(contexts[i])] = contexts[i]
        lengths[p] = len(contexts[i])
    row_arrays = np.zeros((4, num_rows), np.int32)  # source, budget, request index, sample
    for r, (i, s) in enumerate(rows):
        index = i if requests[i].index is None else requests[i].index
        row_arrays[:, r] = slot[i], budgets[i], index, s
    eos = np.full(config.max_eos_ids, -1, np.int32)
    eos[: len(options.eos_ids)] = options.eos_ids

    batch = DeviceBatch(
        contexts=tokens,
        context_lengths=lengths,
        source=row_arrays[0],
        budget=row_arrays[1],
        request_index=row_arrays[2],
        sample_index=row_arrays[3],
        sampling=SamplingParams.same_for(
            num_rows, options.temperature, options.top_p, options.top_k
        ),
        seed=np.int32(options.seed),
        eos_ids=eos,
        separators=separators,
    )
    return _place(batch, config), new_tokens, cache_length


def _place(batch: DeviceBatch, config: SamplerConfig) -> DeviceBatch:
    """Device arrays: rows (and contexts, padded to a multiple of the shards) split over the
    batch axes; the seed, EOS ids and separator table replicated."""
    shared = (batch.seed, batch.eos_ids, batch.separators)
    placed = rows_to_device(batch._replace(seed=None, eos_ids=None, separators=None), config.mesh)
    seed, eos_ids, separators = replicated_to_device(shared, config.mesh)
    return placed._replace(seed=seed, eos_ids=eos_ids, separators=separators)
