"""Mixed precision: bfloat16 matmuls over float32 master weights, AdamW moments and gradient sums.

The paper configs train this way; these tests pin what it must keep: updates at lr 1e-6 reach
the float32 weights (bfloat16 storage would round almost all of them away) and a few steps stay
close to an all-float32 run.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnrl_jax.models.config import ModelConfig
from attnrl_jax.models.lm import init_params
from attnrl_jax.rl.loss import LossConfig
from attnrl_jax.rl.settings import ConfigError, OptimConfig, resolve
from attnrl_jax.rl.update import make_optimizer, run_updates
from tests.test_configs import fill_required, load
from tests.test_rl_packed import random_problem

F32 = ModelConfig(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
)
MIXED = F32.replace(dtype="bfloat16", param_dtype="float32")
OPTIM = OptimConfig(learning_rate=1e-6, weight_decay=0.01, grad_clip=1.0)
# tis_cap 0: the ratio against the stored log-probs alone, so the comparison is about precision
LOSS = LossConfig(kl_weight=0.0, tis_cap=0.0)
STEPS = 3


def _train(cfg, params, problems):
    params = jax.tree.map(jnp.copy, params)  # apply_gradients donates its inputs
    opt_state = make_optimizer(OPTIM).init(params)
    for _ in range(STEPS):
        params, opt_state, metrics = run_updates(
            params, opt_state, None, problems, cfg=cfg, loss=LOSS, optim=OPTIM,
            packing="tree", minibatch_problems=2, microbatch_rows=4,
        )  # fmt: skip
    return params, opt_state, metrics


@pytest.fixture(scope="module")
def runs():
    rng = np.random.default_rng(0)
    problems = [random_problem(rng) for _ in range(2)]
    params = init_params(F32, jax.random.key(1), std=0.3)
    return params, _train(F32, params, problems), _train(MIXED, params, problems)


def _flat(tree) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def test_master_weights_and_moments_stay_float32(runs):
    _, _, (params, opt_state, metrics) = runs
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    assert {x.dtype for x in jax.tree.leaves(opt_state) if x.ndim} == {jnp.dtype(jnp.float32)}
    assert metrics["updates"] == 1 and np.isfinite(metrics["loss"])


def test_lr_1e6_updates_change_float32_master_weights(runs):
    """Every matrix entry moves (AdamW steps are about lr each), while a bfloat16 copy of the
    same weights would keep almost all of them: that is why storage stays float32."""
    initial, _, (mixed, _, _) = runs
    p0, p1 = _flat(initial), _flat(mixed)
    moved = p1 != p0
    assert moved.mean() > 0.95
    step = np.abs(p1 - p0)[moved]
    assert np.median(step) == pytest.approx(STEPS * OPTIM.learning_rate, rel=0.5)
    as_bf16 = lambda x: np.asarray(jnp.asarray(x, jnp.bfloat16), np.float64)  # noqa: E731
    assert (as_bf16(p1) != as_bf16(p0)).mean() < 0.05


def test_mixed_updates_stay_close_to_float32_updates(runs):
    """The mixed run's weight change agrees with the float32 run's. AdamW steps each entry by
    about lr whatever its gradient's size, so an entry whose float32 gradient is within
    bfloat16 noise of zero can step the other way: measured 0.21 relative L2 difference here
    (random std-0.3 weights, 3 steps), with nearly every moved entry's direction agreeing."""
    initial, (ref, _, ref_metrics), (mixed, _, metrics) = runs
    d_ref = _flat(ref) - _flat(initial)
    d_mixed = _flat(mixed) - _flat(initial)
    assert np.linalg.norm(d_mixed - d_ref) / np.linalg.norm(d_ref) < 0.3
    moved = d_ref != 0
    assert (np.sign(d_mixed[moved]) == np.sign(d_ref[moved])).mean() > 0.97
    # the loss is computed from bf16 logits of float32 statistics: within bf16 rounding
    assert metrics["loss"] == pytest.approx(ref_metrics["loss"], abs=2e-2)
    assert metrics["grad_norm"] == pytest.approx(ref_metrics["grad_norm"], rel=2e-2)


def test_config_keys_select_mixed_precision_and_refuse_low_precision_masters():
    run = resolve(fill_required(load("r1_distill_qwen_1p5b.py")))
    assert (run.model.dtype, run.model.param_dtype) == ("bfloat16", "float32")
    c = fill_required(load("demo.py"))
    c.model.param_dtype = "bfloat16"
    with pytest.raises(ConfigError, match="model.param_dtype below float32"):
        resolve(c)
