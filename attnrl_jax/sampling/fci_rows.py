"""The sampler call's FCI on the device: raw rows gathered as they finish, finished at once.

    buffer = FciBuffer.for_call(requests, option, floor, sharding)   # zeros [R_pad, S_max]
    buffer.add(raw, dest)      # per decode chunk / lock-step batch: its finished fresh rows
    call = buffer.finish(...)  # CallFci: scores [R_pad, S_max] on the device, exact bool[F]

Row k of the buffer is the call's k-th fresh row (requests without a prefix, in request then
sample order); continuations have no row (they get no FCI). Decode chunks leave their raw FCI
[slots, S_max] on the device: `add` scatters the harvested rows into the buffer by a small host
index array (one jitted scatter; rows not harvested now point past the buffer and are dropped).
`finish` uploads the step layouts as int arrays (fci_decode.finish_inputs: int32 step sizes
[R_pad, S_max], int32 counts and think steps and a bool exactness mask [R_pad], built from the
tokens, which are host-side anyway) and finishes every row in one jitted call. Shapes: R_pad
is a power of two at least the engine's row bucket, S_max is static, so the compiled programs
do not change from call to call. The host reads FCI only when asked (`CallFci.host`: one copy
for the call).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec, Sharding

from attnrl_jax.buckets import power_of_two
from attnrl_jax.models.transfer import to_device, to_host
from attnrl_jax.sampling.fci_decode import SamplerFci, finish_inputs, finish_scores
from attnrl_jax.scoring.steps import segment_batch


@dataclass(frozen=True, eq=False)
class CallFci:
    """The finished FCI of a sampler call's F fresh rows, one device array for the call.

    scores: float32[R_pad, S_max] (R_pad >= F): fresh row k's FCI in row k, step 0 first, in
    columns 0..ends[k] - 1, zeros after, all zeros where exact[k] is False (and in padding rows).
    exact: bool[F] and ends: int64[F] (S_k + 1) are host arrays: the fallback (the scoring
    forward for rows without exact FCI) and the rows' lengths need no device read.
    """

    scores: jax.Array = field(repr=False)  # a repr would read it to the host
    exact: np.ndarray
    ends: np.ndarray

    @functools.cached_property
    def _host(self) -> np.ndarray:
        return np.asarray(to_host(self.scores), np.float32)

    def host(self) -> np.ndarray:
        """float32[R_pad, S_max]: one device->host copy of the call's scores (cached)."""
        return self._host

    def row(self, k: int) -> np.ndarray | None:
        """Fresh row k's FCI float32[S_k + 1] (a view of `host()`), or None when not exact."""
        if not self.exact[k]:
            return None
        return self.host()[k, : self.ends[k]]


class FciRow(NamedTuple):
    """A sample's FCI: row `row` of the call's CallFci (still on the device)."""

    call: CallFci
    row: int


