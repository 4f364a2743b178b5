"""Tree rows split under a token budget (packed.tree_rows with tokens_per_row): every row fits,
weights sum to path counts, and loss and gradients equal per-path training (float32, 1e-5:
only the summation order differs) at every budget from one path to the whole tree."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnrl_jax.models.lm import init_params
from attnrl_jax.rl.loss import LossConfig, policy_loss
from attnrl_jax.rl.packed import (
    ROW_FIELDS,
    TrainProblem,
    is_dfs_numbered,
    make_rows,
    pack_rows,
    row_logprobs,
    stack_rows,
    tree_rows,
)
from attnrl_jax.rl.settings import OptimConfig
from attnrl_jax.rl.tree import Continuation, Response, build_tree
from attnrl_jax.rl.update import make_optimizer, run_updates
from tests.test_rl_packed import CFG, random_problem

LOSS = LossConfig(kl_weight=0.0, entropy_weight=0.01)


def path_len(problem: TrainProblem, path) -> int:
    segments = problem.tree.segments
    return len(problem.prompt_ids) + sum(len(segments[s].tokens) for s in path.segments)


@pytest.fixture(scope="module")
def problems():
    rng = np.random.default_rng(5)
    return [random_problem(rng, merge) for merge in (True, False)]


@pytest.fixture(scope="module")
def budgets(problems):
    """From the longest path (the smallest allowed) to the longest whole-tree row (no split)."""
    shortest = max(path_len(p, path) for p in problems for path in p.tree.paths)
    whole = max(len(r.tokens) for r in make_rows(problems, "tree"))
    assert whole > shortest + 8  # several budgets in between split some trees
    return [shortest, shortest + 3, (shortest + whole) // 2, whole - 1, whole]


def test_rows_fit_and_weights_sum_to_path_counts(problems, budgets):
    """Per problem and budget: each row within the budget, DFS-numbered, and every segment
    token's weights over the rows sum to its segment's path count (tokens identified by their
    behaviour log-prob, random per token, and position)."""
    splits = []
    for problem in problems:
        want: dict = {}
        for seg, logp in zip(problem.tree.segments, problem.segment_logp, strict=True):
            for pos, lp in enumerate(logp):
                want[(seg.start + pos, float(lp))] = float(seg.path_count)
        for budget in budgets:
            rows = tree_rows(problem, budget)
            assert all(len(r.tokens) <= budget and is_dfs_numbered(r.ancestors) for r in rows)
            got: dict = {}
            for r in rows:
                p = len(problem.prompt_ids)
                for pos, lp, w in zip(r.positions[p:], r.old_logp[p:], r.weights[p:], strict=True):
                    key = (int(pos) - p, float(lp))
                    got[key] = got.get(key, 0.0) + float(w)
            assert got == want, budget
            splits.append(len(rows))
    # the budgets do split: more rows at the smallest budget than without a budget
    assert splits[0] > len(tree_rows(problems[0]))


def test_budget_of_the_whole_tree_gives_todays_rows(problems, budgets):
    whole, unsplit = make_rows(problems, "tree", budgets[-1]), make_rows(problems, "tree")
    assert len(whole) == len(unsplit)
    for a, b in zip(whole, unsplit, strict=True):
        for name in ROW_FIELDS:
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert len(make_rows(problems, "tree", budgets[-2])) > len(unsplit)


def test_budget_of_one_path_gives_per_path_rows():
    """Paths of equal length (continuations take what their prefix leaves of the response):
    at a budget of one path no two paths share a row, so rows are the per-path rows."""
    rng = np.random.default_rng(0)
    responses = []
    for points in ((4, 8), (3,), (6, 6)):
        conts = tuple(
            tuple(Continuation(rng.integers(1, 64, 12 - b), 1.0 * c) for c in range(2))
            for b in points
        )
        responses.append(Response(rng.integers(1, 64, 12), 0.0, points, conts))
    tree = build_tree(responses)
    logp = tuple(rng.uniform(-3, -0.1, len(s.tokens)).astype(np.float32) for s in tree.segments)
    vers = tuple(np.zeros(len(s.tokens), np.int32) for s in tree.segments)
    problem = TrainProblem(rng.integers(1, 64, 4).astype(np.int32), tree, logp, vers)
    split, paths = tree_rows(problem, 4 + 12), make_rows([problem], "path")
    assert len(split) == len(paths) == len(tree.paths)
    assert sorted(r.tokens.tobytes() for r in split) == sorted(r.tokens.tobytes() for r in paths)
    assert all(np.all(r.weights[4:] == 1) for r in split)


def test_budget_below_the_longest_path_is_refused(problems, budgets):
    for packing in ("tree", "path"):
        with pytest.raises(
            ValueError,
            match=f"tokens_per_row={budgets[0] - 1} is smaller than the longest path "
            f"\\({budgets[0]} tokens",
        ):
            make_rows(problems, packing, budgets[0] - 1)


def _stack(rows, num_rows, length, nodes):
    return {k: jnp.asarray(v) for k, v in stack_rows(rows, num_rows, length, nodes).items()}


@jax.jit
def _loss_and_grad(params, batch):
    def loss(p):
        new, ent = row_logprobs(p, batch, cfg=CFG)
        terms = policy_loss(
            new, batch["old_logp"], batch["advantages"], batch["weights"], None, ent, config=LOSS
        )
        return terms.total, terms

    return jax.value_and_grad(loss, has_aux=True)(params)


def test_split_rows_train_like_per_path_rows(problems, budgets):
    """Split tree rows, packed side by side into rows of the budget (as run_updates does), give
    per-path training's loss sum, denominator, metrics and gradient at every budget. All
    layouts are stacked to one shape, so one compiled program serves them."""
    params = init_params(CFG, jax.random.key(2), std=0.3)
    path_rows = make_rows(problems, "path")
    num_rows = len(path_rows)
    length = 64
    assert budgets[-1] <= length
    (ref_total, ref_terms), ref_grads = _loss_and_grad(
        params, _stack(path_rows, num_rows, length, 32)
    )
    scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(ref_grads))
    assert abs(float(ref_total)) > 0 and scale > 0
    for budget in budgets:
        rows = pack_rows(make_rows(problems, "tree", budget), budget)
        assert len(rows) <= num_rows and max(len(r.ancestors) for r in rows) <= 32
        (total, terms), grads = _loss_and_grad(params, _stack(rows, num_rows, length, 32))
        np.testing.assert_allclose(terms.denominator, ref_terms.denominator, rtol=1e-6)
        np.testing.assert_allclose(total, ref_total, rtol=1e-5)
        for k in ref_terms.metrics:
            np.testing.assert_allclose(
                terms.metrics[k], ref_terms.metrics[k], rtol=1e-5, atol=1e-6, err_msg=k
            )
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5 * scale)


def test_update_with_split_tree_rows_equals_per_path_update(problems, budgets):
    """run_updates splits tree rows at its token budget: one AdamW update from tree-packed rows
    of one path's budget equals the per-path update, on fewer row tokens."""
    optim = OptimConfig(learning_rate=1e-3)
    out = {}
    for packing in ("tree", "path"):
        params = init_params(CFG, jax.random.key(1), std=0.3)
        out[packing] = run_updates(
            params, make_optimizer(optim).init(params), None, problems, cfg=CFG, loss=LOSS,
            optim=optim, packing=packing, minibatch_problems=2, microbatch_rows=4,
            tokens_per_row=budgets[0],
        )  # fmt: skip
    (p_tree, _, m_tree), (p_path, _, m_path) = out["tree"], out["path"]
    for key in ("loss", "pg_loss", "entropy", "grad_norm", "trained_tokens"):
        assert m_tree[key] == pytest.approx(m_path[key], rel=1e-5, abs=1e-6), key
    assert m_tree["row_tokens"] < m_path["row_tokens"]
    for a, b in zip(jax.tree.leaves(p_tree), jax.tree.leaves(p_path), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
