"""ADS (ALGORITHM.md section 6): expansion counts and choices, the attention filter and its
running mean, the zero-advantage filter and the adaptive prompt batch size; the jitted batch
functions against the former host implementation (tests/reference_ads.py) on random batches."""

import math

import jax
import numpy as np
import pytest
import reference_ads as ref
import reference_tree as ref_tree
from test_rl_tree import random_problem

from attnrl_jax.rl.ads import (
    ADSConfig,
    AttentionFilterState,
    _next_size,
    attention_filter,
    choose_expansions,
    expansion_count,
    expansion_plan,
    keep_problems,
    next_prompt_batch_size,
    plan_expansions,
    problem_mean_fci,
)
from attnrl_jax.rl.tree import Continuation, Response, tree_inputs, tree_values


def test_expansion_counts_for_g6():
    # released code: ceil(6 * exp(-c / 6)) for c = 0..6
    assert [expansion_count(c, 6) for c in range(7)] == [6, 6, 5, 4, 4, 3, 3]
    rounded = ADSConfig(rounding="round")
    assert [expansion_count(c, 6, rounded) for c in range(7)] == [6, 5, 4, 4, 3, 3, 2]
    assert [expansion_count(c, 6, ADSConfig(expansion="uniform")) for c in range(7)] == [6] * 7
    with pytest.raises(ValueError):
        expansion_count(7, 6)


@pytest.mark.parametrize("rounding", ["ceil", "round"])
def test_expansion_count_covers_the_minority(rounding):
    cfg = ADSConfig(rounding=rounding)
    for g in range(1, 40):
        assert expansion_count(0, g, cfg) == g  # all-wrong: all G
        for c in range(g + 1):
            n = expansion_count(c, g, cfg)
            assert min(c, g - c) <= n <= g


def test_mixed_choice_takes_minority_then_random_others():
    rng = np.random.default_rng(0)
    rewards = np.array([0, 1, 1, 1, 1, 0])  # c = 4: count 4, minority = the two wrong ones
    seen = set()
    for _ in range(40):
        idx = choose_expansions(rewards, rng)
        assert len(idx) == 4 and len(set(idx.tolist())) == 4 and list(idx) == sorted(idx)
        assert {0, 5} <= set(idx.tolist())
        seen |= set(idx.tolist())
    assert seen == set(range(6))  # the others are sampled, not fixed
    one_right = choose_expansions(np.array([0, 0, 1, 0, 0, 0]), rng)  # c = 1: count 6
    assert one_right.tolist() == list(range(6))
    two_right = choose_expansions(np.array([1, 0, 0, 0, 1, 0]), rng)  # c = 2: count 5
    assert len(two_right) == 5 and {0, 4} <= set(two_right.tolist())


def test_tie_takes_incorrect_as_minority():
    rng = np.random.default_rng(1)
    rewards = np.array([1, 0, 1, 0, 1, 0])  # c = 3: count 4; all 3 wrong, then one right
    for _ in range(10):
        idx = set(choose_expansions(rewards, rng).tolist())
        assert {1, 3, 5} <= idx and len(idx) == 4


def test_choice_is_reproducible_from_the_seed():
    rewards = np.array([1, 1, 1, 1, 1, 0, 1, 1])
    a = [choose_expansions(rewards, np.random.default_rng(7)).tolist() for _ in range(2)]
    assert a[0] == a[1]


def test_uniform_rewards_choose_leading_responses():
    rng = np.random.default_rng(0)
    assert choose_expansions(np.zeros(6), rng).tolist() == list(range(6))
    assert choose_expansions(np.ones(6), rng).tolist() == [0, 1, 2]  # ceil(6 / e) = 3


def test_problem_mean_fci_includes_zero_steps_and_ignores_padding():
    fci = np.array([[9.0, 0.0, 2.0, 4.0, 7.0], [9.0, 1.0, 0.0, 0.0, 0.0]])
    # response 0: steps 1..3 -> mean(0, 2, 4) = 2; response 1: steps 1..1 -> 1 (padding ignored)
    assert problem_mean_fci(fci, np.array([3, 1])) == pytest.approx(1.5)


def test_attention_filter_includes_current_batch_before_judging():
    state = AttentionFilterState()
    state, keep = attention_filter(state, np.array([1.0, 3.0]))
    assert (state.total, state.count) == (4.0, 2)
    assert keep.tolist() == [False, True]  # mean 2 includes both
    state, keep = attention_filter(state, np.array([2.5]))  # mean (4 + 2.5) / 3 = 2.1667
    assert keep.tolist() == [True]
    state, keep = attention_filter(state, np.array([6.5 / 3]))  # equal to the new mean: strict >
    assert keep.tolist() == [False] and state.count == 4
    same, keep = attention_filter(state, np.zeros(0))
    assert same == state and keep.shape == (0,)
    first, keep = attention_filter(AttentionFilterState(), np.array([5.0]))
    assert keep.tolist() == [False]  # a lone first problem equals its own mean


