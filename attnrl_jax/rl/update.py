"""The policy update: mini-batches of problems, micro-batches of rows, exact token means.

One training step runs one epoch over its problems in mini-batches of `minibatch_problems`; each
mini-batch is one AdamW update. A mini-batch's rows (per path or tree-packed, packed.py) are cut
into micro-batches of a static `microbatch_rows` rows, padded with zero-weight rows; every
micro-batch returns the gradient of the weighted token SUM and the weight sum, and the update
divides the summed gradient by the summed weight once, so the result is the exact token mean over
the mini-batch whatever the micro-batching (and equal for both packings).

Importance correction (loss.tis_cap > 0, rl/loss.py): before the first update of a step, one
forward of the step's params over every micro-batch gives the proximal log-probs (theta_k, the
trainer's own numerics); the rows' stored log-probs (sampler / scoring pass) are the behaviour
policy. The same pass measures how far they are apart (AGREEMENT metrics).

Static shapes: micro-batches are [microbatch_rows, T] with T a power of two (>= 16) and node
slots K a power of two (>= 8), fixed per step from its longest row, so a run compiles one program
per (T, K) pair it meets and nothing after warm-up. With `tokens_per_row` (padding-free rows,
packed.pack_rows) T is that budget on every step and rows are packed side by side into it, so
computed slots stay close to real tokens (the "slot_ratio" metric).

Numerics: gradients come back in the parameters' dtype, so float32 master weights (model
param_dtype) give float32 gradient sums across micro-batches and float32 AdamW moments, whatever
the computation dtype.

Memory: each micro-batch's gradient is added into the running sum inside the gradient program
(accumulate_gradients, the sum donated and kept in the params' shardings), so a device holds
one parameter-sized sum and no second gradient buffer; the KL term's frozen params are stored in
the computation dtype (reference_copy). Both are what lets the 7B paper config fit v6e-8
(BENCHMARKS.md, "Will the paper runs fit?").
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from attnrl_jax.buckets import padded_length, power_of_two
from attnrl_jax.models.config import ModelConfig
from attnrl_jax.models.lm import Params
from attnrl_jax.models.sharding import batch_sharding
from attnrl_jax.models.transfer import to_device
from attnrl_jax.rl.loss import LossConfig, LossTerms, metric_names, policy_loss
from attnrl_jax.rl.packed import TrainProblem, make_rows, pack_rows, row_logprobs, stack_rows
from attnrl_jax.rl.settings import OptimConfig

DEVICE_FIELDS = ("tokens", "positions", "nodes", "predictor", "ancestors")
LOSS_FIELDS = ("weights", "advantages", "old_logp")
# behaviour (sampler) vs proximal (trainer) log-probs over trained tokens, with tis_cap > 0:
# mean |log pi_behaviour - log pi_prox|, max pi_prox / pi_behaviour, fraction above tis_cap
AGREEMENT = ("rollout/logp_diff_mean", "rollout/ratio_max", "rollout/tis_truncated_frac")


def make_optimizer(optim: OptimConfig) -> optax.GradientTransformation:
    return optax.chain(
        optax.clip_by_global_norm(optim.grad_clip),
        optax.adamw(optim.learning_rate, optim.b1, optim.b2, weight_decay=optim.weight_decay),
    )


@partial(jax.jit, static_argnames=("cfg",))
def reference_logprobs(
    ref_params: Params, batch: dict, temperature: jax.Array, *, cfg: ModelConfig
) -> jax.Array:
    """Log-probs [m, T] of the row tokens under `ref_params`: the frozen reference policy (the KL
    term) or the step's first params (the proximal policy of the importance correction).

    Its own program rather than part of microbatch_gradients, so the trainer can time the
    reference forward as a phase; the arithmetic is the same.
    """
    return row_logprobs(ref_params, batch, temperature, cfg=cfg)[0]


def reference_copy(params: Params, cfg: ModelConfig) -> Params:
    """The frozen reference policy of the KL term: a copy of `params` (updates donate the
    params' buffers), stored in the computation dtype when that is narrower than the weights'.

    Under mixed precision (bfloat16 compute, float32 master weights) that halves its memory
    (1.8 GiB per chip for the 7B model on 8 chips) and changes no log-prob: the forward casts
    every weight to the computation dtype before using it (models/decoder.py, the fused LM
    head), so the reference forward sees the same bfloat16 values either way.
    """
    narrow = jnp.dtype(cfg.compute_dtype)
    if narrow.itemsize >= jnp.dtype(cfg.weight_dtype).itemsize:
        return jax.tree.map(jnp.copy, params)
    return jax.tree.map(lambda x: x.astype(narrow), params)  # keeps each leaf's sharding


@partial(jax.jit, static_argnames=("cfg", "loss"))
def microbatch_gradients(
    params: Params,
    batch: dict,
    temperature: jax.Array,
    ref_logp: jax.Array | None,
    prox_logp: jax.Array | None = None,
    *,
    cfg: ModelConfig,
    loss: LossConfig,
):
    """Gradient of the weighted loss SUM of one micro-batch, and its LossTerms (sums).

    batch: stack_rows arrays [m, T] (ancestors [m, K, K]). temperature: float32 scalar, the
    sampling temperature: new, reference and behaviour log-probs (and the entropy) are all of
    softmax(logits / temperature), so the importance ratio compares like with like. ref_logp:
    [m, T] from reference_logprobs, None when loss.kl_weight == 0 (no reference forward runs).
    prox_logp: [m, T] proximal log-probs (reference_logprobs of the step's first params), None
    when loss.tis_cap == 0.
    """

    def total(p):
        new, ent = row_logprobs(p, batch, temperature, cfg=cfg)
        if loss.entropy_weight == 0:
            ent = jax.lax.stop_gradient(ent)
        terms = policy_loss(
            new, batch["old_logp"], batch["advantages"], batch["weights"], ref_logp, ent,
            prox_logp, config=loss,
        )  # fmt: skip
        return terms.total, terms

    grads, terms = jax.grad(total, has_aux=True)(params)
    return grads, terms


def _pinned(tree, pin: tuple | None):
    """tree with its leaves constrained to the shardings `pin` (None: left to the compiler)."""
    if pin is None:
        return tree
    leaves, treedef = jax.tree.flatten(tree)
    return jax.tree.unflatten(treedef, list(map(jax.lax.with_sharding_constraint, leaves, pin)))


@partial(jax.jit, static_argnames=("cfg", "loss", "pin"), donate_argnums=0)
def accumulate_gradients(
    sums,
    params: Params,
    batch: dict,
    temperature: jax.Array,
    ref_logp: jax.Array | None,
    prox_logp: jax.Array | None = None,
    *,
    cfg: ModelConfig,
    loss: LossConfig,
    pin: tuple | None = None,
):
    """sums + (gradients, LossTerms) of one micro-batch (microbatch_gradients): the running
    sums across micro-batches, updated inside the gradient program.

    sums: (gradient sum shaped like params, LossTerms), donated, so the new sums take their
    buffers: no separate accumulation program, no second copy of the sum. pin: the shardings
    of the params' leaves; the gradient sum is kept in them (left to itself the compiler
    may return gradients replicated over an axis the params are split on, which costs memory
    and breaks the donation, whose output must match the input's layout).
    """
    grads, terms = microbatch_gradients(
        params, batch, temperature, ref_logp, prox_logp, cfg=cfg, loss=loss
    )
    grad_sum, term_sums = sums
    grad_sum = _pinned(jax.tree.map(jnp.add, grad_sum, grads), pin)
    return grad_sum, jax.tree.map(jnp.add, term_sums, terms)


def zero_sums(params: Params, loss: LossConfig, pin: tuple | None = None):
    """The running sums before the first micro-batch: zero gradients in the params' dtypes
    (float32 master weights: float32 sums) and shardings (pin), zero LossTerms."""
    zero = lambda: jnp.zeros((), jnp.float32)  # noqa: E731 (one buffer each: all are donated)
    terms = LossTerms(zero(), zero(), {name: zero() for name in metric_names(loss)})
    return _zeros_like(params, pin=pin), terms


@partial(jax.jit, static_argnames="pin")
def _zeros_like(params: Params, *, pin: tuple | None = None):
    return _pinned(jax.tree.map(jnp.zeros_like, params), pin)


@partial(jax.jit, static_argnames="cap")
def _agreement(prox: jax.Array, batch: dict, *, cap: float) -> jax.Array:
    """float32[4] of one micro-batch [m, T]: token weight sum, weighted sum of |old - prox|,
    max over live tokens of prox - old, weighted count of tokens whose behaviour weight
    min(pi_prox / pi_old, cap) truncates."""
    w = batch["weights"]
    live = w != 0
    diff = jnp.where(live, prox - batch["old_logp"], 0.0)
    top = jnp.max(jnp.where(live, diff, -jnp.inf))
    return jnp.stack(
        [jnp.sum(w), jnp.sum(w * jnp.abs(diff)), top, jnp.sum(w * (diff > jnp.log(cap)))]
    )


@partial(jax.jit, static_argnames=("optim", "pin"), donate_argnums=(0, 1))
def apply_gradients(
    params, opt_state, grad_sum, denominator, *, optim: OptimConfig, pin: tuple | None = None
):
    """One AdamW step on grad_sum / denominator (the token-mean gradient); returns the new params,
    optimizer state and the pre-clip gradient norm.

    pin: the shardings of the leaves of (params, opt_state), kept for the outputs. Left to
    itself the compiler may place an output otherwise (a replicated norm scale came back split
    over fsdp), and every later program would then recompile for the new placement.
    """
    grads = jax.tree.map(lambda g: g / denominator, grad_sum)
    updates, opt_state = make_optimizer(optim).update(grads, opt_state, params)
    norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads)))
    out = _pinned((optax.apply_updates(params, updates), opt_state), pin)
    return *out, norm


def row_length_bucket(n: int, granule: int = 128) -> int:
    """Padded row length: a power of two (>= 16) up to `granule`, then a multiple of it (a
    600-token packed row pads to 640, not 1024)."""
    return padded_length(n, granule)


def _device_batch(arrays: dict, mesh: Mesh | None) -> dict:
    arrays = {k: arrays[k] for k in DEVICE_FIELDS + LOSS_FIELDS}
    if mesh is None:
        return jax.device_put(arrays)
    return {k: to_device(v, batch_sharding(mesh, v.ndim)) for k, v in arrays.items()}


def run_updates(
    params: Params,
    opt_state,
    ref_params: Params | None,
    problems: Sequence[TrainProblem],
    *,
    cfg: ModelConfig,
    loss: LossConfig,
    optim: OptimConfig,
    packing: str,
    minibatch_problems: int,
    microbatch_rows: int,
    temperature: float = 1.0,
    mesh: Mesh | None = None,
    timer: Callable[[str], AbstractContextManager] | None = None,
    tokens_per_row: int = 0,
):
    """One epoch over `problems`; returns (params, opt_state, metrics of the whole step).

    Metrics, the same keys on every step: token means over the step of the loss terms ("loss"
    and loss.metric_names: "pg_loss", "clip_frac", "kl", ...) and "grad_norm" (mean over
    updates), all None when no update ran (every problem filtered: there is no loss to report,
    and 0 would read as a measured value); "updates", "rows", "row_tokens" (tokens the model
    processed), "trained_tokens" (the token weight sum), "slot_ratio" (token slots computed,
    padding included, / row tokens). temperature: the sampling temperature. tokens_per_row > 0:
    padding-free rows, each mini-batch's rows packed side by side into rows of that many tokens
    (rounded up by row_length_bucket; pack_rows); 0: one row per row, padded to the longest.
    timer: `timer("reference")` wraps each reference forward (waited for, so the time is real),
    e.g. the trainer's PhaseTimes; `timer("proximal")` the proximal pass (loss.tis_cap > 0),
    which also gives the AGREEMENT metrics (keys present iff loss.tis_cap > 0).
    """
    phase = timer or (lambda name: contextlib.nullcontext())
    metrics: dict = dict.fromkeys(("loss", *metric_names(loss), "grad_norm"))
    metrics.update(updates=0, rows=0, row_tokens=0, trained_tokens=0.0, slot_ratio=None)
    if loss.proximal:
        metrics.update(dict.fromkeys(AGREEMENT))
    budget = row_length_bucket(tokens_per_row) if tokens_per_row > 0 else 0
    row_minis = [  # tree rows longer than the budget are split (packed.tree_rows)
        make_rows(problems[first : first + minibatch_problems], packing, budget)
        for first in range(0, len(problems), minibatch_problems)
    ]
    num_rows = sum(len(mini) for mini in row_minis)
    if not num_rows:
        return params, opt_state, metrics
    row_tokens = int(sum(mini.lengths.sum() for mini in row_minis))
    if budget:
        length = budget
        row_minis = [pack_rows(mini, length) for mini in row_minis]
    else:
        length = row_length_bucket(max(int(mini.lengths.max(initial=0)) for mini in row_minis))
    nodes = power_of_two(max(int(mini.num_nodes.max(initial=0)) for mini in row_minis), 8)
    temp = jnp.float32(temperature)
    minis = [  # per mini-batch, its micro-batches on the device
        [
            _device_batch(stack_rows(mini[m : m + microbatch_rows], microbatch_rows, length, nodes),
                          mesh)
            for m in range(0, len(mini), microbatch_rows)
        ]
        for mini in row_minis
    ]  # fmt: skip
    slots = sum(len(mini) for mini in minis) * microbatch_rows * length
    prox = None
    if loss.proximal:  # every micro-batch at theta_k, before the first update changes it
        with phase("proximal"):
            prox = [[reference_logprobs(params, b, temp, cfg=cfg) for b in mini] for mini in minis]
            jax.block_until_ready(prox)
        metrics.update(_agreement_metrics(prox, minis, loss.tis_cap))
    sums: dict[str, float] = {}
    norms = []
    for i, mini in enumerate(minis):
        # pins: the params' shardings (the gradient sum's) and the AdamW state's
        pin = state_pin = None
        if mesh is not None:
            pin = tuple(x.sharding for x in jax.tree.leaves(params))
            state_pin = pin + tuple(x.sharding for x in jax.tree.leaves(opt_state))
        acc = zero_sums(params, loss, pin)
        for j, batch in enumerate(mini):
            ref = None
            if loss.kl_weight > 0:
                if timer is not None and j > 0:
                    jax.block_until_ready(acc)  # queued gradient work is not reference time
                with phase("reference"):
                    ref = reference_logprobs(ref_params, batch, temp, cfg=cfg)
                    ref.block_until_ready()
            p = None if prox is None else prox[i][j]
            acc = accumulate_gradients(
                acc, params, batch, temp, ref, p, cfg=cfg, loss=loss, pin=pin
            )
        (grad_sum, terms), acc = acc, None  # the sum is freed once applied, before the next
        denominator = float(terms.denominator)
        if denominator == 0:
            continue
        params, opt_state, norm = apply_gradients(
            params, opt_state, grad_sum, jnp.float32(denominator), optim=optim, pin=state_pin
        )
        del grad_sum
        norms.append(float(norm))
        for k, v in {"loss": terms.total, "tokens": terms.denominator, **terms.metrics}.items():
            sums[k] = sums.get(k, 0.0) + float(v)
    tokens = sums.pop("tokens", 0.0)
    if tokens:
        metrics.update({k: v / tokens for k, v in sums.items()})
        metrics["grad_norm"] = float(np.mean(norms))
    metrics.update(
        updates=len(norms),
        rows=num_rows,
        row_tokens=row_tokens,
        trained_tokens=tokens,
        slot_ratio=slots / row_tokens,
    )
    return params, opt_state, metrics


def _agreement_metrics(prox: list, minis: list, cap: float) -> dict:
    """AGREEMENT over every trained token of the step (None when no token has weight)."""
    parts = np.stack(
        jax.device_get(
            [
                _agreement(p, b, cap=cap)
                for ps, bs in zip(prox, minis, strict=True)
                for p, b in zip(ps, bs, strict=True)
            ]
        )
    )
    tokens = float(parts[:, 0].sum())
    if tokens == 0:
        return dict.fromkeys(AGREEMENT)
    values = (parts[:, 1].sum() / tokens, np.exp(parts[:, 2].max()), parts[:, 3].sum() / tokens)
    return {k: float(v) for k, v in zip(AGREEMENT, values, strict=True)}
