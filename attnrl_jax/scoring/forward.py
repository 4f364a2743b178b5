"""The scoring forward: per-token log-probs, entropies and per-step FCI in one compiled graph.

`score_batch` is the jitted device function over padded arrays; `score_sequences` is the host
entry point over (prompt ids, response ids) pairs: it segments steps, pads to buckets (batch,
length, step count, so the compiled shapes stay few), runs `score_batch` and returns unpadded
numpy results per sequence.

With `with_fci=False` the function is exactly the plain forward (`causal_attend`) plus the chunked
log-probs; with FCI the attention kernel is `fci.fci_attend`, the same kernel with its attention
probabilities also folded into the FCI state (see fci.py for why no step matrix is needed).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from attnrl_jax.buckets import is_power_of_two, padded_length, power_of_two
from attnrl_jax.models.attention import causal_attend
from attnrl_jax.models.config import ModelConfig
from attnrl_jax.models.lm import Params, default_positions, forward_hidden
from attnrl_jax.models.transfer import mesh_of, rows_to_device, to_host
from attnrl_jax.scoring.fci import FciConfig, fci_attend, finish_fci, initial_state
from attnrl_jax.scoring.logprobs import token_logprobs_entropies
from attnrl_jax.scoring.steps import SeparatorIds, StepLayout, pad_step_ids, segment_batch


@dataclass(frozen=True)
class ScoringConfig:
    """Static settings of the scoring forward (hashable: a static jit argument).

    with_fci: also compute FCI (else the plain forward + log-probs, and `fci` is None).
    fci: pooling, delta, aggregation and layer subset.
    query_chunk: attention query rows per chunk; probabilities live as [B, H, chunk, T].
    logit_chunk: token positions per vocabulary-projection chunk; logits live as [chunk, V].
    Both chunks are powers of two, so they divide every `length_bucket`.
    """

    with_fci: bool = True
    fci: FciConfig = field(default_factory=FciConfig)
    query_chunk: int = 512
    logit_chunk: int = 256

    def __post_init__(self):
        for name in ("query_chunk", "logit_chunk"):
            if not is_power_of_two(getattr(self, name)):
                raise ValueError(f"{name} must be a power of two, got {getattr(self, name)}")


class ScoreOutput(NamedTuple):
    """Per-token arrays aligned with the input tokens, per-step FCI with step 0 first.

    logprobs, entropies: [B, T] float32; entry t is about the distribution that predicts token t
    (0 at t = 0 and at padding). fci: [B, S_max] float32, or None without FCI.
    """

    logprobs: jax.Array
    entropies: jax.Array
    fci: jax.Array | None


@functools.partial(jax.jit, static_argnames=("cfg", "config", "max_steps"))
def score_batch(
    params: Params,
    tokens: jax.Array,
    step_ids: jax.Array,
    think_end_step: jax.Array,
    temperature: jax.Array | float = 1.0,
    *,
    cfg: ModelConfig,
    config: ScoringConfig,
    max_steps: int,
) -> ScoreOutput:
    """Scores B right-padded sequences.

    tokens: [B, T] int32. step_ids: [B, T] int32, each position's step (0 = prompt), -1 past the
    sequence (as `steps.pad_step_ids` builds them). think_end_step: [B] int32, -1 = none.
    temperature: float32 scalar (traced: any value, one program); log-probs and entropies are of
    softmax(logits / temperature), the distribution the sampler draws from at that temperature.
    max_steps: S_max, the number of step slots (>= 1 + the largest S).
    """
    valid = step_ids >= 0
    positions = default_positions(tokens)
    if config.with_fci:
        attend = fci_attend(step_ids, config.fci, cfg.num_layers, max_steps, config.query_chunk)
        state = initial_state(tokens.shape[0], max_steps)
    else:
        attend = causal_attend(valid.astype(jnp.int32), config.query_chunk)
        state = None
    hidden, state = forward_hidden(params, cfg, tokens, positions, attend, state)
    logprobs, entropies = token_logprobs_entropies(
        params, hidden, tokens, valid, config.logit_chunk, temperature
    )
    fci = finish_fci(state, think_end_step, config.fci, cfg.num_layers) if config.with_fci else None
    return ScoreOutput(logprobs, entropies, fci)


def length_bucket(n: int, granule: int = 1024) -> int:
    """Padded sequence length: the next power of two (at least 16) up to `granule`, then the
    next multiple of `granule` (a power of two), so a 9,216-token sequence costs 9,216, not 16,384.
    """
    return padded_length(n, granule)


@dataclass(frozen=True)
class ScoredSequence:
    """Results for one (prompt, response): response tokens only, steps with step 0 first.

    logprobs, entropies: float32[R]; fci: float32[S + 1] or None without FCI.
    """

    layout: StepLayout
    logprobs: np.ndarray
    entropies: np.ndarray
    fci: np.ndarray | None


def score_sequences(
    params: Params,
    cfg: ModelConfig,
    config: ScoringConfig,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    seps: SeparatorIds,
    batch_size: int = 8,
    temperature: float = 1.0,
) -> list[ScoredSequence]:
    """Scores each (prompt ids, response ids) pair; results in input order.

    Sequences are grouped by length into batches of at most `batch_size`; every batch of a call
    is padded to the same row count (batch_size, or the next power of two of the number of
    sequences when that is smaller: a short last batch does not compile a program of its own),
    a `length_bucket` and a power-of-two step-slot count. Prompts must be non-empty (the first
    response token is predicted from the last prompt token). temperature > 0: see `score_batch`
    (the trainer passes its sampling temperature, so behaviour log-probs match the sampler's).
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(f"sequence {i}: the prompt is empty (needs at least one token)")
    layouts = segment_batch([len(p) for p in prompts], responses, seps)
    totals = layouts.total_len
    order = np.argsort(totals, kind="stable")  # by length; ties in input order
    granule = max(1024, config.query_chunk, config.logit_chunk)
    results: list[ScoredSequence | None] = [None] * len(layouts)
    rows = min(batch_size, power_of_two(len(order)))
    mesh = mesh_of(params)  # the params' mesh: rows split like a training batch
    for first in range(0, len(order), batch_size):
        group = order[first : first + batch_size]
        length = length_bucket(int(totals[group].max()), granule)
        steps = pad_step_ids(layouts.take(group), total_len=length)
        step_ids = np.full((rows, length), -1, np.int32)  # padding rows: no positions
        step_ids[: len(group)] = steps.step_ids
        think = np.full(rows, -1, np.int32)
        think[: len(group)] = steps.think_end_step
        tokens = np.zeros((rows, length), np.int32)
        tokens[: len(group)][np.arange(length) < totals[group][:, None]] = np.concatenate(
            [np.zeros(0, np.int32)]
            + [x for i in group.tolist() for x in (prompts[i], responses[i])],
            dtype=np.int32,
            casting="unsafe",
        )
        out = to_host(
            score_batch(
                params,
                rows_to_device(tokens, mesh),
                rows_to_device(step_ids, mesh),
                rows_to_device(think, mesh),
                np.float32(temperature),
                cfg=cfg,
                config=config,
                max_steps=steps.max_steps,
            )
        )
        for row, i in enumerate(group.tolist()):
            lay = layouts[i]
            response = slice(lay.prompt_len, lay.total_len)
            results[i] = ScoredSequence(
                layout=lay,
                logprobs=np.asarray(out.logprobs[row, response]),
                entropies=np.asarray(out.entropies[row, response]),
                fci=None if out.fci is None else np.asarray(out.fci[row, : lay.num_steps + 1]),
            )
    return results