def test_attention_filter_state_is_a_pytree():
    state = AttentionFilterState(3.5, 4)
    leaves, treedef = jax.tree_util.tree_flatten(state)
    assert leaves == [3.5, 4]
    assert jax.tree_util.tree_unflatten(treedef, leaves) == state


def test_plan_expansions_filters_only_all_correct_problems():
    rewards = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0], [1, 0, 0, 0]])
    mean_fci = np.array([0.2, 0.6, 100.0, 100.0])  # only rows 0 and 1 enter the running mean
    state, chosen = plan_expansions(
        rewards, mean_fci, AttentionFilterState(1.0, 1), np.random.default_rng(0)
    )
    assert (state.total, state.count) == pytest.approx((1.8, 3))
    # mean 0.6: row 0 (0.2) filtered, row 1 (0.6) not > 0.6 filtered too
    assert [c.tolist() for c in chosen[:3]] == [[], [], [0, 1, 2, 3]]
    assert chosen[3].tolist() == [0, 1, 2, 3]  # c = 1 of 4: ceil(4 exp(-1/4)) = 4
    state2, chosen2 = plan_expansions(
        rewards, mean_fci, AttentionFilterState(0.0, 3), np.random.default_rng(0)
    )
    assert [c.tolist() for c in chosen2[:2]] == [[0, 1], [0, 1]]  # mean 0.16: both pass
    _, always = plan_expansions(
        rewards, mean_fci, state, np.random.default_rng(0), ADSConfig(all_correct="always")
    )
    assert [c.tolist() for c in always[:2]] == [[0, 1], [0, 1]]  # ceil(4 / e) = 2


def tree_of(path_rewards, unexpanded_reward):
    """One expanded response (reward path_rewards[0]) with continuations path_rewards[1:]."""
    conts = tuple(Continuation(np.arange(2), r) for r in path_rewards[1:])
    return [
        Response(np.arange(6), path_rewards[0], (3,), (conts,)),
        Response(np.arange(4), unexpanded_reward),
    ]


def keep_problem(problem, config=None):
    """keep_problems on a batch of one."""
    return keep_batch([problem], config or ADSConfig())[0]


def keep_batch(problems, config, merge=True):
    inputs = tree_inputs(problems)
    keep = keep_problems(inputs, tree_values(inputs, merge), config.zero_advantage_filter)
    return jax.device_get(keep)[: len(problems)].tolist()


def test_zero_advantage_filter_variants():
    mixed, same = tree_of([1, 0, 1], 1), tree_of([1, 1, 1], 1)
    signal_from_root = tree_of([1, 1, 1], 0)  # paths agree, but V(root) sees the unexpanded 0
    assert keep_problem(mixed) and not keep_problem(same)
    assert not keep_problem(signal_from_root)  # released: judged on the paths' rewards
    by_adv = ADSConfig(zero_advantage_filter="zero_advantage")
    assert keep_problem(mixed, by_adv) and not keep_problem(same, by_adv)
    assert keep_problem(signal_from_root, by_adv)
    assert keep_problem(same, ADSConfig(zero_advantage_filter="off"))
    no_paths = [Response(np.arange(3), 1), Response(np.arange(3), 0)]
    assert not keep_problem(no_paths, ADSConfig(zero_advantage_filter="off"))


def test_next_prompt_batch_size_formula():
    def reference(prev, seqs, target=1920, lam=0.9):
        return math.ceil(round((1 - lam) * math.floor(prev * target / seqs) + lam * prev, 9))

    assert next_prompt_batch_size(64, 1920) == 64
    assert next_prompt_batch_size(64, 960) == math.ceil(0.1 * 128 + 0.9 * 64)  # 70
    assert next_prompt_batch_size(64, 3840) == math.ceil(0.1 * 32 + 0.9 * 64)  # 61
    # floor inside: 64 * 1920 / 1000 = 122.88 -> 122; 12.2 + 57.6 = 69.8 -> 70
    assert next_prompt_batch_size(64, 1000) == 70
    for prev, seqs in [(64, 1700), (100, 777), (81, 2500), (64, 1), (1, 5000)]:
        assert next_prompt_batch_size(prev, seqs) == reference(prev, seqs)
    cfg = ADSConfig(target_sequences=100, batch_lambda=0.5)
    assert next_prompt_batch_size(10, 50, cfg) == math.ceil(0.5 * 20 + 0.5 * 10)
    assert next_prompt_batch_size(10, 30, cfg) == 22  # floor(33.33) = 33; 16.5 + 5 = 21.5 -> 22
    assert next_prompt_batch_size(37, 0) == 37  # B'' = 0: keep the size
    assert next_prompt_batch_size(1, 10**6) == 1


def test_next_prompt_batch_size_is_exact_where_float_rounds_up():
    # on target (B'' = B'): 0.1 * 62 + 0.9 * 62 > 62 in float64, so float ceil gives 63
    assert math.ceil(0.1 * 62 + 0.9 * 62) == 63
    assert next_prompt_batch_size(62, 1920) == 62


