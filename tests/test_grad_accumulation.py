"""Gradient sums across micro-batches kept inside the gradient program (update.accumulate_gradients)
and the bfloat16 reference copy (update.reference_copy): the memory savings that let the 7B paper
config fit v6e-8 (BENCHMARKS.md), with the numbers unchanged.

Tolerances: the running sum adds each micro-batch's gradient in the same order as a separate
add would, so it differs from the separate-sum path only in how XLA fuses the gradient program:
float32 rounding, 1e-6 of the largest entry (the parameters after a few AdamW steps: a few
ulps). The reference log-probs are compared exactly: the forward casts every weight to
bfloat16 before use, so a bfloat16 copy feeds it the same values.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnrl_jax.aot_phases import per_device_bytes
from attnrl_jax.buckets import power_of_two
from attnrl_jax.models.lm import init_params
from attnrl_jax.models.sharding import make_mesh, optimizer_state_shardings, param_shardings
from attnrl_jax.rl.loss import LossConfig
from attnrl_jax.rl.packed import make_rows, stack_rows
from attnrl_jax.rl.settings import OptimConfig
from attnrl_jax.rl.update import (
    _device_batch,
    accumulate_gradients,
    apply_gradients,
    make_optimizer,
    microbatch_gradients,
    reference_copy,
    reference_logprobs,
    row_length_bucket,
    run_updates,
    zero_sums,
)
from tests.test_rl_packed import CFG, random_problem

# the paper's: reference log-probs and the "kl" term, the importance correction (proximal pass)
LOSS = LossConfig(kl_weight=0.001)
OPTIM = OptimConfig(learning_rate=1e-3, grad_clip=1.0)
MICRO = 4
STEPS = 3
TEMP = jnp.float32(1.0)


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(5)
    problems = [random_problem(rng, merge) for merge in (True, False)]
    params = init_params(CFG, jax.random.key(2), std=0.3)
    return params, problems


def micro_batches(problems, mesh=None) -> list[dict]:
    rows = make_rows(problems, "tree")
    length = row_length_bucket(max(len(r.tokens) for r in rows))
    nodes = power_of_two(max(len(r.ancestors) for r in rows), 8)
    return [
        _device_batch(stack_rows(rows[m : m + MICRO], MICRO, length, nodes), mesh)
        for m in range(0, len(rows), MICRO)
    ]


def close(got, want, scale: float) -> None:
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6 * scale)


def test_running_sum_equals_summed_micro_batch_gradients(setup):
    params, problems = setup
    batches = micro_batches(problems)
    assert len(batches) >= 2
    ref = reference_copy(params, CFG)
    want = None
    acc = zero_sums(params, LOSS)
    for batch in batches:
        ref_logp = reference_logprobs(ref, batch, TEMP, cfg=CFG)
        args = (params, batch, TEMP, ref_logp, ref_logp)  # proximal = reference at step 0
        got = microbatch_gradients(*args, cfg=CFG, loss=LOSS)
        want = got if want is None else jax.tree.map(jnp.add, want, got)
        acc = accumulate_gradients(acc, *args, cfg=CFG, loss=LOSS)
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(want[0]))
    close(acc[0], want[0], scale)
    assert set(acc[1].metrics) == set(want[1].metrics) and "kl" in acc[1].metrics
    close(acc[1], want[1], max(abs(float(x)) for x in jax.tree.leaves(want[1])))


def separate_sum_updates(params, opt_state, problems):
    """The update as it ran before the running sum moved into the gradient program: each
    micro-batch's gradients summed by a separate add, one AdamW step per step's mini-batch."""
    ref = jax.tree.map(jnp.copy, params)
    batches = micro_batches(problems)
    for _ in range(STEPS):
        acc = None
        # the importance correction's proximal log-probs: the step's params, before the update
        prox = [reference_logprobs(params, batch, TEMP, cfg=CFG) for batch in batches]
        for batch, prox_logp in zip(batches, prox, strict=True):
            ref_logp = reference_logprobs(ref, batch, TEMP, cfg=CFG)
            got = microbatch_gradients(params, batch, TEMP, ref_logp, prox_logp, cfg=CFG, loss=LOSS)
            acc = got if acc is None else jax.tree.map(jnp.add, acc, got)
        denominator = jnp.float32(acc[1].denominator)
        params, opt_state, _ = apply_gradients(params, opt_state, acc[0], denominator, optim=OPTIM)
    return params


def test_updates_over_steps_equal_the_separate_sum(setup):
    base, problems = setup
    copy = lambda: jax.tree.map(jnp.copy, base)  # noqa: E731 (updates donate the params)
    want = separate_sum_updates(copy(), make_optimizer(OPTIM).init(base), problems)
    params, opt_state, ref = copy(), make_optimizer(OPTIM).init(base), reference_copy(base, CFG)
    for _ in range(STEPS):
        params, opt_state, metrics = run_updates(
            params, opt_state, ref, problems, cfg=CFG, loss=LOSS, optim=OPTIM, packing="tree",
            minibatch_problems=len(problems), microbatch_rows=MICRO,
        )  # fmt: skip
        assert metrics["updates"] == 1
    # 5e-7: a few float32 ulps of the weights (|w| < 2, measured: one ulp on one entry); a
    # wrong or missing AdamW step is off by about lr = 1e-3
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=5e-7)
    moved = max(
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(*map(jax.tree.leaves, (params, base)), strict=True)
    )
    assert moved > STEPS * OPTIM.learning_rate / 2  # the steps were applied


def laid_out_as(tree, shardings) -> bool:
    leaves = jax.tree.leaves(tree)
    return len(leaves) == len(shardings) and all(
        x.sharding.is_equivalent_to(s, x.ndim) for x, s in zip(leaves, shardings, strict=True)
    )


def test_running_sum_is_donated_and_sharded_like_the_params(setup):
    """On a 1x4x2 mesh the gradient program writes the new sum into the old sum's buffers
    (memory_analysis aliases them) and the sum keeps the params' shardings, so it costs one
    parameter-sized buffer per device, not a replicated copy plus an output copy."""
    base, problems = setup
    mesh = make_mesh(1, 4, 2)
    shardings = param_shardings(CFG, mesh)
    params = jax.device_put(jax.tree.map(jnp.copy, base), shardings)  # the update donates
    pin = tuple(x.sharding for x in jax.tree.leaves(params))
    acc = zero_sums(params, LOSS, pin)
    assert laid_out_as(acc[0], pin)
    batch = micro_batches(problems, mesh)[0]
    ref_logp = reference_logprobs(params, batch, TEMP, cfg=CFG)
    args = (acc, params, batch, TEMP, ref_logp)
    compiled = accumulate_gradients.lower(*args, cfg=CFG, loss=LOSS, pin=pin).compile()
    grad_bytes = per_device_bytes(acc[0])
    assert compiled.memory_analysis().alias_size_in_bytes >= grad_bytes
    out = accumulate_gradients(*args, cfg=CFG, loss=LOSS, pin=pin)
    assert all(x.is_deleted() for x in jax.tree.leaves(acc[0]))  # donated
    assert laid_out_as(out[0], pin)
    assert per_device_bytes(out[0]) == per_device_bytes(params)
    # the trainer's path on this mesh: one update, with the AdamW state placed as it places it
    opt_state = jax.jit(make_optimizer(OPTIM).init)(params)
    opt_state = jax.device_put(
        opt_state, optimizer_state_shardings(opt_state, params, shardings, mesh)
    )
    _, _, metrics = run_updates(
        params, opt_state, reference_copy(params, CFG), problems, cfg=CFG, loss=LOSS,
        optim=OPTIM, packing="tree", minibatch_problems=2, microbatch_rows=MICRO, mesh=mesh,
    )  # fmt: skip
    assert metrics["updates"] == 1 and np.isfinite(metrics["loss"])


def test_bfloat16_reference_copy_gives_the_same_logprobs(setup):
    base, problems = setup
    mixed = CFG.replace(dtype="bfloat16", param_dtype="float32")
    ref = reference_copy(base, mixed)
    assert {x.dtype for x in jax.tree.leaves(ref)} == {jnp.dtype(jnp.bfloat16)}
    assert per_device_bytes(ref) * 2 == per_device_bytes(base)
    batch = micro_batches(problems)[0]
    want = reference_logprobs(base, batch, TEMP, cfg=mixed)
    np.testing.assert_array_equal(reference_logprobs(ref, batch, TEMP, cfg=mixed), want)
    # all-float32 numerics keep a float32 copy (a distinct buffer: updates donate the params)
    same = reference_copy(base, CFG)
    assert {x.dtype for x in jax.tree.leaves(same)} == {jnp.dtype(jnp.float32)}
    assert all(a is not b for a, b in zip(*map(jax.tree.leaves, (same, base)), strict=True))
