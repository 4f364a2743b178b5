"""ADS (ALGORITHM.md section 6): expansion counts and choices, the attention filter and its
running mean, the zero-advantage filter, the adaptive prompt batch size and bucket padding."""

import math

import jax
import numpy as np
import pytest

from attnrl_jax.rl.ads import (
    ADSConfig,
    AttentionFilterState,
    attention_filter,
    bucket_size,
    choose_expansions,
    expansion_count,
    keep_problem,
    next_prompt_batch_size,
    pad_rows,
    plan_expansions,
    problem_mean_fci,
)
from attnrl_jax.rl.tree import Continuation, Response, build_tree


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
    return build_tree(
        [
            Response(np.arange(6), path_rewards[0], (3,), (conts,)),
            Response(np.arange(4), unexpanded_reward),
        ]
    )


def test_zero_advantage_filter_variants():
    mixed, same = tree_of([1, 0, 1], 1), tree_of([1, 1, 1], 1)
    signal_from_root = tree_of([1, 1, 1], 0)  # paths agree, but V(root) sees the unexpanded 0
    assert keep_problem(mixed) and not keep_problem(same)
    assert not keep_problem(signal_from_root)  # released: judged on the paths' rewards
    by_adv = ADSConfig(zero_advantage_filter="zero_advantage")
    assert keep_problem(mixed, by_adv) and not keep_problem(same, by_adv)
    assert keep_problem(signal_from_root, by_adv)
    assert keep_problem(same, ADSConfig(zero_advantage_filter="off"))
    no_paths = build_tree([Response(np.arange(3), 1), Response(np.arange(3), 0)])
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


def test_bucket_size_and_padding():
    buckets = (4, 8, 16)
    assert [bucket_size(n, buckets) for n in (0, 1, 4, 5, 8, 9, 16, 17, 33)] == [
        4, 4, 4, 8, 8, 16, 16, 32, 48,
    ]  # fmt: skip
    rows = {"tokens": np.ones((5, 3), np.int32), "reward": np.arange(1.0, 6.0)}
    out = pad_rows(rows, buckets)
    assert out["tokens"].shape == (8, 3) and out["tokens"].dtype == np.int32
    np.testing.assert_array_equal(out["tokens"][5:], 0)
    np.testing.assert_array_equal(out["reward"], [1, 2, 3, 4, 5, 0, 0, 0])
    np.testing.assert_array_equal(out["row_weight"], [1] * 5 + [0] * 3)
    with pytest.raises(ValueError, match="row count"):
        pad_rows({"a": np.zeros(2), "b": np.zeros(3)}, buckets)


def test_config_validation():
    for bad in (
        {"rounding": "floor"},
        {"expansion": "linear"},
        {"all_correct": "sometimes"},
        {"zero_advantage_filter": "x"},
        {"batch_lambda": 1.5},
        {"row_buckets": (8, 4)},
        {"row_buckets": ()},
    ):
        with pytest.raises(ValueError):
            ADSConfig(**bad)
    assert ADSConfig().target_sequences == 64 * 6 * 5