def test_config_validation():
    for bad in (
        {"rounding": "floor"},
        {"expansion": "linear"},
        {"all_correct": "sometimes"},
        {"zero_advantage_filter": "x"},
        {"batch_lambda": 1.5},
    ):
        with pytest.raises(ValueError):
            ADSConfig(**bad)
    assert ADSConfig().target_sequences == 64 * 6 * 5


# --- the jitted batch functions against the host reference on random batches -------------------


def random_batch(rng, p=512, g=6):
    """Rewards with all-correct, all-wrong and mixed groups; FCI with zeros and ties."""
    kind = rng.integers(0, 3, p)
    rewards = (rng.random((p, g)) < rng.random((p, 1))).astype(np.float32)
    rewards[kind == 0] = 1.0
    rewards[kind == 1] = 0.0
    steps = rng.integers(0, 40, (p, g))
    fci = np.where(rng.random((p, g, 64)) < 0.3, 0.0, rng.integers(0, 9, (p, g, 64)) / 8.0)
    return rewards, fci.astype(np.float32), steps


def test_mean_fci_and_filter_equal_host_reference():
    rng = np.random.default_rng(5)
    rewards, fci, steps = random_batch(rng)
    got = np.asarray(problem_mean_fci(fci, steps))
    want = [ref.problem_mean_fci(f, np.maximum(s, 1)) for f, s in zip(fci, steps, strict=True)]
    np.testing.assert_allclose(got, want, rtol=1e-14)  # float64 both; summation order differs
    for cfg in (ADSConfig(), ADSConfig(all_correct="always"), ADSConfig(rounding="round")):
        state = AttentionFilterState(7.5, 20)
        new, chosen = plan_expansions(rewards, want, state, np.random.default_rng(1), cfg)
        hcfg = ref.ADSConfig(all_correct=cfg.all_correct, rounding=cfg.rounding)
        hstate, hchosen = ref.plan_expansions(
            rewards, np.array(want), ref.AttentionFilterState(7.5, 20), rng, hcfg
        )
        assert new.count == hstate.count  # float64 sums in another order: last-bit differences
        assert new.total == pytest.approx(hstate.total, rel=1e-14)
        for r, a, b in zip(rewards, chosen, hchosen, strict=True):
            assert len(a) == len(b) and list(a) == sorted(a)  # count and filter decisions
            c = int(r.sum())
            if c in (0, len(r)):
                assert a.tolist() == b.tolist()  # deterministic: the first `count`
            else:  # mixed: every minority response, the rest from the others
                minority = np.flatnonzero(r <= 0) if c >= len(r) - c else np.flatnonzero(r > 0)
                assert set(minority) <= set(a.tolist())


def test_mixed_picks_are_uniform_and_batch_independent():
    rewards = np.tile(np.array([[1, 1, 1, 1, 1, 0]], np.float32), (4096, 1))  # c=5: count 3
    state = AttentionFilterState()
    key = jax.random.key(3)
    _, expand, _ = expansion_plan(rewards, np.ones(4096, bool), np.zeros(4096), state, key)
    expand = np.asarray(expand)
    assert (expand.sum(1) == 3).all() and expand[:, 5].all()
    freq = expand[:, :5].mean(0)  # 2 of 5 others: 0.4 each, sd 0.0077
    np.testing.assert_allclose(freq, 0.4, atol=0.04)
    _, few, _ = expansion_plan(rewards[:8], np.ones(8, bool), np.zeros(8), state, key)
    np.testing.assert_array_equal(np.asarray(few), expand[:8])


@pytest.mark.parametrize("mode", ["same_reward", "zero_advantage", "off"])
def test_keep_problems_equal_host_reference(mode):
    rng = np.random.default_rng(11)
    problems = [random_problem(rng) for _ in range(400)]
    got = keep_batch(problems, ADSConfig(zero_advantage_filter=mode))
    for problem, keep in zip(problems, got, strict=True):
        tree = ref_tree.build_tree(
            [ref_tree.Response(x.tokens, x.reward, x.branch_points,
                               tuple(tuple(ref_tree.Continuation(c.tokens, c.reward) for c in gr)
                                     for gr in x.continuations)) for x in problem]
        )  # fmt: skip
        assert keep == ref.keep_problem(tree, ref.ADSConfig(zero_advantage_filter=mode))


def test_batch_size_rule_equals_host_reference():
    rng = np.random.default_rng(2)
    prev = rng.integers(1, 300, 5000)
    seqs = np.where(rng.random(5000) < 0.05, 0, rng.integers(1, 6000, 5000))
    for cfg in (ADSConfig(), ADSConfig(batch_lambda=0.5, target_sequences=777)):
        lam = ref.Fraction(repr(cfg.batch_lambda))
        got = _next_size(prev, seqs, cfg.target_sequences, lam.numerator, lam.denominator)
        hcfg = ref.ADSConfig(batch_lambda=cfg.batch_lambda, target_sequences=cfg.target_sequences)
        want = [
            ref.next_prompt_batch_size(int(a), int(b), hcfg)
            for a, b in zip(prev, seqs, strict=True)
        ]
        assert np.asarray(got).tolist() == want
