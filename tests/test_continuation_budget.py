"""A continuation samples what is left of the response budget (RolloutConfig.continuation_budget),
as the authors' rollout does, so a per-path row is at most prompt + max_new_tokens tokens and
train.tokens_per_row is checked against that."""

import pytest

from attnrl_jax.rl import rollout as ro
from attnrl_jax.rl import step_plan as sp
from attnrl_jax.rl.settings import ConfigError, resolve
from tests.test_configs import fill_required, load
from tests.test_rl_step_plan import generation


def test_budget_is_what_the_prefix_leaves():
    rc = ro.RolloutConfig(max_new_tokens=8192)
    assert rc.continuation_budget(0) == 8192
    assert rc.continuation_budget(3000) == 5192
    assert rc.continuation_budget(8191) == 1
    for bad in (8192, 9000, -1):
        with pytest.raises(ValueError, match="has no budget left"):
            rc.continuation_budget(bad)


def test_continuation_requests_carry_their_budget(seps_generation):
    gen, plan = seps_generation
    rc = ro.RolloutConfig(max_new_tokens=20)
    requests = sp.continuation_requests(gen, plan, 2, 0, budget=rc.continuation_budget)
    prefixes = [b for points in plan.branch_points for b in points]
    assert [r.max_new_tokens for r in requests] == [20 - b for b in prefixes]
    for r in requests:  # prefix + continuation within one response's budget
        assert len(r.prefix_ids) + r.max_new_tokens == 20
    # without a budget: the sampler call's max_new_tokens
    plain = sp.continuation_requests(gen, plan, 2, 0)
    assert {r.max_new_tokens for r in plain} == {None}


@pytest.fixture
def seps_generation():
    from attnrl_jax.data.tokenizer import build_tiny_tokenizer
    from attnrl_jax.scoring.steps import SeparatorIds

    gen = generation(SeparatorIds.from_tokenizer(build_tiny_tokenizer()))
    points = ((3, 9), (6,), (), (2, 5), (), (11,))
    return gen, sp.BranchPlan(points, None, 0)


# tree rows longer than the budget are split into rows of whole paths (packed.tree_rows)
@pytest.mark.parametrize("packing, longest", [("path", 1024 + 8192), ("tree", 1024 + 8192)])
def test_tokens_per_row_is_checked_against_the_capped_longest_row(packing, longest):
    c = fill_required(load("r1_distill_qwen_1p5b.py"))
    c.train.packing = packing
    c.train.tokens_per_row = longest
    assert resolve(c).train.tokens_per_row == longest
    c.train.tokens_per_row = longest - 1
    with pytest.raises(ConfigError, match=f"smaller than the longest row .* = {longest}"):
        resolve(c)


@pytest.mark.parametrize("name", ["r1_distill_qwen_1p5b.py", "r1_distill_qwen_7b.py"])
def test_paper_configs_pack_rows_of_the_longest_path(name):
    run = resolve(fill_required(load(name)))
    assert (run.train.packing, run.train.tokens_per_row) == ("path", 1024 + 8192)
