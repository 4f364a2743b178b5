"""The compiled sampler: prefill, fan-out and the whole decode loop in one jitted program.

One call takes a padded device batch (see `requests.py` for how requests become one):

    contexts [P, C]  --prefill once-->  first logits [P], KV of every context
                     --fan out (gather by `source`)-->  R rows, each with its own length
    rows [R]         --lax.while_loop: decode one token per row per step-->  tokens [R, M]

Rows generate in lock step (token i of every row at step i), but each writes its cache at its
own position, so fresh samples and continuations of different prefixes mix in one batch. A row
stops at one of the EOS ids or at its budget; the loop ends when every row has stopped.

Attention statistics (FCI) ride along as a `DecodeWatch` (fci_decode.FciWatch): the loop has one
body and one tail, with or without them.

Static (a new value compiles a new program): the model config, `SamplerConfig`, and the padded
sizes (array shapes, M and cache length S, all from buckets). Traced (never recompiles): tokens,
lengths, budgets, temperature/top-p/top-k per row, the seed and the EOS ids.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from attnrl_jax.buckets import largest_divisor
from attnrl_jax.models import sharding
from attnrl_jax.models.config import ModelConfig
from attnrl_jax.models.lm import Params, forward_hidden, logits_from_hidden, unstack_layers
from attnrl_jax.sampling import fci_decode
from attnrl_jax.sampling.buckets import Buckets
from attnrl_jax.sampling.cache import KVCache, constrain, decode_attend, prefill_attend
from attnrl_jax.sampling.fci_decode import DecodeFci
from attnrl_jax.sampling.token_choice import SamplingParams, choose_tokens


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """Static sampler settings (hashable: part of the compiled program's identity).

    buckets: padded sizes. max_eos_ids: length of the padded EOS-id array. query_chunk:
    prefill attention processes queries in chunks of this many (memory ~ chunk x C, not C^2).
    attention_chunk: decode attention reads the cache in chunks of at most this many slots
    (the largest such divisor of S), and none past the furthest row's position.
    mesh / rules: run sharded (rows over data x fsdp, heads over tensor); None: one device.

    scheduler: "continuous" (scheduler.py: slots for the call's rows, the smallest row bucket
    up to buckets.max_rows, each taking the next waiting row when its row finishes; a paged KV
    cache) or "lockstep" (this module: device batches of
    up to buckets.max_rows rows, each run until its longest row stops; a dense cache).
    Continuous only: decode_chunk: most decode steps between two host visits (admission and
    harvest); page_size: positions per KV page; kv_pages: pages in the pool, all batch shards
    together, a multiple of batch_shards (None: enough for every slot at the call's longest
    row, plus a trash page per shard); admit_rows: most rows one admission prefills per batch
    shard (None: up to all of the shard's slots). Prefill memory grows with the rows admitted
    at once x their context length, so long continuation contexts want a small cap.
    decode_attention: "ragged" (the default; ragged_attention.py: each slot its own live
    pages, in items of ragged_chunk positions, whole pages) or "gathered" (every slot's pages
    up to the furthest slot's position, in key chunks of attention_chunk). Both are exact; on
    idle CPU runs ragged was faster on a length mix and on equal lengths (BENCHMARKS.md).
    """

    buckets: Buckets = Buckets()
    max_eos_ids: int = 8
    query_chunk: int | None = 512
    attention_chunk: int = 512
    mesh: Mesh | None = None
    rules: sharding.Rules = sharding.DEFAULT_RULES
    scheduler: str = "continuous"
    decode_chunk: int = 32
    page_size: int = 16
    kv_pages: int | None = None
    admit_rows: int | None = None
    decode_attention: str = "ragged"
    ragged_chunk: int = 64

    def __post_init__(self):
        if self.admit_rows is not None and self.admit_rows < 1:
            raise ValueError(f"admit_rows must be >= 1 or None, got {self.admit_rows}")
        chunk = self.query_chunk
        if chunk is not None and any(n > chunk and n % chunk for n in self.buckets.lengths):
            raise ValueError(f"every length bucket above query_chunk={chunk} must be a multiple")
        if self.scheduler not in ("continuous", "lockstep"):
            raise ValueError(
                f"SamplerConfig.scheduler must be continuous or lockstep, got {self.scheduler!r}"
            )
        if self.decode_attention not in ("gathered", "ragged"):
            raise ValueError(
                "SamplerConfig.decode_attention must be gathered or ragged, "
                f"got {self.decode_attention!r}"
            )
        for name in ("decode_chunk", "page_size", "ragged_chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"SamplerConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.kv_pages is not None and self.kv_pages < 2:
            raise ValueError(f"SamplerConfig.kv_pages must be >= 2 or None, got {self.kv_pages}")

    @property
    def batch_shards(self) -> int:
        """Device batches split rows over this many devices (data x fsdp)."""
        if self.mesh is None:
            return 1
        return self.mesh.shape.get("data", 1) * self.mesh.shape.get("fsdp", 1)


class DeviceBatch(NamedTuple):
    """One padded batch; every field is traced. Padding rows have budget 0."""

    contexts: jax.Array  # [P, C] int32, each context right-padded
    context_lengths: jax.Array  # [P] int32, >= 1
    source: jax.Array  # [R] int32: the context each row continues
    budget: jax.Array  # [R] int32: most tokens the row may generate
    request_index: jax.Array  # [R] int32 } a row's random stream is fold_in(fold_in(
    sample_index: jax.Array  # [R] int32 }   key(seed), request_index), sample_index)
    sampling: SamplingParams  # [R] each
    seed: jax.Array  # [] int32
    eos_ids: jax.Array  # [E] int32, padded with -1
    separators: jax.Array | None = None  # [V] bool: step-ending ids (only with FCI)


class DeviceResult(NamedTuple):
    tokens: jax.Array  # [R, M] int32; entries past num_tokens are 0
    logprobs: jax.Array  # [R, M] float32 (see token_choice.py for which distribution)
    num_tokens: jax.Array  # [R] int32
    fci: jax.Array | None = None  # [R, S_max] float32, fci_decode.aggregate (only with FCI)


class _Loop(NamedTuple):
    step: jax.Array  # [] int32: the index of the token being chosen
    token: jax.Array  # [R]: the last chosen token
    done: jax.Array  # [R] bool
    result: DeviceResult
    cache: KVCache
    watched: Any  # the DecodeWatch's state (None without one)


class DecodeWatch(Protocol):
    """Attention statistics gathered while decoding (FCI: `fci_decode.FciWatch`), kept out of
    the cache and the loop: the loop calls begin before each decode forward (which threads the
    state through the layers' attention observers), end after it, and result after the loop.
    feeds_last (static): feed every row's last token once more after the loop, so statistics
    of the last query are counted."""

    feeds_last: bool

    def initial(self, rows: int, cache_length: int, lengths: jax.Array) -> Any: ...

    def begin(self, state: Any, positions: jax.Array, fed: jax.Array) -> tuple[Any, Any]: ...

    def end(self, state: Any, tokens: jax.Array, fed: jax.Array) -> Any: ...

    def result(self, state: Any) -> jax.Array | None: ...


class NoWatch(NamedTuple):
    """The decode loop without statistics."""

    feeds_last = False

    def initial(self, rows, cache_length, lengths):
        return None

    def begin(self, state, positions, fed):
        return state, None

    def end(self, state, tokens, fed):
        return state

    def result(self, state):
        return None


def _row_keys(batch: DeviceBatch) -> jax.Array:
    """Each row's random stream [R]: a function of (seed, request, sample) alone, so a row's
    tokens do not depend on the rest of the batch."""
    base = jax.random.key(batch.seed)

    def one(request, sample):
        return jax.random.fold_in(jax.random.fold_in(base, request), sample)

    return jax.vmap(one)(batch.request_index, batch.sample_index)


def _record(loop: _Loop, step, token, logprob, eos_ids, budget) -> _Loop:
    """Stores step's tokens of the rows still running, and stops rows at EOS or budget."""
    live = ~loop.done
    result = loop.result
    result = DeviceResult(
        result.tokens.at[:, step].set(jnp.where(live, token, 0)),
        result.logprobs.at[:, step].set(jnp.where(live, logprob, 0.0)),
        result.num_tokens + live,
    )
    stop = jnp.any(token[:, None] == eos_ids[None, :], axis=-1) | (step + 1 >= budget)
    return loop._replace(step=step + 1, token=token, done=loop.done | stop, result=result)


def _prefill(
    params: Params,
    layers: Params,
    batch: DeviceBatch,
    cfg: ModelConfig,
    config: SamplerConfig,
    cache_length: int,
) -> tuple[jax.Array, KVCache]:
    """Runs each context once: the first logits of every row [R, V] and the rows' cache."""
    contexts = batch.contexts
    length = contexts.shape[1]
    chunk = config.query_chunk if config.query_chunk and config.query_chunk < length else None
    positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), contexts.shape)
    attend = prefill_attend(batch.source, cache_length, chunk)
    hidden, cache = forward_hidden(layers, cfg, contexts, positions, attend, KVCache((), ()))
    last = jnp.take_along_axis(hidden, (batch.context_lengths - 1)[:, None, None], axis=1)
    logits = logits_from_hidden(params, last[batch.source, 0])
    return logits, constrain(cache, config.mesh, config.rules)


@functools.partial(
    jax.jit, static_argnames=("cfg", "config", "max_new_tokens", "cache_length", "fci")
)
def sample_batch(
    params: Params,
    batch: DeviceBatch,
    cfg: ModelConfig,
    config: SamplerConfig,
    max_new_tokens: int,
    cache_length: int,
    fci: DecodeFci | None = None,
) -> DeviceResult:
    """Generates up to max_new_tokens (M) tokens for each of the batch's R rows.

    cache_length (S) must hold every row: S >= context_length + budget for each.
    fci: also accumulate FCI while decoding (see fci_decode.py; needs batch.separators); the
    result's `fci` is then [R, S_max], raw (requests.py applies key weights and masks).
    """
    layers = unstack_layers(params)  # sliced once here, not once per decode step
    logits, cache = _prefill(params, layers, batch, cfg, config, cache_length)
    lengths = batch.context_lengths[batch.source]  # [R]
    rows = lengths.shape[0]
    keys = _row_keys(batch)
    eos_ids, budget = batch.eos_ids, batch.budget

    def choose(logits, step):
        u = jax.vmap(lambda key: jax.random.uniform(jax.random.fold_in(key, step)))(keys)
        return choose_tokens(logits, batch.sampling, u)

    empty = DeviceResult(
        jnp.zeros((rows, max_new_tokens), jnp.int32),
        jnp.zeros((rows, max_new_tokens), jnp.float32),
        jnp.zeros((rows,), jnp.int32),
    )
    first = jnp.int32(0)
    watch: DecodeWatch = NoWatch()
    if fci is not None:
        kv_heads = cfg.num_kv_heads
        watch = fci_decode.FciWatch(fci, batch.separators, cfg.num_layers, cfg.num_heads, kv_heads)
    watched = watch.initial(rows, cache_length, lengths)
    loop = _Loop(first, jnp.zeros((rows,), jnp.int32), budget <= 0, empty, cache, watched)
    loop = _record(loop, first, *choose(logits, first), eos_ids, budget)
    chunk = largest_divisor(cache_length, config.attention_chunk)

    def feed_last(loop: _Loop) -> tuple[jax.Array, _Loop]:
        """One forward of every row's last chosen token: hidden [R, E] and the new cache."""
        # The last token goes into slot length + step - 1; finished rows stay in range.
        positions = jnp.minimum(lengths + loop.step - 1, cache_length - 1)
        # The token fed now is response token step - 1: new for rows that chose it.
        fed = loop.step - 1 < loop.result.num_tokens
        watched, observe = watch.begin(loop.watched, positions, fed)
        attend = decode_attend(positions, chunk, observe)
        hidden, (cache, watched) = forward_hidden(
            layers, cfg, loop.token[:, None], positions[:, None], attend, (loop.cache, watched)
        )
        watched = watch.end(watched, loop.token, fed)
        return hidden[:, 0], loop._replace(cache=cache, watched=watched)

    def running(loop: _Loop):
        return (loop.step < max_new_tokens) & ~jnp.all(loop.done)

    def decode(loop: _Loop) -> _Loop:
        hidden, loop = feed_last(loop)
        token, logprob = choose(logits_from_hidden(params, hidden), loop.step)
        return _record(loop, loop.step, token, logprob, eos_ids, budget)

    loop = jax.lax.while_loop(running, decode, loop)
    if watch.feeds_last:
        # Nothing is sampled after a row's last token, so the loop never fed it; one more
        # forward does (rows already complete are not fed).
        _, loop = feed_last(loop)
    return loop.result._replace(fci=watch.result(loop.watched))
