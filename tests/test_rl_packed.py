"""Tree-packed rows give the same per-token log-probs, loss and gradient as per-path rows."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnrl_jax.buckets import power_of_two
from attnrl_jax.models.config import ModelConfig
from attnrl_jax.models.lm import forward, init_params
from attnrl_jax.rl.loss import LossConfig, policy_loss
from attnrl_jax.rl.packed import (
    TrainProblem,
    is_dfs_numbered,
    make_rows,
    row_logprobs,
    stack_rows,
    tokens_processed,
)
from attnrl_jax.rl.tree import Continuation, Response, build_tree

CFG = ModelConfig(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
)


def random_problem(rng, merge=True) -> TrainProblem:
    """Four responses: two expanded at two points (one with a duplicate point and one at offset
    0), one expanded at one point, one unexpanded; random rewards and behaviour log-probs."""
    responses = []
    for points in ([3, 7], [5, 5], [0, 4], [6], []):
        toks = rng.integers(1, 64, rng.integers(9, 14))
        conts = tuple(
            tuple(
                Continuation(rng.integers(1, 64, rng.integers(1, 6)), float(rng.integers(0, 2)))
                for _ in range(2)
            )
            for _ in points
        )
        responses.append(Response(toks, float(rng.integers(0, 2)), tuple(points), conts))
    tree = build_tree(responses, merge_duplicates=merge)
    logp = tuple(rng.uniform(-4, -0.1, len(s.tokens)).astype(np.float32) for s in tree.segments)
    vers = tuple(np.full(len(s.tokens), s.branch + 1, np.int32) for s in tree.segments)
    return TrainProblem(rng.integers(1, 64, 5).astype(np.int32), tree, logp, vers)


def batch_of(problems, packing):
    rows = make_rows(problems, packing)
    length = power_of_two(max(len(r.tokens) for r in rows), 16)
    nodes = power_of_two(max(len(r.ancestors) for r in rows))
    return {k: jnp.asarray(v) for k, v in stack_rows(rows, len(rows), length, nodes).items()}


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    params = init_params(CFG, jax.random.key(1), std=0.3)
    problems = [random_problem(rng, merge) for merge in (True, False)]
    return params, problems


def test_path_rows_match_plain_forward(setup):
    """A path row's log-probs are the plain causal forward's."""
    params, problems = setup
    batch = batch_of(problems, "path")
    logp, _ = row_logprobs(params, batch, cfg=CFG)
    row = 3
    n = int((batch["nodes"][row] >= 0).sum())
    logits = forward(params, CFG, batch["tokens"][row : row + 1, :n])[0]
    ref = jax.nn.log_softmax(logits[:-1], axis=-1)[jnp.arange(n - 1), batch["tokens"][row, 1:n]]
    np.testing.assert_allclose(logp[row, 1:n], ref, atol=1e-5)


def _per_path_values(batch, values):
    """{(prompt, path tokens) position key: value} is awkward; compare weighted sums instead."""
    w = np.asarray(batch["weights"])
    return float((w * np.asarray(values)).sum())


def test_packed_loss_and_gradient_equal_per_path(setup):
    params, problems = setup
    config = LossConfig(kl_weight=0.0)
    results = {}
    for packing in ("path", "tree"):
        batch = batch_of(problems, packing)

        def loss(p, batch=batch):
            new, ent = row_logprobs(p, batch, cfg=CFG)
            terms = policy_loss(
                new, batch["old_logp"], batch["advantages"], batch["weights"], None, ent,
                config=config,
            )  # fmt: skip
            return terms.total / terms.denominator, (terms, new)

        (value, (terms, new)), grads = jax.value_and_grad(loss, has_aux=True)(params)
        results[packing] = (value, terms, grads, _per_path_values(batch, new))
    (v1, t1, g1, s1), (v2, t2, g2, s2) = results["path"], results["tree"]
    np.testing.assert_allclose(t1.denominator, t2.denominator)
    np.testing.assert_allclose(s1, s2, rtol=1e-5)
    np.testing.assert_allclose(v1, v2, rtol=1e-5, atol=1e-7)
    for k in t1.metrics:
        np.testing.assert_allclose(t1.metrics[k], t2.metrics[k], rtol=1e-5, atol=1e-6)
    flat1, flat2 = jax.tree.leaves(g1), jax.tree.leaves(g2)
    scale = max(float(jnp.abs(g).max()) for g in flat1)
    for a, b in zip(flat1, flat2, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5 * scale)
    assert abs(v1) > 0 and scale > 0


def test_tree_packing_processes_fewer_tokens(setup):
    _, problems = setup
    path, tree = tokens_processed(problems, "path"), tokens_processed(problems, "tree")
    assert tree < path
    paths = sum(len(p.tree.paths) for p in problems)
    rows = len(make_rows(problems, "tree"))
    assert (paths, rows) == (len(make_rows(problems, "path")), 8)


def test_query_chunked_rows_equal_whole_rows_with_gradients(setup):
    """row_logprobs in query chunks (each recomputed in the backward pass) equals the whole-row
    attention: same log-probs and gradients (float32; only summation order can differ)."""
    params, problems = setup
    batch = batch_of(problems, "tree")
    assert batch["tokens"].shape[1] > 16  # several query chunks

    def total(p, chunk):
        new, ent = row_logprobs(p, batch, cfg=CFG, query_chunk=chunk)
        return jnp.sum(new * batch["weights"]) + jnp.sum(ent), (new, ent)

    (_, (l1, e1)), g1 = jax.value_and_grad(total, has_aux=True)(params, 1024)
    (_, (l2, e2)), g2 = jax.value_and_grad(total, has_aux=True)(params, 16)
    np.testing.assert_allclose(l1, l2, atol=1e-5)
    np.testing.assert_allclose(e1, e2, atol=1e-5)
    scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(g1))
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5 * scale)


def test_tree_rows_are_dfs_numbered_and_others_are_refused(setup):
    _, problems = setup
    rows = make_rows(problems, "tree")
    assert all(is_dfs_numbered(r.ancestors) for r in rows)
    assert any(len(r.ancestors) > 3 for r in rows)
    # nodes 1 and 2 both children of 0, node 3 a child of 1 placed after 2: not pre-order
    bad = np.eye(4, dtype=bool)
    bad[:, 0] = True
    bad[3, 1] = True
    assert not is_dfs_numbered(bad)
    row = dataclasses.replace(rows[0], ancestors=bad)
    with pytest.raises(ValueError, match="row 0: nodes are not numbered in DFS pre-order"):
        stack_rows([row], 1, 64, 8)


def test_training_row_attention_memory_grows_linearly():
    """Compiled temporaries of the row gradient: doubling a row with query chunks about doubles
    them (the chunk's [chunk, T] probabilities), where whole-row attention quadruples (T x T)."""
    cfg = dataclasses.replace(CFG, num_layers=1)
    params = init_params(cfg, jax.random.key(0))

    def temp_mib(length, chunk):
        z = jnp.zeros((1, length), jnp.int32)
        ones = jnp.ones((1, 1, 1), bool)
        batch = dict(tokens=z, positions=z, nodes=z, predictor=z, ancestors=ones)

        def f(p):
            return jnp.sum(row_logprobs(p, batch, cfg=cfg, query_chunk=chunk)[0])

        return jax.jit(jax.grad(f)).lower(params).compile().memory_analysis().temp_size_in_bytes

    chunked = temp_mib(2048, 256) / temp_mib(1024, 256)
    assert chunked < 3, chunked  # linear: 2x plus fixed costs; T x T: 4x
    assert temp_mib(2048, 256) < temp_mib(2048, 4096) / 4
