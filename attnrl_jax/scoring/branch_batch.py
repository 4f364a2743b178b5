"""A padded batch of responses for branch selection (`SelectionInputs`) and the host padding
that builds it from step layouts, FCI and entropies (`selection_inputs`).

Padding runs without a Python loop per response: layouts arrive as (or are stacked into) flat
`StepLayouts` arrays, per-response scores are concatenated once, and both are scattered into the
[rows, columns] arrays by boolean-mask assignment (row-major order of a row-prefix mask is the
flat order). FCI or entropies given as one padded array skip the concatenation; a jax array stays
on its device (the sampler's FCI needs no host copy on this side).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from attnrl_jax.buckets import power_of_two
from attnrl_jax.scoring.steps import StepLayout, StepLayouts


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class SelectionInputs:
    """A padded batch of B responses (one row each; padding rows have num_steps 0).

    starts / ends: int32[B, S_pad], absolute [start, end) of response step c + 1 in column c
    (S_pad >= every S; the prompt, step 0, has no column). fci: float32[B, S_pad], FCI of response
    step c + 1 in column c (zeros where unknown). entropy: float32[B, R_pad]
    per response token ([B, 1] zeros when unused). num_steps, prompt_len, response_len: int32[B].
    think_end_step: int32[B], -1 = none; FCI of steps from it on counts as 0 (the scoring pass and
    the sampler mask them already; masking twice changes nothing). row_id: int32[B], the response's
    index in its batch, folded into the random key so draws do not depend on the padding or on
    which other rows share the call.
    """

    starts: jax.Array
    ends: jax.Array
    fci: jax.Array
    entropy: jax.Array
    num_steps: jax.Array
    prompt_len: jax.Array
    response_len: jax.Array
    think_end_step: jax.Array
    row_id: jax.Array


Scores = Sequence[np.ndarray] | np.ndarray | jax.Array


def selection_inputs(
    layouts: Sequence[StepLayout] | StepLayouts,
    fci: Scores | None = None,
    entropy: Scores | None = None,
    row_ids: Sequence[int] | np.ndarray | None = None,
    rows: int | None = None,
) -> SelectionInputs:
    """Host side: pad B responses' layouts and scores into a SelectionInputs, without a Python
    loop per response (flat arrays scattered by index arrays).

    Rows pad to `rows` (default a power of two >= 8), steps to a power of two (>= 16), entropies
    to a power of two (>= 64) tokens. fci: per response float[>= S_i + 1] (step 0 first), or one
    padded array [B, >= S_max + 1] (numpy, or a jax array that stays on its device: the
    sampler's FCI needs no host copy); entropy: per response float[>= R_i], or one [B, >= R_max]
    array. Entries past S_i (R_i) are ignored. row_ids default to 0..rows-1.
    """
    flat = StepLayouts.stack(layouts)
    b = len(flat)
    rows = power_of_two(b, 8) if rows is None else rows
    if rows < b:
        raise ValueError(f"rows={rows} < {b} responses")
    s_pad = power_of_two(int(flat.num_steps.max(initial=0)), 16)
    starts, ends = flat.padded_bounds(rows, s_pad)
    response_len = flat.response_len
    scores = np.zeros((rows, s_pad), np.float32)
    if fci is not None:
        scores = _pad_ragged(fci, flat.num_steps, 1, rows, s_pad, "fci", "(step 0 included)")
    ent = np.zeros((rows, 1), np.float32)
    if entropy is not None:
        r_pad = power_of_two(int(response_len.max(initial=0)), 64)
        ent = _pad_ragged(entropy, response_len, 0, rows, r_pad, "entropy", "response tokens")
    ids = np.arange(rows, dtype=np.int32)
    if row_ids is not None:
        ids[:b] = np.asarray(row_ids, np.int32)

    def per_row(values):
        out = np.zeros(rows, np.int32)
        out[:b] = values
        return out

    return SelectionInputs(
        starts=starts,
        ends=ends,
        fci=scores,
        entropy=ent,
        num_steps=per_row(flat.num_steps),
        prompt_len=per_row(flat.prompt_len),
        response_len=per_row(response_len),
        think_end_step=per_row(flat.think_end_step),
        row_id=ids,
    )


def pad_step_scores(
    values: Scores, num_steps: np.ndarray, columns: int | None = None
) -> np.ndarray:
    """float32[B, columns]: per-step scores of B responses (step 0 first) in one host array,
    zeros past column S_i. values: per response float[>= S_i + 1], or one [B, >= S_max + 1]
    array; num_steps: int[B]; columns default S_max + 1 (at least 1)."""
    counts = np.asarray(num_steps, np.int64) + 1
    columns = int(counts.max(initial=1)) if columns is None else columns
    out = _pad_ragged(values, counts, 0, len(counts), columns, "fci", "(step 0 included)")
    return np.asarray(out, np.float32)


def _pad_ragged(values, counts, skip, rows, columns, name, unit):
    """float32[rows, columns]: values[i][skip : skip + counts[i]] in row i's first counts[i]
    columns, zeros elsewhere. values: per-row sequences (one concatenation, one gather) or one
    2D array (sliced and masked; a jax array stays a jax array)."""
    b = len(counts)
    need = counts + skip
    if isinstance(values, np.ndarray | jax.Array) and values.ndim == 2:
        if values.shape[0] < b or values.shape[1] < int(need.max(initial=0)):
            raise ValueError(
                f"{name} of shape {values.shape} cannot hold {b} responses of up to "
                f"{int(need.max(initial=0))} entries {unit}"
            )
        if isinstance(values, jax.Array):  # one compile per (values shape, rows, columns)
            padded_counts = np.zeros(rows, np.int32)
            padded_counts[:b] = counts
            return _padded_device(values, padded_counts, skip, rows, columns)
        return _padded_host(values, counts, skip, rows, columns)
    if len(values) != b:
        raise ValueError(f"{len(values)} {name} arrays for {b} responses")
    lengths = np.fromiter((len(v) for v in values), np.int64, b)
    short = np.flatnonzero(lengths < need)
    if short.size:
        i = int(short[0])
        raise ValueError(
            f"{name} of response {i} has {lengths[i]} entries, need >= {need[i]} {unit}"
        )
    if b and (lengths == lengths[0]).all() and counts.max() <= columns:  # as one 2D array
        return _padded_host(np.stack(values), counts, skip, rows, columns)
    cat = np.concatenate(list(values) or [[]], dtype=np.float32)
    # row-major order of the output's valid cells is the order of the kept input entries
    local = np.arange(len(cat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    keep = (local >= skip) & (local < np.repeat(need, lengths))
    mask = np.zeros((rows, columns), bool)
    mask[:b] = np.arange(columns) < counts[:, None]
    out = np.zeros((rows, columns), np.float32)
    out[mask] = cat[keep]
    return out


def _padded_host(values, counts, skip, rows, columns):
    x = values[: len(counts), skip : skip + columns]
    out = np.zeros((rows, columns), np.float32)
    keep = np.arange(x.shape[1]) < counts[:, None]
    np.copyto(out[: len(counts), : x.shape[1]], x, casting="unsafe", where=keep)
    return out


@partial(jax.jit, static_argnums=(2, 3, 4))
def _padded_device(values, counts, skip, rows, columns):
    """counts: int32[rows] (0 for padding rows), so only the values' shape can recompile."""
    x = values[:rows, skip : skip + columns].astype(jnp.float32)
    x = jnp.pad(x, ((0, rows - x.shape[0]), (0, columns - x.shape[1])))
    return jnp.where(jnp.arange(columns) < counts[:, None], x, 0.0)
