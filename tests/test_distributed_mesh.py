"""One update (rl/update.py run_updates, the trainer's path) on meshes of the 8 forced CPU devices
gives the loss, gradient and parameters of the same update on one device.

Tolerances, and why: float32 sums over devices run in another order than on one device, so
losses and gradient norms agree to a relative 1e-5 (measured: about 1e-7). The parameters after
one AdamW step are checked to 5% of the learning rate: Adam's first step moves a weight by about
lr * g / (|g| + eps), which turns the reduction-order noise of a near-zero gradient into up to
about 1% of lr (measured 1.1e-4 at lr 1e-2), while a wrong or missing update is off by 1-2 lr.
Adam is blind to the gradient's scale, so the gradient itself is compared too (to 1e-5 of its
largest entry): that catches a wrong token count on a sharded batch.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_rl_packed import CFG, random_problem

from attnrl_jax.buckets import power_of_two
from attnrl_jax.models.lm import init_params
from attnrl_jax.models.sharding import make_mesh, optimizer_state_shardings, param_shardings
from attnrl_jax.rl.loss import LossConfig
from attnrl_jax.rl.packed import make_rows, stack_rows
from attnrl_jax.rl.settings import OptimConfig
from attnrl_jax.rl.update import (
    _device_batch,
    make_optimizer,
    microbatch_gradients,
    row_length_bucket,
    run_updates,
)

OPTIM = OptimConfig(learning_rate=1e-2)
LOSS = LossConfig(kl_weight=0.0)
MICRO = 8  # a multiple of data x fsdp for every mesh below


@pytest.fixture(scope="module")
def problems():
    rng = np.random.default_rng(0)
    return [random_problem(rng, merge=True)]


def one_update(problems, mesh):
    """(params after one update, metrics, gradient of the first micro-batch), all on the host."""
    base = init_params(CFG, jax.random.key(1), std=0.3)
    params, ref = base, jax.tree.map(jnp.copy, base)
    opt_state = jax.jit(make_optimizer(OPTIM).init)(params)
    if mesh is not None:
        shardings = param_shardings(CFG, mesh)
        params, ref = jax.device_put((params, ref), (shardings, shardings))
        opt_state = jax.device_put(
            opt_state, optimizer_state_shardings(opt_state, params, shardings, mesh)
        )
    rows = make_rows(problems, "tree")
    length = row_length_bucket(max(len(r.tokens) for r in rows))
    nodes = power_of_two(max(len(r.ancestors) for r in rows), 8)
    batch = _device_batch(stack_rows(rows[:MICRO], MICRO, length, nodes), mesh)
    temperature = jnp.float32(1.0)  # kl_weight 0: no reference log-probs
    grads, _ = microbatch_gradients(params, batch, temperature, None, cfg=CFG, loss=LOSS)
    grads = jax.device_get(grads)
    params, _, metrics = run_updates(
        params, opt_state, ref, problems, cfg=CFG, loss=LOSS, optim=OPTIM, packing="tree",
        minibatch_problems=len(problems), microbatch_rows=MICRO, mesh=mesh,
    )  # fmt: skip
    return jax.device_get(params), metrics, grads


@pytest.fixture(scope="module")
def single(problems):
    return one_update(problems, None)


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2), (1, 4, 2)])
def test_sharded_update_equals_one_device(problems, single, shape):
    params1, metrics1, grads1 = single
    params, metrics, grads = one_update(problems, make_mesh(*shape))
    assert metrics1["updates"] == metrics["updates"] == 1
    for key in ("loss", "pg_loss", "entropy", "grad_norm", "trained_tokens"):
        assert metrics[key] == pytest.approx(metrics1[key], rel=1e-5), key
    scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(grads1))
    for g, g1 in zip(jax.tree.leaves(grads), jax.tree.leaves(grads1), strict=True):
        np.testing.assert_allclose(g, g1, rtol=0, atol=1e-5 * scale)
    for p, p1 in zip(jax.tree.leaves(params), jax.tree.leaves(params1), strict=True):
        np.testing.assert_allclose(p, p1, rtol=0, atol=0.05 * OPTIM.learning_rate)