class FciBuffer:
    """Raw FCI [R_pad, S_max] of a call's fresh rows on the device (module docstring)."""

    def __init__(
        self, fresh_rows: dict[tuple[int, int], int], rows: int, raw: jax.Array, sharding: Sharding
    ):
        self.fresh_rows = fresh_rows  # (request, sample) -> buffer row
        self.rows = rows
        self.raw = raw
        self.sharding = sharding  # of the buffer and of every upload next to it

    @classmethod
    def for_call(
        cls, requests: Sequence, option: SamplerFci, floor: int, sharding: Sharding
    ) -> FciBuffer | None:
        """The zero buffer of a call's requests (None when none is fresh); R_pad: a power of
        two >= the fresh rows and >= floor (the engine's largest row bucket)."""
        fresh = [i for i, r in enumerate(requests) if len(r.prefix_ids) == 0]
        if not fresh:
            return None
        index = [(i, s) for i in fresh for s in range(requests[i].n)]
        rows = power_of_two(len(index), floor)
        raw = jnp.zeros((rows, option.max_steps), jnp.float32, device=sharding)
        return cls({row: k for k, row in enumerate(index)}, rows, raw, sharding)

    def dest(self, rows: Sequence[tuple[int, int] | None]) -> np.ndarray:
        """int32[len(rows)]: each (request, sample)'s buffer row; R_pad (dropped) for None,
        continuations and rows not to be harvested now (pass None for those)."""
        out = np.full(len(rows), self.rows, np.int32)
        for b, row in enumerate(rows):
            if row is not None:
                out[b] = self.fresh_rows.get(row, self.rows)
        return out

    def add(self, raw: jax.Array, dest: np.ndarray) -> None:
        """Rows of `raw` [N, S_max] (device) into the buffer at `dest` int32[N] (host)."""
        if (dest < self.rows).any():
            self.raw = _scatter(self.raw, raw, to_device(dest, self.sharding), self.sharding)

    def finish(
        self,
        requests: Sequence,
        token_ids: dict[tuple[int, int], np.ndarray],
        option: SamplerFci,
        num_layers: int,
    ) -> CallFci:
        """Every fresh row finished on the device; token_ids: each (request, sample)'s tokens
        (continuations may be included: they are skipped)."""
        order = sorted(self.fresh_rows, key=self.fresh_rows.get)
        ids = [token_ids[row] for row in order]
        prompts = [len(requests[i].prompt_ids) for i, _ in order]
        layouts = segment_batch(prompts, ids, option.seps)
        inputs = finish_inputs(layouts, np.ones(len(ids), bool), ids, option, self.rows)
        placed = jax.tree.map(lambda x: to_device(x, self.sharding), inputs)
        scores = finish_scores(self.raw, placed, option.config, num_layers)
        ends = layouts.num_steps.astype(np.int64) + 1
        return CallFci(scores, inputs.exact[: len(ids)].copy(), ends)


@functools.partial(jax.jit, donate_argnums=0, static_argnums=3)
def _scatter(buffer: jax.Array, raw: jax.Array, dest: jax.Array, sharding) -> jax.Array:
    out = buffer.at[dest].set(raw.astype(buffer.dtype), mode="drop")
    if isinstance(sharding, NamedSharding):  # on a mesh: the buffer stays replicated
        out = jax.lax.with_sharding_constraint(out, sharding)
    return out


def gather_rows(scores: jax.Array, rows: Sequence[int]) -> jax.Array:
    """float32[power_of_two(len(rows), 8), S_max]: row j = scores[rows[j]] (zeros past the
    rows), gathered on the device (one small index upload)."""
    index = np.full(power_of_two(len(rows), 8), scores.shape[0], np.int32)
    index[: len(rows)] = rows
    return _gather(scores, to_device(index, _beside(scores)))


def with_rows(scores: jax.Array, rows: Sequence[int], values: Sequence[np.ndarray]) -> jax.Array:
    """scores [N, S] with row rows[j] replaced by the host vector values[j] (float[<= W], zeros
    after): one upload of [N, W], W = max(S, the longest value), so the program depends on (N,
    S, W) only, not on how many rows are replaced."""
    lengths = np.fromiter(map(len, values), np.int64, len(values))
    width = max(scores.shape[1], int(lengths.max(initial=0)))
    block = np.zeros((len(values), width), np.float32)
    block[np.arange(width) < lengths[:, None]] = np.concatenate(
        [np.zeros(0, np.float32), *values], dtype=np.float32
    )
    host = np.zeros((scores.shape[0], width), np.float32)
    take = np.zeros(scores.shape[0], bool)
    host[np.asarray(rows, np.int64)] = block
    take[np.asarray(rows, np.int64)] = True
    placed = jax.tree.map(lambda x: to_device(x, _beside(scores)), (host, take))
    return _merge(scores, *placed)


def _beside(x: jax.Array) -> Sharding:
    """Where host arrays used with x go: its device, or replicated over its mesh."""
    if isinstance(x.sharding, NamedSharding):
        return NamedSharding(x.sharding.mesh, PartitionSpec())
    return x.sharding


@jax.jit
def _gather(scores: jax.Array, index: jax.Array) -> jax.Array:
    return scores.at[index].get(mode="fill", fill_value=0.0)


@jax.jit
def _merge(scores: jax.Array, host: jax.Array, take: jax.Array) -> jax.Array:
    padded = jnp.pad(scores, ((0, 0), (0, host.shape[1] - scores.shape[1])))
    return jnp.where(take[:, None], host, padded)
