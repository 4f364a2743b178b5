"""One step's plan on hand-made data (rl/step_plan.py): branch plans, continuations attached
per response, stitched behaviour log-probs and versions, GRPO groups, the MC valid ratio, the
pending batch's save format (rl/checkpoint.py), and the jitted plan and trees against the former
host bodies (tests/reference_pipeline.py)."""

import dataclasses

import jax
import numpy as np
import pytest
import reference_ads as ref_ads
import reference_grpo as ref_grpo
import reference_pipeline as ref_pl

from attnrl_jax.buckets import power_of_two
from attnrl_jax.compile_watch import CompileWatch
from attnrl_jax.data.pipeline import Prompt
from attnrl_jax.data.records import Problem
from attnrl_jax.data.tokenizer import build_tiny_tokenizer
from attnrl_jax.rl import ads
from attnrl_jax.rl import rollout as ro
from attnrl_jax.rl import step_plan as sp
from attnrl_jax.rl import tree as tree_lib
from attnrl_jax.rl.checkpoint import generation_from_state, generation_to_state
from attnrl_jax.rl.grpo import grpo_advantages, grpo_tree, keep_groups
from attnrl_jax.rl.tree import ORIGINAL
from attnrl_jax.sampling import Sample
from attnrl_jax.scoring.forward import ScoringConfig
from attnrl_jax.scoring.selection import SelectionConfig, select, selection_inputs
from attnrl_jax.scoring.steps import SeparatorIds, StepLayouts, segment_steps

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


FIELDS = ("response", "parent", "start", "branch", "continuation", "value", "path_count",
          "advantage")  # fmt: skip


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
    # build_problems' trees (node columns) are grpo_tree's (objects), field by field
    got = problems[0].tree
    want = grpo_tree(gen.responses[:3], rewards[:3].astype(np.float32),
                     advantages=grpo_advantages(rewards[:3].astype(np.float32)))  # fmt: skip
    assert got.root_value == want.root_value and got.num_paths == len(want.paths) == 3
    for a, b in zip(got.segments, want.segments, strict=True):
        assert np.array_equal(a.tokens, b.tokens) and a.tokens.dtype == b.tokens.dtype
        assert [getattr(a, f) for f in FIELDS] == [getattr(b, f) for f in FIELDS]
    for a, b in zip(got.paths, want.paths, strict=True):
        assert (a.response, a.branch, a.continuation, a.segments, a.reward) == (
            b.response, b.branch, b.continuation, b.segments, b.reward)  # fmt: skip


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


# --- the jitted pipeline against the former host bodies (tests/reference_pipeline.py) ----------


