"""FCI of fresh samples, accumulated while the sampler decodes them (ALGORITHM.md section 2).

With c = 1/|step| (mean pooling; 1 for sum), the scoring forward computes per layer l, head h

    y[l,h,k] = c_k sum_{j >= k + delta} c_j sum_{i in step j} sum_{t in step k} A[l,h,i,t].

While decoding, query i's attention row over the cache is computed anyway, so each decode step
adds, per row, layer and head, the row's attention summed by key step (`current`, [R, H, S_max]).
It arrives through the attention kernel's observer hook: `StepMassObserver` (one per counted
layer) receives the cache chunks' running-softmax probabilities; `FciWatch` is the decode loop's
side (feed, fold, result). The KV cache and decode attention know nothing of FCI.
The query weight c_j is only known when step j ends (its separator is fed), so `current` holds the
unweighted sums of the step in progress; at the step's end it is folded into `total` with weight
c_j, for key steps k <= j - delta only (those are complete), and reset. After the last token,
y = c_k total and the aggregate over heads and layers equals the scoring forward's FCI state.

Exactness conditions, checked on the host for all rows at once from their tokens (`finish_inputs`;
the arithmetic runs on the device, `finish_scores`):
- Steps are tracked with the "\\n\\n" separators only. A response without any falls back to "\\n"
  or to every token (steps.py), a choice that depends on the whole response: those rows get no
  FCI here (None) and the caller scores them with the scoring forward.
- A row with more than max_steps - 1 response steps (the static bucket) also gets None.
- Prompt queries never count (step 0 >= k + delta never holds), so prefill needs nothing. The
  response's last token is never fed by the decode loop (nothing is sampled after it), so one
  extra forward feeds the last tokens after the loop (`sampler.sample_batch`).
- Continuations (a non-empty response prefix in the context) get None: their prefix queries run
  in prefill, which is not tracked (the trainer only needs FCI of fresh initial responses).

State per row: 2 x (counted layers) x heads x max_steps float32 plus one int32 step id per cache
slot; never T x T. Per decode step and layer, the extra work is one sorted segment sum of the
attention row (O(H x S_cache)), plus O(H x max_steps) for the fold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from attnrl_jax.scoring.fci import FciConfig, finish_fci
from attnrl_jax.scoring.steps import SeparatorIds, StepLayouts


@dataclass(frozen=True)
class SamplerFci:
    """The sampler option `SamplingOptions.fci`: FCI of every fresh sample, computed in decode.

    seps: the tokenizer's separator ids (only `double_newline` and `think_end` are used here; rows
    that would need the "\\n" or every-token fallback get `Sample.fci = None`). config: pooling,
    delta, aggregation and layers, as in the scoring forward. max_steps: step slots per row
    (static: a new value compiles a new program); a row with more than max_steps - 1 response
    steps gets None.
    """

    seps: SeparatorIds
    config: FciConfig = field(default_factory=FciConfig)
    max_steps: int = 256

    def __post_init__(self):
        if not isinstance(self.seps, SeparatorIds):
            raise TypeError(f"SamplerFci.seps must be a SeparatorIds, got {type(self.seps)}")
        if self.max_steps < 2:
            raise ValueError(f"SamplerFci.max_steps must be >= 2, got {self.max_steps}")

    def static(self) -> DecodeFci:
        return DecodeFci(self.config, self.max_steps)

    def separator_table(self, vocab_size: int) -> np.ndarray:
        """bool[V]: ids that end a step ("\\n\\n" separators inside the vocabulary)."""
        table = np.zeros(vocab_size, bool)
        ids = np.asarray(self.seps.double_newline, np.int64)
        table[ids[(ids >= 0) & (ids < vocab_size)]] = True
        return table


@dataclass(frozen=True)
class DecodeFci:
    """The static part of the option (hashable: a static argument of `sample_batch`)."""

    config: FciConfig
    max_steps: int


class FciState(NamedTuple):
    """Decode-time FCI accumulators of R rows (carried by the decode loop).

    slot_steps: [R, S_cache] int32, the step of every cache slot: 0 for the context, the response
        token's step once fed, max_steps - 1 before (nondecreasing along each row, so segment
        sums can assume sorted ids; unfed slots are never attended).
    step: [R] int32, the step of the next token fed (1-based, unclamped).
    size: [R] int32, tokens of that step fed so far.
    current, total: per counted layer [R, H, S_max] float32 (see the module docstring).
    """

    slot_steps: jax.Array
    step: jax.Array
    size: jax.Array
    current: tuple[jax.Array, ...]
    total: tuple[jax.Array, ...]


def counted_layers(spec: DecodeFci, num_layers: int) -> tuple[int, ...]:
    return tuple(i for i, on in enumerate(spec.config.layer_mask(num_layers)) if on)


def initial_state(
    spec: DecodeFci, rows: int, cache_length: int, num_heads: int, num_layers: int
) -> FciState:
    zeros = jnp.zeros((rows, num_heads, spec.max_steps), jnp.float32)
    n = len(counted_layers(spec, num_layers))
    return FciState(
        slot_steps=jnp.full((rows, cache_length), spec.max_steps - 1, jnp.int32),
        step=jnp.ones(rows, jnp.int32),
        size=jnp.zeros(rows, jnp.int32),
        current=(zeros,) * n,
        total=(zeros,) * n,
    )


def mark_context(state: FciState, lengths: jax.Array) -> FciState:
    """Slots [0, lengths[r]) hold the context: step 0."""
    slots = jnp.arange(state.slot_steps.shape[1])
    return state._replace(
        slot_steps=jnp.where(slots[None, :] < lengths[:, None], 0, state.slot_steps)
    )


def feed(state: FciState, positions: jax.Array, fed: jax.Array, spec: DecodeFci) -> FciState:
    """Before a decode forward: the token entering slot positions[r] belongs to step[r].

    fed [R] bool: the token is a response token fed for the first time (others change nothing
    that is read later: their slots are past the row's response).
    """
    rows = jnp.arange(positions.shape[0])
    step = jnp.minimum(state.step, spec.max_steps - 1)
    slot_steps = state.slot_steps.at[rows, positions].set(step, mode="promise_in_bounds")
    return state._replace(slot_steps=slot_steps, size=state.size + fed)


def step_mass(probs: jax.Array, slot_steps: jax.Array, max_steps: int) -> jax.Array:
    """Attention probabilities [R, Hkv, G, C] summed by key step -> [R, Hkv, G, S_max].

    slot_steps [R, C] int32, nondecreasing along C (a sorted segment sum).
    """
    r, hkv, g, c = probs.shape
    flat = jnp.moveaxis(probs.reshape(r, hkv * g, c), 2, 1)  # [R, C, H]

    def one(p, s):
        return jax.ops.segment_sum(p, s, max_steps, indices_are_sorted=True)

    return jnp.moveaxis(jax.vmap(one)(flat, slot_steps), 1, 2).reshape(r, hkv, g, max_steps)


class StepMassObserver(NamedTuple):
    """The attention `Observer` of one counted layer while decoding (one query per row): sums
    the row's attention by key step and adds it to the layer's `current`, for the fed rows.

    Its state is the whole FciState (only `current[index]` changes).
    """

    index: int  # the layer's place in FciState.current (static)
    slot_steps: jax.Array  # [R, S_cache] int32
    fed: jax.Array  # [R] bool: rows whose query counts
    kv_heads: int
    max_steps: int

    def start(self, state: FciState, q_start) -> jax.Array:
        rows, heads, _ = state.current[self.index].shape
        shape = (rows, self.kv_heads, heads // self.kv_heads, self.max_steps)
        return jnp.zeros(shape, jnp.float32)

    def add(self, acc, probs, rescale, q_start, k_start) -> jax.Array:
        chunk = probs.shape[-1]
        slots = jax.lax.dynamic_slice_in_dim(self.slot_steps, k_start, chunk, axis=1)
        mass = step_mass(probs[:, :, :, 0], slots, self.max_steps)  # the one query per row
        return mass if rescale is None else acc * rescale[..., 0, None] + mass

    def add_items(self, acc, probs, rescale, slots, k_starts) -> jax.Array:
        """Ragged decode attention's items (ragged_attention.py ItemObserver): probs
        [W, Hkv, G, Ck] of rows `slots` [W] (R: padding) at keys k_starts [W] + [0, Ck)."""
        rows = jnp.minimum(slots, self.slot_steps.shape[0] - 1)
        keys = k_starts[:, None] + jnp.arange(probs.shape[-1])
        mass = step_mass(probs, self.slot_steps[rows[:, None], keys], self.max_steps)
        return acc * rescale[..., None] + jnp.zeros_like(acc).at[slots].add(mass, mode="drop")

    def finish(self, state: FciState, acc, total, q_start) -> FciState:
        i, current = self.index, state.current
        if total is not None:
            acc = acc / total[..., 0, None]
        added = current[i] + jnp.where(self.fed[:, None, None], acc.reshape(current[i].shape), 0.0)
        return state._replace(current=current[:i] + (added,) + current[i + 1 :])


class FciWatch(NamedTuple):
    """FCI while decoding, as the sampler's decode watch (see `sampler.DecodeWatch`)."""

    spec: DecodeFci
    separators: jax.Array  # [V] bool: ids that end a step
    num_layers: int
    num_heads: int
    kv_heads: int

    feeds_last = True  # the response's last token must be fed once more (module docstring)

    def initial(self, rows: int, cache_length: int, lengths: jax.Array) -> FciState:
        state = initial_state(self.spec, rows, cache_length, self.num_heads, self.num_layers)
        return mark_context(state, lengths)

    def begin(self, state: FciState, positions: jax.Array, fed: jax.Array):
        """Before a decode forward: (state, observe) with observe(layer) -> Observer | None."""
        state = feed(state, positions, fed, self.spec)
        counted = counted_layers(self.spec, self.num_layers)

        def observe(layer: int) -> StepMassObserver | None:
            if layer not in counted:
                return None
            index = counted.index(layer)
            return StepMassObserver(
                index, state.slot_steps, fed, self.kv_heads, self.spec.max_steps
            )

        return state, observe

    def end(self, state: FciState, tokens: jax.Array, fed: jax.Array) -> FciState:
        """After the forward of `tokens` [R]: rows whose fed token is a separator end a step."""
        return fold(state, fed & self.separators[tokens], self.spec)

    def result(self, state: FciState) -> jax.Array:
        """[R, S_max] after the last feed: the unterminated last steps folded, aggregated."""
        return aggregate(fold(state, state.size > 0, self.spec), self.spec)


def fold(state: FciState, ends: jax.Array, spec: DecodeFci) -> FciState:
    """Rows in `ends` [R] bool finished their step: fold `current` into `total`, next step."""
    config = spec.config
    step = jnp.minimum(state.step, spec.max_steps - 1)
    keys = jnp.arange(spec.max_steps)
    later = keys[None, :] <= (step - config.delta)[:, None]  # [R, S_max]
    if config.pooling == "mean":
        weight = 1.0 / jnp.maximum(state.size, 1).astype(jnp.float32)
    else:
        weight = jnp.ones(state.size.shape, jnp.float32)
    scale = jnp.where(ends[:, None] & later, weight[:, None], 0.0)[:, None, :]  # [R, 1, S_max]
    keep = jnp.where(ends, 0.0, 1.0)[:, None, None]
    total = tuple(t + c * scale for t, c in zip(state.total, state.current, strict=True))
    return state._replace(
        step=state.step + ends,
        size=jnp.where(ends, 0, state.size),
        current=tuple(c * keep for c in state.current),
        total=total,
    )


def aggregate(state: FciState, spec: DecodeFci) -> jax.Array:
    """[R, S_max]: the key-step totals aggregated over heads and layers, before the key weight
    c_k (which factors out of both aggregations: c_k > 0 and the same for every head/layer)."""
    if spec.config.aggregation == "max":
        return jnp.max(jnp.stack([jnp.max(t, axis=1) for t in state.total]), axis=0)
    return sum(jnp.mean(t, axis=1) for t in state.total)


class FinishInputs(NamedTuple):
    """What `finish_scores` needs besides the raw rows, built on the host from the tokens.

    sizes: int32[rows, S_max], the token count of step c of row r in column c (the prompt in
    column 0; 0 outside the row's steps); counts, think: int32[rows], S_r and the think-end step
    (-1: none, or not exact); exact: bool[rows] (padding rows False).
    """

    sizes: np.ndarray
    counts: np.ndarray
    think: np.ndarray
    exact: np.ndarray


def finish_inputs(
    layouts: StepLayouts,
    fresh: np.ndarray,
    response_ids: Sequence[np.ndarray],
    option: SamplerFci,
    rows: int | None = None,
) -> FinishInputs:
    """FinishInputs of R rows (padded to `rows`, default R) for step slots option.max_steps.

    A row is exact when it is `fresh` (not a continuation), has a "\\n\\n" separator, and has at
    most max_steps - 1 response steps. Array operations over the flat layouts (no loop per row).
    """
    count, max_steps = len(layouts), option.max_steps
    rows = count if rows is None else rows
    if len(response_ids) != count or len(fresh) != count or rows < count:
        raise ValueError(
            f"finish_inputs: {count} layouts, {len(response_ids)} responses, {len(fresh)} fresh "
            f"flags, {rows} rows"
        )
    lengths = np.fromiter(map(len, response_ids), np.int64, count)
    ids = np.concatenate([np.zeros(0, np.int64), *response_ids], dtype=np.int64, casting="unsafe")
    double = np.isin(ids, option.seps.double_newline)
    has_double = np.bincount(np.repeat(np.arange(count), lengths)[double], minlength=count) > 0
    counts = layouts.num_steps.astype(np.int64)
    exact = np.zeros(rows, bool)
    exact[:count] = np.asarray(fresh, bool) & has_double & (counts + 1 <= max_steps)
    sizes = np.zeros((rows, max_steps), np.int32)
    sizes[:count, 0] = layouts.prompt_len
    owner = np.repeat(np.arange(count), counts)
    step_mask = exact[:count, None] & (np.arange(1, max_steps) <= counts[:, None])
    sizes[:count, 1:][step_mask] = layouts.step_sizes[exact[owner]]
    padded = np.zeros((2, rows), np.int32)
    padded[0, :count] = counts
    padded[1] = -1
    padded[1, :count] = np.where(exact[:count], layouts.think_end_step, -1)
    return FinishInputs(sizes, padded[0], padded[1], exact)


@partial(jax.jit, static_argnames=("config", "num_layers"))
def finish_scores(
    raw: jax.Array, inputs: FinishInputs, config: FciConfig, num_layers: int
) -> jax.Array:
    """FCI of the rows on the device: float32[rows, S_max], row r's FCI in scoring's layout (step
    0 first, masks applied) in columns 0..S_r, zeros after and in rows that are not exact.

    raw [rows, S_max]: `aggregate` of the decode rows. One compile per (rows, S_max, config):
    callers pad rows to a bucket.
    """
    columns = jnp.arange(raw.shape[1])
    mask = inputs.exact[:, None] & (columns[None, :] <= inputs.counts[:, None])
    key_weight = jnp.ones(raw.shape, jnp.float32)
    if config.pooling == "mean":  # c_k = 1 / |step k|, step 0 = the prompt
        sizes = inputs.sizes.astype(jnp.float32)
        key_weight = jnp.where(mask, 1.0 / jnp.maximum(sizes, 1.0), 1.0)
    scores = finish_fci(raw.astype(jnp.float32) * key_weight, inputs.think, config, num_layers)
    return jnp.where(mask, scores, 0.0)


def finish(
    raw: np.ndarray,
    layouts: StepLayouts,
    fresh: np.ndarray,
    response_ids: Sequence[np.ndarray],
    option: SamplerFci,
    num_layers: int,
) -> tuple[np.ndarray, np.ndarray]:
    """FCI of R rows at once, on the host: (scores float32[R, S_max], exact bool[R]).

    `finish_inputs` + `finish_scores` with host arrays in and out (the sampler keeps its rows on
    the device: sampling/fci_rows.py). raw [R, S_max]; layouts: segment_batch of the R rows;
    response_ids[r]: row r's tokens; rows that are not exact are all zeros.
    """
    rows, max_steps = raw.shape
    if len(layouts) != rows or len(response_ids) != rows or len(fresh) != rows:
        raise ValueError(
            f"finish: {rows} raw rows, {len(layouts)} layouts, {len(response_ids)} responses, "
            f"{len(fresh)} fresh flags"
        )
    if max_steps != option.max_steps:
        raise ValueError(
            f"finish: raw rows of {max_steps} steps, option.max_steps {option.max_steps}"
        )
    inputs = finish_inputs(layouts, fresh, response_ids, option)
    scores = finish_scores(np.asarray(raw, np.float32), inputs, option.config, num_layers)
    return np.asarray(jax.device_get(scores)), inputs.exact
