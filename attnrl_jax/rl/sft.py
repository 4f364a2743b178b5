"""Supervised warm start: next-token cross-entropy on response tokens.

RL on a 0/1 reward only learns when some samples are right, so a policy that starts at zero
needs a warm start; the demo trains its tiny random model this way on reference solutions
before AttnRL takes over. The loss is the token mean over response tokens (and the closing
EOS), never over the prompt.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from attnrl_jax.models.attention import causal_attend
from attnrl_jax.models.config import ModelConfig
from attnrl_jax.models.lm import Params, default_positions, forward_hidden
from attnrl_jax.scoring.logprobs import token_logprobs_entropies


def pack_examples(
    prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], eos_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded tokens [N, T] int32 (prompt + response + EOS) and the loss mask [N, T] bool
    marking the response and EOS tokens. T is the longest example rounded up to 16."""
    lengths = [len(p) + len(r) + 1 for p, r in zip(prompts, responses, strict=True)]
    width = -(-max(lengths) // 16) * 16
    tokens = np.full((len(lengths), width), eos_id, np.int32)
    mask = np.zeros((len(lengths), width), bool)
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        tokens[i, : lengths[i]] = [*p, *r, eos_id]
        mask[i, len(p) : lengths[i]] = True
    return tokens, mask


def sft_loss(params: Params, cfg: ModelConfig, tokens: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean negative log-likelihood of the masked tokens; tokens, mask [B, T] (right-padded)."""
    segment_ids = jnp.ones_like(tokens)  # right padding sits after every target: no mask needed
    hidden, _ = forward_hidden(
        params, cfg, tokens, default_positions(tokens), causal_attend(segment_ids)
    )
    logprobs, _ = token_logprobs_entropies(params, hidden, tokens, segment_ids > 0, chunk=512)
    return -jnp.sum(logprobs * mask) / jnp.maximum(jnp.sum(mask), 1)


@partial(jax.jit, static_argnames=("cfg", "optimizer"), donate_argnums=(0, 1))
def sft_step(params, opt_state, tokens, mask, *, cfg: ModelConfig, optimizer):
    """One optimizer step on a batch; returns (params, opt_state, loss)."""
    loss, grads = jax.value_and_grad(sft_loss)(params, cfg, tokens, mask)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


def supervised_warm_start(
    params: Params,
    cfg: ModelConfig,
    tokens: np.ndarray,
    mask: np.ndarray,
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int = 0,
    on_step: Callable[[int, float], None] | None = None,
) -> Params:
    """`steps` AdamW steps (linear warm-up, cosine decay) on random batches of the examples.

    tokens, mask: pack_examples output [N, T]; on_step(step, loss) is called after each step.
    """
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, learning_rate, min(20, steps // 10), steps, learning_rate / 10
    )
    optimizer = optax.adamw(schedule, weight_decay=0.0)
    opt_state = optimizer.init(params)
    rng = np.random.default_rng(seed)
    for step in range(steps):
        rows = rng.choice(len(tokens), batch_size, replace=len(tokens) < batch_size)
        params, opt_state, loss = sft_step(
            params, opt_state, tokens[rows], mask[rows], cfg=cfg, optimizer=optimizer
        )
        if on_step is not None:
            on_step(step + 1, float(loss))
    return params
