"""FCI (Forward Context Influence, ALGORITHM.md section 2) accumulated inside the forward pass.

For layer l and head h with attention A (post-RoPE, causal, exact softmax),

    a[l,h,j,k] = c_j c_k sum_{i in step j} sum_{t in step k} A[l,h,i,t]      c = 1/|step| (mean)
    y[l,h,k]   = sum_{j >= k + delta} a[l,h,j,k]                             or c = 1 (sum)

Substituting a into y, the two sums over steps collapse into one masked column sum of A:

    y[l,h,k] = c_k sum_{t in step k} z[l,h,t],
    z[l,h,t] = sum_i c_{step(i)} [step(i) >= step(t) + delta] A[l,h,i,t].

So instead of the (S+1) x (S+1) step matrix per head, each layer accumulates z [B, H, T] over
query chunks (the chunk's probabilities [B, H, chunk, T] are the ones the attention output uses;
nothing T x T is ever held), then sums z into steps once per layer. This is exact (no
approximation; float32 throughout), costs an elementwise multiply and a reduction over the chunk's
queries (no matmul), and its memory grows linearly in T, whatever the number of steps (one-token
steps, the last segmentation fallback, included).

The running state is the aggregate over the layers seen so far, [B, S_max] float32: the max over
heads and layers, or the sum of per-layer head means (divided by the layer count in `finish_fci`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from attnrl_jax.models.attention import Attend, attention, causal_attend, causal_mask

POOLINGS = ("mean", "sum")
AGGREGATIONS = ("max", "mean")


@dataclass(frozen=True)
class FciConfig:
    """Static FCI settings (hashable: part of the jitted scorer's static configuration).

    pooling: "mean" (mean over the tokens of both steps, default) or "sum" (attention mass).
    delta: a query step j counts towards key step k when j >= k + delta.
    aggregation: "max" (default) or "mean" over the heads and layers.
    layers: indices of the layers that count; None = all layers.
    """

    pooling: str = "mean"
    delta: int = 4
    aggregation: str = "max"
    layers: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")
        if self.delta < 1:
            raise ValueError(f"delta must be >= 1, got {self.delta}")
        if self.layers is not None and not self.layers:
            raise ValueError("layers must be None (all layers) or a non-empty tuple")

    def layer_mask(self, num_layers: int) -> tuple[bool, ...]:
        """Which of the model's layers count (static)."""
        if self.layers is None:
            return (True,) * num_layers
        bad = [i for i in self.layers if not 0 <= i < num_layers]
        if bad:
            raise ValueError(f"FCI layers {bad} out of range for a {num_layers}-layer model")
        return tuple(i in self.layers for i in range(num_layers))


def step_sizes(step_ids: jax.Array, max_steps: int) -> jax.Array:
    """Tokens per step, [B, S_max] float32, from step_ids [B, T] (-1 = padding)."""
    one = jnp.ones(step_ids.shape[1], jnp.float32)
    return jax.vmap(lambda s: jax.ops.segment_sum(one, s, max_steps))(step_ids)


def _sum_into_steps(z: jax.Array, step_ids: jax.Array, max_steps: int) -> jax.Array:
    """z [B, H, T] -> per-step sums [B, H, S_max]; padding (-1) positions are dropped."""
    per_row = jax.vmap(lambda zb, s: jax.ops.segment_sum(zb.T, s, max_steps).T)
    return per_row(z, step_ids)


class ColumnSumObserver(NamedTuple):
    """The scoring pass's attention `Observer`: z [B, Hkv, G, T] += sum over the chunk's queries
    i of c_{step(i)} [step(i) >= step(t) + delta] A[i, t] (see the module docstring).

    Needs each query chunk's exact probabilities over all keys (the kernel reading keys whole):
    the weights differ per query, so a running softmax's per-query rescale cannot be applied
    to a sum over queries.
    """

    step_ids: jax.Array  # [B, T] int32
    query_weight: jax.Array  # [B, T] float32: c_{step(i)}, 0 at padding
    delta: int

    def start(self, z, q_start):
        return z

    def add(self, z, probs, rescale, q_start, k_start):
        if rescale is not None:
            raise ValueError("FCI column sums need whole-key attention (key_chunk=None)")
        chunk = probs.shape[3]
        step_q = jax.lax.dynamic_slice_in_dim(self.step_ids, q_start, chunk, axis=1)
        weight_q = jax.lax.dynamic_slice_in_dim(self.query_weight, q_start, chunk, axis=1)
        later = step_q[:, :, None] >= self.step_ids[:, None, :] + self.delta  # [B, chunk, T]
        weight = jnp.where(later, weight_q[:, :, None], 0.0)
        # A contraction over the chunk's queries; as a dot_general it runs about 2.5x faster
        # on XLA:CPU than the same product written as multiply-then-sum. HIGHEST keeps it in
        # float32 where the default would use TF32 (GPU) or bf16 passes (TPU).
        return z + jnp.einsum("bhgqt,bqt->bhgt", probs, weight, precision="highest")

    def finish(self, z, acc, total, q_start):
        return acc


def fci_attend(
    step_ids: jax.Array, config: FciConfig, num_layers: int, max_steps: int, query_chunk: int
) -> Attend:
    """The causal attention of `causal_attend`, with a `ColumnSumObserver` whose column sums
    are folded into per-step scores after each layer.

    step_ids: [B, T] int32, the step of every position (0 = prompt), -1 for padding; padding
    positions are masked out of attention (as segment 0). State: [B, S_max] float32, zeros first.
    Layers outside `config.layers` run the plain kernel.
    """
    valid = step_ids >= 0
    segment_ids = valid.astype(jnp.int32)
    mask = causal_mask(segment_ids)
    sizes = step_sizes(step_ids, max_steps)
    if config.pooling == "mean":
        row_size = jnp.take_along_axis(sizes, jnp.maximum(step_ids, 0), axis=1)
        query_weight = jnp.where(valid, 1.0 / jnp.maximum(row_size, 1.0), 0.0)
        key_weight = 1.0 / jnp.maximum(sizes, 1.0)
    else:
        query_weight = valid.astype(jnp.float32)
        key_weight = jnp.ones_like(sizes)
    include = jnp.asarray(config.layer_mask(num_layers))
    observer = ColumnSumObserver(step_ids, query_weight, config.delta)

    def with_statistics(layer, q, k, v, state):
        b, t, hq, _ = q.shape
        z0 = jnp.zeros((b, k.shape[2], hq // k.shape[2], t), jnp.float32)
        out, z = attention(q, k, v, mask, query_chunk=query_chunk, observer=observer, observed=z0)
        y = _sum_into_steps(z.reshape(b, hq, t), step_ids, max_steps) * key_weight[:, None, :]
        if config.aggregation == "max":
            state = jnp.maximum(state, jnp.max(y, axis=1))
        else:
            state = state + jnp.mean(y, axis=1)
        return out, state

    plain = causal_attend(segment_ids, query_chunk)

    def attend(layer, q, k, v, state):
        if config.layers is None:
            return with_statistics(layer, q, k, v, state)
        return jax.lax.cond(include[layer], with_statistics, plain, layer, q, k, v, state)

    return attend


def finish_fci(
    state: jax.Array, think_end_step: jax.Array, config: FciConfig, num_layers: int
) -> jax.Array:
    """The accumulated state [B, S_max] -> FCI [B, S_max] with the masks applied.

    Step 0 (prompt), step 1 and every step from think_end_step on ([B] int32, -1 = none) are 0;
    slots past a row's last step are 0 already (they hold no tokens). NumPy inputs are computed
    in NumPy (the sampler's host side, whose row counts vary: no compile per shape).
    """
    xp = np if isinstance(state, np.ndarray) else jnp
    if config.aggregation == "mean":
        state = state / sum(config.layer_mask(num_layers))
    steps = xp.arange(state.shape[1])
    think = xp.where(think_end_step >= 0, think_end_step, state.shape[1])
    keep = (steps >= 2)[None, :] & (steps[None, :] < think[:, None])
    return xp.where(keep, state, 0.0)


def initial_state(batch: int, max_steps: int) -> jax.Array:
    """Zeros [B, S_max] float32: the identity of both aggregations (all y are >= 0)."""
    return jnp.zeros((batch, max_steps), jnp.float32)