def long_generation(seps, prompts=24, group=6, seed=0):
    """Responses of 30-200 tokens, separators at random places (some responses without any),
    FCI with zeros and ties, rewards: all-correct, all-wrong and mixed groups."""
    rng = np.random.default_rng(seed)
    sep = seps.double_newline[0]
    ps = tuple(
        Prompt(
            Problem(f"p{j}", (str(j),), f"t:{j}"), tuple(range(10, 10 + int(rng.integers(3, 9))))
        )
        for j in range(prompts)
    )
    responses, logp, fci, layouts = [], [], [], []
    for i in range(prompts * group):
        n = int(rng.integers(30, 200))
        r = rng.integers(100, 200, n).astype(np.int32)
        if i % 7:
            r[rng.random(n) < 0.15] = sep
        lay = segment_steps(len(ps[i // group].prompt_ids), r, seps)
        responses.append(r)
        logp.append(-rng.uniform(0.1, 3, n).astype(np.float32))
        y = np.where(
            rng.random(lay.num_steps + 1) < 0.3, 0.0, rng.integers(0, 5, lay.num_steps + 1)
        )
        fci.append((y / 4).astype(np.float32))
        layouts.append(lay)
    gen = ro.Generation(ps, tuple(responses), tuple(logp), None, tuple(fci), tuple(layouts), 3)
    kind = np.arange(prompts) % 3
    rewards = (rng.random((prompts, group)) < 0.5).astype(float)
    rewards[kind == 0], rewards[kind == 1] = 1.0, 0.0
    return gen, rewards.reshape(-1)


@pytest.mark.parametrize("merge", [True, False])
def test_pipeline_equals_former_host_bodies(seps, merge):
    gen, rewards = long_generation(seps)
    rc = rollout_config(
        group_size=6,
        selection=SelectionConfig(num_points=2, min_token_distance=20),
        merge_duplicates=merge,
    )
    state = ads.AttentionFilterState(3.0, 10)
    plan = sp.plan_branches(gen, rewards, state, np.random.default_rng(0), rc)
    points, hstate, hfiltered = ref_pl.plan_branches(
        gen, rewards, ref_ads.AttentionFilterState(3.0, 10), np.random.default_rng(0), rc
    )
    assert plan.filter_state.count == hstate.count and plan.num_filtered == hfiltered
    assert plan.filter_state.total == pytest.approx(hstate.total, rel=1e-14)
    both = 0
    for j in range(len(gen.prompts)):
        got, want = plan.branch_points[j * 6 : j * 6 + 6], points[j * 6 : j * 6 + 6]
        assert sum(map(bool, got)) == sum(map(bool, want))  # expansion counts and the filter
        group = rewards[j * 6 : j * 6 + 6]
        for a, b in zip(got, want, strict=True):
            # ATB is deterministic where both expand; uniform groups choose deterministically
            if (a and b) or group.min() == group.max():
                assert a == b
                both += bool(a)
    assert both > 50
    # build the trees of the jitted plan both ways, with the same graded continuations
    requests = sp.continuation_requests(gen, plan, rc.continuations, first_index=0)
    conts = fake_samples(requests, np.random.default_rng(2), version_logp=-0.5)
    rng = np.random.default_rng(3)
    cont_rewards = [rng.integers(0, 2, len(c)).astype(float) for c in conts]
    problems, stats = sp.build_problems(
        gen, rewards, plan, sp.attach(plan, conts), sp.attach(plan, cont_rewards), 4, rc
    )
    want, want_stats = ref_pl.build_problems(
        gen, rewards, plan.branch_points, conts, cont_rewards, rc
    )
    assert (stats.problems, stats.kept, stats.sequences) == want_stats[:3]
    assert stats.mean_leaf_reward == pytest.approx(want_stats[3], rel=1e-12)
    assert stats.kept > 0
    for problem, (j, tree, logp) in zip(problems, want, strict=True):
        assert problem.prompt_ids.tolist() == list(gen.prompts[j].prompt_ids)
        assert problem.tree.root_value == pytest.approx(tree.root_value, abs=1e-7)
        for a, b in zip(problem.tree.segments, tree.segments, strict=True):
            assert (a.response, a.parent, a.start, a.branch, a.continuation) == (
                b.response, b.parent, b.start, b.branch, b.continuation
            )  # fmt: skip
            assert a.advantage == pytest.approx(b.advantage, abs=2e-7)
        for x, y in zip(problem.segment_logp, logp, strict=True):
            np.testing.assert_array_equal(x, y)


def test_no_recompilation_across_steps(seps):
    """A second step with other rewards, fewer prompts (same buckets) and another filter state
    compiles nothing."""
    gen, rewards = long_generation(seps, prompts=24, seed=4)
    rc = rollout_config(group_size=6, selection=SelectionConfig(min_token_distance=20))

    def step(gen, rewards, state, seed):
        plan = sp.plan_branches(gen, rewards, state, np.random.default_rng(seed), rc)
        requests = sp.continuation_requests(gen, plan, rc.continuations, first_index=0)
        conts = fake_samples(requests, np.random.default_rng(seed), version_logp=-0.5)
        cont_rewards = [np.arange(len(c)) % 2 * 1.0 for c in conts]
        sp.build_problems(
            gen, rewards, plan, sp.attach(plan, conts), sp.attach(plan, cont_rewards), 1, rc
        )
        return plan

    plan = step(gen, rewards, ads.AttentionFilterState(), 0)
    n = 20 * 6
    smaller = ro.Generation(
        gen.prompts[:20], gen.responses[:n], gen.logprobs[:n], None, gen.fci[:n],
        gen.layouts[:n], 5,
    )  # fmt: skip
    steps = [lay.num_steps for lay in gen.layouts]
    assert power_of_two(max(steps[:n]), 16) == power_of_two(max(steps), 16)  # same step bucket
    with CompileWatch() as watch:
        step(smaller, 1.0 - rewards[:n], plan.filter_state, 1)
    assert watch.names == []


@pytest.mark.parametrize("g", [1, 2, 6, 8])
def test_grpo_batch_equals_host_reference(g):
    rng = np.random.default_rng(g)
    rewards = (rng.random((500, g)) < rng.random((500, 1))).astype(np.float32)
    got = np.asarray(grpo_advantages(rewards))
    want = np.stack([ref_grpo.grpo_advantages(r) for r in rewards])
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6)  # float32 against float64
    lengths = np.where(rng.random((500, g)) < 0.1, 0, 5)
    for mode in ("same_reward", "zero_advantage", "off"):
        keep = np.asarray(keep_groups(rewards, got, lengths, mode))
        for r, a, n, k in zip(rewards, want, lengths, keep, strict=True):
            if mode == "same_reward":
                assert k == (len(set(r.tolist())) > 1)
            elif mode == "zero_advantage":
                assert k == bool(np.any((a != 0) & (n > 0)))
            else:
                assert k


def test_batch_functions_run_sharded_over_problems(seps):
    """Selection, ADS and tree values on inputs sharded over a mesh of 8 (forced CPU) devices
    along problems give the single-device results."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    rows = NamedSharding(mesh, PartitionSpec("data"))

    def shard(tree):
        return jax.tree.map(lambda x: jax.device_put(x, rows) if np.ndim(x) else x, tree)

    gen, rewards = long_generation(seps, prompts=16, seed=5)
    inputs = selection_inputs(gen.layouts, gen.fci, rows=16 * 6)
    key = jax.random.key(1)
    cfg = SelectionConfig(min_token_distance=20)
    want = jax.device_get(select(inputs, key, cfg))
    got = select(shard(inputs), key, cfg)
    assert got[0].sharding.spec == PartitionSpec("data")  # the work stays split by rows
    for a, b in zip(jax.device_get(got), want, strict=True):
        np.testing.assert_array_equal(a, b)
    r = rewards.reshape(16, 6).astype(np.float32)
    fci = np.concatenate([np.zeros((96, 1), np.float32), inputs.fci], 1).reshape(16, 6, -1)
    mean = np.asarray(ads.problem_mean_fci(fci, inputs.num_steps.reshape(16, 6)))
    args = (np.ones(16, bool), mean, ads.AttentionFilterState(2.0, 3), key)
    want = jax.device_get(ads.expansion_plan(r, *args))
    got = jax.device_get(ads.expansion_plan(jax.device_put(r, rows), *args))
    assert jax.tree.all(jax.tree.map(np.array_equal, got, want))
    conts = tuple((tree_lib.Continuation(np.arange(2), c),) for c in (1.0, 0.0))
    problems = [
        [tree_lib.Response(np.arange(9), float(x), (3, 6), conts) for x in row] for row in r
    ]
    t_in = tree_lib.tree_inputs(problems)
    want = jax.device_get(tree_lib.tree_values(t_in))
    got = jax.device_get(tree_lib.tree_values(shard(t_in)))
    assert jax.tree.all(jax.tree.map(np.array_equal, got, want))


def test_generation_holds_fci_as_one_padded_array(seps):
    """Per-response FCI vectors become one [B, S_max + 1] array (zeros past each S_i + 1) and
    layouts one StepLayouts; a checkpoint in the per-response padding of earlier versions (the
    same [B, S_max + 1] array written row by row) restores to the same Generation."""
    gen = generation(seps)
    steps = np.array([lay.num_steps for lay in gen.layouts])
    assert isinstance(gen.layouts, StepLayouts) and gen.fci.shape == (2 * G, steps.max() + 1)
    assert not gen.fci[np.arange(gen.fci.shape[1]) > steps[:, None]].any()
    arrays, meta = generation_to_state(gen)
    old = np.zeros_like(arrays["fci"])  # the former writer: one row at a time
    for i, s in enumerate(steps):
        old[i, : s + 1] = gen.fci[i, : s + 1]
    back = generation_from_state({**arrays, "fci": old}, meta, seps)
    np.testing.assert_array_equal(back.fci, gen.fci)
    assert back.layouts == gen.layouts
    with pytest.raises(ValueError, match="cannot hold"):
        ro.Generation(gen.prompts, gen.responses, gen.logprobs, None, gen.fci[:, :2],
                      gen.layouts, 1)  # fmt: skip


def _on_device(gen, rows, columns):
    """gen with its FCI as the sampler gives it: a device array padded to [rows, columns]."""
    padded = np.zeros((rows, columns), np.float32)
    padded[: gen.fci.shape[0], : gen.fci.shape[1]] = gen.fci
    return dataclasses.replace(gen, fci=jax.device_put(padded))


def test_plan_takes_device_fci_without_a_host_copy(seps, monkeypatch):
    """A Generation holding the sampler's device FCI plans the same branches as the host one;
    selection runs with device->host transfers disallowed, and the plan fetches no float
    [rows, steps] array (only offsets, masks and scalars)."""
    gen, rewards = long_generation(seps, prompts=10, seed=3)
    device_gen = _on_device(gen, 64, 256)
    rc = rollout_config(group_size=6, ads=ads.ADSConfig(all_correct="attention"))
    state = ads.AttentionFilterState(2.0, 3)
    want = sp.plan_branches(gen, rewards, state, np.random.default_rng(4), rc)
    fetched = []
    real_get = jax.device_get

    def spy(tree):
        fetched.extend(jax.tree.leaves(tree))
        return real_get(tree)

    monkeypatch.setattr(jax, "device_get", spy)
    got = sp.plan_branches(device_gen, rewards, state, np.random.default_rng(4), rc)
    assert got == want and any(want.branch_points)
    assert not [x.shape for x in fetched if np.ndim(x) == 2 and x.dtype == np.float32]
    monkeypatch.setattr(jax, "device_get", real_get)
    with jax.transfer_guard_device_to_host("disallow"):
        inputs = selection_inputs(device_gen.layouts, device_gen.fci, rows=16 * 6)
        offsets, valid = select(inputs, jax.random.key(0), rc.selection)
    host = selection_inputs(gen.layouts, gen.fci, rows=16 * 6)
    np.testing.assert_array_equal(np.asarray(inputs.fci), host.fci)
    want = jax.device_get(select(host, jax.random.key(0), rc.selection))
    np.testing.assert_array_equal(jax.device_get(offsets), want[0])


def test_device_fci_generation_saves_and_restores(seps):
    """The checkpoint of a Generation whose FCI is a padded device array holds its [B, W] host
    copy (the one copy on this path) and restores to the host Generation's values."""
    gen = generation(seps)
    device_gen = _on_device(gen, 8, 16)
    np.testing.assert_array_equal(
        device_gen.fci_host(), np.pad(gen.fci, ((0, 0), (0, 16 - gen.fci.shape[1])))
    )
    arrays, meta = generation_to_state(device_gen)
    assert arrays["fci"].shape == (2 * G, 16)
    back = generation_from_state(arrays, meta, seps)
    np.testing.assert_array_equal(back.fci[:, : gen.fci.shape[1]], gen.fci)
    assert not back.fci[:, gen.fci.shape[1] :].any() and back.layouts == gen.layouts
    with pytest.raises(ValueError, match="cannot hold"):
        dataclasses.replace(gen, fci=jax.device_put(np.zeros((2 * G - 1, 16), np.float32)))
