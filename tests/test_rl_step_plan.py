"""One step's plan on hand-made data (rl/step_plan.py): branch plans, continuations attached
per response, stitched behaviour log-probs and versions, GRPO groups, the MC valid ratio, and
the pending batch's save format (rl/checkpoint.py)."""

import numpy as np
import pytest

from attnrl_jax.data.pipeline import Prompt
from attnrl_jax.data.records import Problem
from attnrl_jax.data.tokenizer import build_tiny_tokenizer
from attnrl_jax.rl import ads
from attnrl_jax.rl import rollout as ro
from attnrl_jax.rl import step_plan as sp
from attnrl_jax.rl.checkpoint import generation_from_state, generation_to_state
from attnrl_jax.rl.grpo import grpo_advantages, grpo_tree
from attnrl_jax.rl.tree import ORIGINAL
from attnrl_jax.sampling import Sample
from attnrl_jax.scoring.forward import ScoringConfig
from attnrl_jax.scoring.selection import SelectionConfig
from attnrl_jax.scoring.steps import SeparatorIds, segment_steps

G = 3


@pytest.fixture(scope="module")
def seps():
    return SeparatorIds.from_tokenizer(build_tiny_tokenizer())


def generation(seps, version=4):
    """Two prompts x G responses; separators every 3rd token so every response has steps."""
    rng = np.random.default_rng(0)
    sep = seps.double_newline[0]
    prompts = tuple(
        Prompt(Problem(f"p{j}", (str(j),), f"t:{j}"), tuple(range(10 + j, 15 + j)))
        for j in range(2)
    )
    responses, logp, ent, fci, layouts = [], [], [], [], []
    for _ in range(2 * G):
        r = rng.integers(100, 200, 12).astype(np.int32)
        r[2::3] = sep
        lay = segment_steps(5, r, seps)
        responses.append(r)
        logp.append(-rng.uniform(0.1, 3, 12).astype(np.float32))
        ent.append(rng.uniform(0, 2, 12).astype(np.float32))
        fci.append(rng.uniform(0, 1, lay.num_steps + 1).astype(np.float32))
        layouts.append(lay)
    return ro.Generation(
        prompts, tuple(responses), tuple(logp), tuple(ent), tuple(fci), tuple(layouts), version
    )


def rollout_config(**kw):
    base = dict(
        group_size=G,
        continuations=2,
        selection=SelectionConfig(num_points=2, min_token_distance=0),
        ads=ads.ADSConfig(),
    )
    return ro.RolloutConfig(**{**base, **kw})


def fake_samples(requests, rng, version_logp):
    """Samples for continuation requests; log-probs all equal version_logp (marks the source)."""
    out = []
    for r in requests:
        out.append(
            [
                Sample(0, s, rng.integers(100, 200, 4).astype(np.int32),
                       np.full(4, version_logp, np.float32), "length")
                for s in range(r.n)
            ]
        )  # fmt: skip
    return out


