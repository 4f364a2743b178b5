"""Padding-free rows: rows packed side by side into a fixed token budget train exactly like
one row per row (float32, 1e-5: only the summation order differs), with fewer computed slots."""

import jax
import numpy as np
import pytest

from attnrl_jax.models.lm import init_params
from attnrl_jax.rl.loss import LossConfig
from attnrl_jax.rl.packed import is_dfs_numbered, make_rows, pack_rows, row_logprobs, stack_rows
from attnrl_jax.rl.settings import OptimConfig
from attnrl_jax.rl.update import make_optimizer, run_updates
from tests.test_rl_packed import CFG, random_problem

LOSS = LossConfig(kl_weight=0.0, entropy_weight=0.01)
OPTIM = OptimConfig(learning_rate=1e-3)


@pytest.fixture(scope="module")
def problems():
    rng = np.random.default_rng(3)
    return [random_problem(rng, merge) for merge in (True, False, True)]


@pytest.mark.parametrize("packing", ["tree", "path"])
def test_packed_rows_keep_every_tokens_logprob(problems, packing):
    params = init_params(CFG, jax.random.key(1), std=0.3)
    rows = make_rows(problems, packing)
    packed = pack_rows(rows, 96)
    assert len(packed) < len(rows) and all(len(r.tokens) <= 96 for r in packed)
    assert all(is_dfs_numbered(r.ancestors) for r in packed)
    k = max(len(r.ancestors) for r in packed)
    plain = stack_rows(rows, len(rows), 64, 8)
    dense = stack_rows(packed, len(packed), 96, k)
    want, want_ent = row_logprobs(params, plain, cfg=CFG)
    got, got_ent = row_logprobs(params, dense, cfg=CFG)
    # every packed token with weight > 0 keeps the log-prob and entropy of its own row
    by_row = {}
    for b, (w, lp, ent) in enumerate(zip(plain["weights"], want, want_ent, strict=True)):
        by_row[b] = (np.asarray(lp)[w > 0], np.asarray(ent)[w > 0])
    got_lp = np.sort(np.asarray(got)[dense["weights"] > 0])
    want_lp = np.sort(np.concatenate([v[0] for v in by_row.values()]))
    np.testing.assert_allclose(got_lp, want_lp, atol=1e-5)
    got_e = np.sort(np.asarray(got_ent)[dense["weights"] > 0])
    want_e = np.sort(np.concatenate([v[1] for v in by_row.values()]))
    np.testing.assert_allclose(got_e, want_e, atol=1e-5)


def _update(problems, tokens_per_row):
    params = init_params(CFG, jax.random.key(1), std=0.3)
    opt_state = make_optimizer(OPTIM).init(params)
    return run_updates(
        params, opt_state, None, problems, cfg=CFG, loss=LOSS, optim=OPTIM, packing="tree",
        minibatch_problems=3, microbatch_rows=2, tokens_per_row=tokens_per_row,
    )  # fmt: skip


def test_padding_free_update_equals_padded_update(problems):
    p0, _, m0 = _update(problems, 0)
    p1, _, m1 = _update(problems, 64)  # a row bucket: used as is
    for key in ("loss", "pg_loss", "entropy", "grad_norm", "trained_tokens", "row_tokens"):
        assert m1[key] == pytest.approx(m0[key], rel=1e-5, abs=1e-6), key
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p0), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert m1["slot_ratio"] < m0["slot_ratio"]
    assert m1["slot_ratio"] == pytest.approx(
        2 * 64 * -(-len(pack_rows(make_rows(problems, "tree"), 64)) // 2) / m1["row_tokens"]
    )


def test_budget_below_the_longest_row_is_refused(problems):
    longest = max(len(r.tokens) for r in make_rows(problems, "tree"))
    with pytest.raises(ValueError, match="smaller than the longest row"):
        pack_rows(make_rows(problems, "tree"), longest - 1)
