"""Policy loss (ALGORITHM.md section 8) against an independent numpy reference, its gradient, exact
micro-batch accumulation, zero-weight rows, and tree-packed vs per-path equality."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnrl_jax.rl.loss import LossConfig, policy_loss
from attnrl_jax.rl.tree import Continuation, Response, build_tree

B, T = 6, 16
DEFAULT = LossConfig()
WITH_ENTROPY = LossConfig(dual_clip=None, kl_weight=0.05, entropy_weight=0.01)


def random_batch(seed, b=B, t=T):
    """Log ratios in [-2, 2] (ratios 0.14..7.4: both clip sides and beyond the dual clip), a few
    beyond the +-20 clamp, advantages of both signs and zeros, fractional weights and padding."""
    rng = np.random.default_rng(seed)
    old = rng.uniform(-3, -0.1, (b, t)).astype(np.float32)
    log_ratio = rng.uniform(-2, 2, (b, t))
    log_ratio[rng.random((b, t)) < 0.05] = 25.0 * rng.choice([-1, 1])
    new = (old + log_ratio).astype(np.float32)
    adv = (rng.normal(size=(b, t)) * (rng.random((b, t)) > 0.15)).astype(np.float32)
    ref = (new + rng.uniform(-3.5, 1.5, (b, t))).astype(np.float32)  # some k3 beyond its 10 cap
    ent = rng.uniform(0, 3, (b, t)).astype(np.float32)
    w = rng.choice([0.0, 1.0, 2.0, 3.0], (b, t), p=[0.2, 0.5, 0.2, 0.1]).astype(np.float32)
    return {"new": new, "old": old, "adv": adv, "w": w, "ref": ref, "ent": ent}


def call(d, config, ref=True, ent=True):
    return policy_loss(
        d["new"], d["old"], d["adv"], d["w"], d["ref"] if ref else None, d["ent"] if ent else None,
        config=config,
    )  # fmt: skip


def reference(d, cfg):
    """Per-token closed forms: A > 0: -A min(r, 1 + high); A < 0: |A| min(max(r, 1 - low), c)."""
    new, old, a = (d[k].astype(np.float64) for k in ("new", "old", "adv"))
    r = np.exp(np.clip(new - old, -20, 20))
    c = np.inf if cfg.dual_clip is None else cfg.dual_clip
    pg = np.where(
        a > 0,
        -a * np.minimum(r, 1 + cfg.clip_high),
        -a * np.minimum(np.maximum(r, 1 - cfg.clip_low), c),
    )
    x = np.clip(d["ref"] - new, -20, 20)
    kl = np.minimum(np.exp(x) - x - 1, 10)
    loss = pg + cfg.kl_weight * kl - cfg.entropy_weight * d["ent"]
    clipped = ((a > 0) & (r > 1 + cfg.clip_high)) | ((a < 0) & (r < 1 - cfg.clip_low))
    w = d["w"]
    sums = {
        "total": (w * loss).sum(),
        "pg_loss": (w * pg).sum(),
        "kl": (w * kl).sum(),
        "entropy": (w * d["ent"]).sum(),
        "clip_frac": (w * clipped).sum(),
        "approx_kl": (w * -np.clip(new - old, -20, 20)).sum(),
    }
    if cfg.dual_clip is not None:
        sums["clip_frac_lower"] = (w * ((a < 0) & (r > cfg.dual_clip))).sum()
    # d loss / d new: the unclipped surrogate has slope -A r; clipped branches, clamps are flat
    live = np.abs(new - old) < 20
    slope_pos = (a > 0) & (r < 1 + cfg.clip_high)
    slope_neg = (a < 0) & (r > 1 - cfg.clip_low) & (r < c)
    dpg = np.where(live & (slope_pos | slope_neg), -a * r, 0.0)
    dkl = np.where((np.exp(x) - x - 1 < 10) & (np.abs(d["ref"] - new) < 20), 1 - np.exp(x), 0.0)
    return sums, w * (dpg + cfg.kl_weight * dkl)


@pytest.mark.parametrize("config", [DEFAULT, WITH_ENTROPY], ids=["default", "entropy_nodual"])
def test_matches_numpy_reference(config):
    d = random_batch(0)
    want, _ = reference(d, config)
    a, r = d["adv"], np.exp(d["new"] - d["old"])
    assert ((a > 0) & (r > 1.28)).any() and ((a < 0) & (r < 0.8)).any()  # every branch is hit
    assert ((a < 0) & (r > 3)).any() and ((a > 0) & (r < 0.8)).any() and (a == 0).any()
    out = call(d, config)
    np.testing.assert_allclose(out.denominator, d["w"].sum(), rtol=1e-6)
    np.testing.assert_allclose(out.total, want["total"], rtol=1e-5)
    assert set(out.metrics) == set(want) - {"total"}
    for k, v in out.metrics.items():
        np.testing.assert_allclose(v, want[k], rtol=1e-5, atol=1e-5, err_msg=k)


def test_dual_clip_bounds_negative_advantage_loss():
    a = np.array([[-1.0, -1.0, -1.0, 2.0]], np.float32)
    lr = np.log(np.array([[10.0, 2.0, 0.5, 10.0]], np.float32))
    z = np.zeros_like(a)
    out = policy_loss(lr, z, a, np.ones_like(a), config=LossConfig(kl_weight=0.0))
    # -A * ...: min(10, 3) = 3; 2; max(0.5, 0.8) = 0.8; A > 0 clipped at 1.28: -2 * 1.28
    np.testing.assert_allclose(out.total, 3 + 2 + 0.8 - 2.56, rtol=1e-6)
    np.testing.assert_allclose(out.metrics["clip_frac_lower"], 1.0)
    np.testing.assert_allclose(out.metrics["clip_frac"], 2.0)


@pytest.mark.parametrize("config", [DEFAULT, WITH_ENTROPY], ids=["default", "entropy_nodual"])
def test_gradient_matches_analytic(config):
    d = random_batch(1)
    _, want = reference(d, config)

    def total(new):
        return call({**d, "new": new}, config).total

    got = jax.grad(total)(jnp.asarray(d["new"]))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert (np.asarray(got) != 0).mean() > 0.3


def test_gradient_matches_finite_differences():
    d = random_batch(2)
    d["new"] = d["old"] + np.clip(d["new"] - d["old"], -1.5, 1.5)  # no clamp kinks
    d["ref"] = d["new"] + np.clip(d["ref"] - d["new"], -1.0, 1.0)  # no k3 cap kinks
    cfg = DEFAULT
    got = np.asarray(jax.grad(lambda n: call({**d, "new": n}, cfg).total)(jnp.asarray(d["new"])))
    eps = 1e-3
    r = np.exp(d["new"].astype(np.float64) - d["old"])
    near_kink = (np.abs(r - 0.8) < 0.01) | (np.abs(r - 1.28) < 0.01) | (np.abs(r - 3) < 0.02)
    idx = np.argwhere((d["w"] > 0) & ~near_kink)[:12]
    assert len(idx) == 12
    for i, j in idx:
        plus, minus = d["new"].astype(np.float64).copy(), d["new"].astype(np.float64).copy()
        plus[i, j] += eps
        minus[i, j] -= eps
        fd = (
            (reference({**d, "new": plus}, cfg)[0]["total"])
            - reference({**d, "new": minus}, cfg)[0]["total"]
        )
        np.testing.assert_allclose(got[i, j], fd / (2 * eps), rtol=2e-3, atol=2e-4)


def test_micro_batches_accumulate_to_the_full_batch():
    d = random_batch(3, b=12)
    full = call(d, DEFAULT)

    def grad(batch):
        return jax.grad(lambda n: call({**batch, "new": n}, DEFAULT).total)(batch["new"])

    parts = [{k: v[i : i + 6] for k, v in d.items()} for i in (0, 6)]
    outs = [call(p, DEFAULT) for p in parts]
    num = sum(float(o.total) for o in outs)
    den = sum(float(o.denominator) for o in outs)
    np.testing.assert_allclose(num / den, float(full.total) / float(full.denominator), rtol=1e-6)
    for k in full.metrics:
        np.testing.assert_allclose(sum(o.metrics[k] for o in outs), full.metrics[k], rtol=1e-5)
    micro_grads = np.concatenate([grad(p) for p in parts])
    np.testing.assert_allclose(micro_grads, grad(d), rtol=1e-6)


def test_zero_weight_rows_contribute_nothing():
    d = random_batch(4)
    padded = {k: np.concatenate([v, np.zeros((2, T), np.float32)]) for k, v in d.items()}
    for k in ("new", "old", "adv", "ref", "ent"):
        padded[k][B:] = np.array([np.inf, -np.inf, np.nan, 1e30])[np.arange(2 * T) % 4].reshape(
            2, T
        )
    a, b = call(d, DEFAULT), call(padded, DEFAULT)
    np.testing.assert_allclose(b.total, a.total, rtol=1e-6)
    np.testing.assert_allclose(b.denominator, a.denominator)
    for k in a.metrics:
        np.testing.assert_allclose(b.metrics[k], a.metrics[k], rtol=1e-6)
    g = np.asarray(jax.grad(lambda n: call({**padded, "new": n}, DEFAULT).total)(padded["new"]))
    assert np.isfinite(g).all() and (g[B:] == 0).all()


def test_reference_and_entropy_are_optional():
    d = random_batch(5)
    no_kl = LossConfig(kl_weight=0.0)
    out = call(d, no_kl, ref=False, ent=False)
    assert "kl" not in out.metrics and "entropy" not in out.metrics
    np.testing.assert_allclose(out.total, out.metrics["pg_loss"], rtol=1e-6)
    with pytest.raises(ValueError, match="ref_logp"):
        call(d, DEFAULT, ref=False)
    with pytest.raises(ValueError, match="entropies"):
        call(d, WITH_ENTROPY, ent=False)
    for bad in ({"dual_clip": 1.0}, {"clip_low": 1.0}, {"kl_weight": -1.0}):
        with pytest.raises(ValueError):
            LossConfig(**bad)


def small_tree():
    c = lambda n, r: Continuation(np.arange(100, 100 + n), r)  # noqa: E731
    return build_tree(
        [
            Response(np.arange(9), 1, (3, 6), ((c(4, 0), c(2, 1)), (c(3, 0), c(5, 0)))),
            Response(np.arange(7), 0, (2, 2), ((c(3, 1), c(3, 0)), (c(4, 1), c(2, 0)))),
            Response(np.arange(5), 0),
        ]
    )


def test_tree_packed_rows_equal_per_path_rows_in_loss_and_gradient():
    """Same (token, context) pairs, once per path or once per segment weighted by its path count:
    the loss sums and the gradients w.r.t. per-token log-probs agree."""
    tree = small_tree()
    segs = tree.segments
    starts = np.cumsum([0] + [len(s.tokens) for s in segs])  # segment i: flat[starts[i]:...]
    n = int(starts[-1])
    rng = np.random.default_rng(6)
    old, ref = rng.uniform(-2, -0.1, (2, n)).astype(np.float32)
    new = jnp.asarray(old + rng.uniform(-1, 1, n).astype(np.float32))
    adv = np.concatenate([np.full(len(s.tokens), s.advantage) for s in segs]).astype(np.float32)
    count = np.concatenate([np.full(len(s.tokens), s.path_count) for s in segs]).astype(np.float32)

    def layout(groups):
        """int[R, W] indices into the flat token arrays (padding -> index 0) and a 0/1 mask."""
        flat = [np.concatenate([np.arange(starts[i], starts[i + 1]) for i in g]) for g in groups]
        width = max(map(len, flat))
        idx = np.stack([np.pad(f, (0, width - len(f))) for f in flat])
        mask = np.stack([np.arange(width) < len(f) for f in flat]).astype(np.float32)
        return idx, mask

    packed_idx, packed_mask = layout([[i] for i in range(len(segs))])
    path_idx, path_mask = layout([p.segments for p in tree.paths])

    @jax.jit
    def both(new):
        def total(new, idx, w):
            out = policy_loss(new[idx], old[idx], adv[idx], w, ref[idx], config=DEFAULT)
            return out.total, out

        packed = jax.value_and_grad(total, has_aux=True)(
            new, packed_idx, packed_mask * count[packed_idx]
        )
        paths = jax.value_and_grad(total, has_aux=True)(new, path_idx, path_mask)
        return packed, paths

    ((tp, packed), gp), ((tq, paths), gq) = both(new)
    np.testing.assert_allclose(tp, tq, rtol=1e-5)
    np.testing.assert_allclose(packed.denominator, paths.denominator)
    assert packed_mask.sum() < path_mask.sum()  # shared prefixes are processed once
    for k in packed.metrics:
        np.testing.assert_allclose(packed.metrics[k], paths.metrics[k], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gp, gq, rtol=1e-5, atol=1e-7)
    assert (np.asarray(gp) != 0).mean() > 0.5


# ----- importance correction: ratio against proximal log-probs, truncated behaviour weight -----

NO_KL = LossConfig(kl_weight=0.0, tis_cap=2.0)


def with_prox(seed):
    """A batch plus proximal log-probs within +-1.5 of the behaviour ones (weights
    pi_prox / pi_behaviour from 0.22 to 4.5: both sides of the cap 2)."""
    d = random_batch(seed)
    rng = np.random.default_rng(seed + 100)
    d["prox"] = (d["old"] + rng.uniform(-1.5, 1.5, d["old"].shape)).astype(np.float32)
    return d


def test_correction_matches_numpy_reference():
    """Each token's surrogate is the clipped one with ratio pi_new / pi_prox, times the constant
    min(pi_prox / pi_behaviour, cap): the numpy reference with old := prox and the token weights
    multiplied by the behaviour weight gives the same sums."""
    d = with_prox(3)
    tis = np.minimum(np.exp(d["prox"].astype(np.float64) - d["old"]), NO_KL.tis_cap)
    assert (tis == NO_KL.tis_cap).any() and (tis < 0.5).any()
    want, grad = reference({**d, "old": d["prox"], "w": d["w"] * tis}, NO_KL)
    out = policy_loss(d["new"], d["old"], d["adv"], d["w"], None, None, d["prox"], config=NO_KL)
    np.testing.assert_allclose(out.total, want["total"], rtol=1e-5)
    np.testing.assert_allclose(out.metrics["pg_loss"], want["pg_loss"], rtol=1e-5)
    # clipping counts tokens, not weighted surrogates: the reference with the plain weights
    unweighted, _ = reference({**d, "old": d["prox"]}, NO_KL)
    np.testing.assert_allclose(out.metrics["clip_frac"], unweighted["clip_frac"], rtol=1e-6)
    np.testing.assert_allclose(out.denominator, d["w"].sum(), rtol=1e-6)

    def total(new):
        return policy_loss(new, d["old"], d["adv"], d["w"], None, None, d["prox"], config=NO_KL)

    got = jax.grad(lambda n: total(n).total)(jnp.asarray(d["new"]))
    np.testing.assert_allclose(got, grad, rtol=1e-4, atol=1e-5)


def test_proximal_equal_to_behaviour_is_the_uncorrected_loss():
    """With identical numerics (pi_prox = pi_behaviour) the weight is 1 and the loss is today's
    (to float32 rounding: the extra product changes how XLA fuses the sums, ~1 ulp)."""
    d = random_batch(4)
    args = (d["adv"], d["w"], d["ref"], d["ent"])
    plain = policy_loss(d["new"], d["old"], *args, config=WITH_ENTROPY)
    fixed = LossConfig(**{**WITH_ENTROPY.__dict__, "tis_cap": 2.0})
    corrected = policy_loss(d["new"], d["old"], *args, d["old"], config=fixed)
    np.testing.assert_allclose(corrected.total, plain.total, rtol=1e-6)
    for k, v in plain.metrics.items():
        np.testing.assert_allclose(corrected.metrics[k], v, rtol=1e-6, err_msg=k)


def test_correction_settings_are_checked():
    with pytest.raises(ValueError, match="tis_cap"):
        LossConfig(tis_cap=0.5)
    d = random_batch(5)
    off = LossConfig(kl_weight=0.0, tis_cap=0.0)
    with pytest.raises(ValueError, match="prox_logp given with tis_cap 0"):
        policy_loss(d["new"], d["old"], d["adv"], d["w"], None, None, d["old"], config=off)