def test_stitched_behaviour_logprobs_and_versions(seps):
    gen = generation(seps, version=4)
    rc = rollout_config()
    rewards = np.array([1, 0, 0, 0, 0, 0], float)  # problem 0 mixed, problem 1 all wrong
    plan = sp.plan_branches(gen, rewards, ads.AttentionFilterState(), np.random.default_rng(1), rc)
    # mixed 1/3: ceil(3 exp(-1/3)) = 3 expanded; all-wrong: all 3
    assert all(len(p) == 2 for p in plan.branch_points)
    requests = sp.continuation_requests(gen, plan, rc.continuations, first_index=7)
    assert [r.index for r in requests] == list(range(7, 7 + 12))
    nested_requests = sp.attach(plan, requests)
    for i, branches in enumerate(nested_requests):
        assert len(branches) == len(plan.branch_points[i])
        for r, b in zip(branches, plan.branch_points[i], strict=True):
            assert tuple(r.prompt_ids) == gen.prompts[i // G].prompt_ids
            assert tuple(r.prefix_ids) == tuple(gen.responses[i][:b])
    conts = sp.attach(plan, fake_samples(requests, np.random.default_rng(2), version_logp=-0.5))
    cont_rewards = sp.nest_rewards(conts, np.tile([1.0, 0.0], len(requests)))
    assert sp.continuation_golds(gen, conts) == [
        gen.prompts[i // G].problem.answers for i in range(2 * G) for _ in range(2 * 2)
    ]
    problems, stats = sp.build_problems(gen, rewards, plan, conts, cont_rewards, 5, rc)
    assert stats.problems == 2 and stats.kept == 2
    for j, problem in enumerate(problems):
        for seg, logp, ver in zip(
            problem.tree.segments, problem.segment_logp, problem.segment_version, strict=True
        ):
            i = j * G + seg.response
            if seg.branch == ORIGINAL:  # prefix tokens: stored scoring values, version k-1
                np.testing.assert_array_equal(
                    logp, gen.logprobs[i][seg.start : seg.start + len(seg.tokens)]
                )
                assert (ver == 4).all()
            else:  # continuation tokens: the sampler's values, version k
                assert (logp == -0.5).all() and (ver == 5).all()
                prefix = nested_requests[i][seg.branch].prefix_ids
                assert len(prefix) == seg.start
                sample = conts[i][seg.branch][seg.continuation]
                np.testing.assert_array_equal(seg.tokens, sample.token_ids[: len(seg.tokens)])


def test_all_correct_problems_use_the_attention_filter(seps):
    gen = generation(seps)
    rc = rollout_config()
    rewards = np.ones(2 * G)
    plan = sp.plan_branches(gen, rewards, ads.AttentionFilterState(), np.random.default_rng(0), rc)
    # the running mean includes both problems: exactly the one above the mean expands
    expanded = [any(plan.branch_points[j * G + g] for g in range(G)) for j in range(2)]
    assert sorted(expanded) == [False, True] and plan.num_filtered == 1
    always = rollout_config(ads=ads.ADSConfig(all_correct="always"))
    plan = sp.plan_branches(
        gen, rewards, ads.AttentionFilterState(), np.random.default_rng(0), always
    )
    assert plan.num_filtered == 0


def test_grpo_groups(seps):
    gen = generation(seps)
    rc = rollout_config(tree=False, scoring=ScoringConfig(with_fci=False))
    rewards = np.array([1, 0, 0, 1, 1, 1], float)
    plan = sp.plan_branches(gen, rewards, ads.AttentionFilterState(), np.random.default_rng(0), rc)
    assert plan.branch_points == ((),) * 6
    conts = sp.attach(plan, [])
    problems, stats = sp.build_problems(gen, rewards, plan, conts, conts, 5, rc)
    assert (stats.kept, stats.sequences) == (1, 3)  # the all-correct group has no signal
    adv = [p.advantages[0] for p in problems[0].tree.paths]
    np.testing.assert_allclose(adv, grpo_advantages(np.array([1.0, 0.0, 0.0])), rtol=1e-6)
    std = np.std([1, 0, 0], ddof=1)
    np.testing.assert_allclose(adv[0], (1 - 1 / 3) / (std + 1e-6), rtol=1e-6)
    tree = grpo_tree([np.arange(3)] * 2, np.array([1.0, 1.0]))
    assert [s.advantage for s in tree.segments] == [0.0, 0.0]


def test_pending_generation_round_trip(seps):
    gen = generation(seps)
    arrays, meta = generation_to_state(gen)
    back = generation_from_state(arrays, meta, seps)
    assert back.prompts == gen.prompts and back.version == gen.version
    assert back.layouts == gen.layouts
    for name in ("responses", "logprobs", "entropies", "fci"):
        for a, b in zip(getattr(gen, name), getattr(back, name), strict=True):
            np.testing.assert_array_equal(a, b)


def test_mc_valid_ratio_counts_continuations_that_flip_the_outcome():
    # responses 0 (reward 1) and 2 (reward 0) are expanded; 0 at two points, 2 at one point
    plan = sp.BranchPlan(((3, 7), (), (5,)), ads.AttentionFilterState(), 0)
    rewards = np.array([1.0, 0.0, 0.0])
    conts = sp.attach(plan, [np.array([1.0, 0.0]), np.array([0.0, 0.0]), np.array([1.0, 0.0])])
    assert [len(branches) for branches in conts] == [2, 0, 1]
    # flips: (0,1)->one of two, (0,0)->two of two, (1,0) vs 0 -> one of two: 4 of 6
    assert sp.mc_valid_ratio(rewards, conts) == pytest.approx(4 / 6)
    none = sp.attach(sp.BranchPlan(((),) * 3, plan.filter_state, 0), [])
    assert sp.mc_valid_ratio(rewards, none) is None


def test_attach_rejects_a_count_that_does_not_match_the_plan():
    plan = sp.BranchPlan(((3, 7), (), (5,)), ads.AttentionFilterState(), 0)
    with pytest.raises(ValueError, match="2 continuation groups for 3 branch points"):
        sp.attach(plan, [(), ()])
