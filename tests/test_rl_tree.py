"""Tree values and advantages (ALGORITHM.md section 5): hand-computed trees, a slow direct
implementation of the definition on random trees, packed-form vs per-path equivalence, and the
batched jitted values against the former host implementation (tests/reference_tree.py)."""

import math
from collections import defaultdict

import numpy as np
import pytest
import reference_tree as ref

from attnrl_jax.rl.tree import (
    Continuation,
    Response,
    assemble_trees,
    build_tree,
    build_trees,
    tree_batch,
)


def toks(n: int, base: int) -> np.ndarray:
    return np.arange(base, base + n, dtype=np.int32)


def resp(n, reward, points=(), cont_rewards=(), base=0):
    """A response of n tokens with continuations of 3 tokens each (ids unique per continuation)."""
    conts = tuple(
        tuple(
            Continuation(toks(3, 1000 * (base + 1) + 100 * i + 10 * k), r) for k, r in enumerate(rs)
        )
        for i, rs in enumerate(cont_rewards)
    )
    return Response(toks(n, 10 * base), reward, tuple(points), conts)


def path_by_leaf(tree):
    return {(p.response, p.branch, p.continuation): p for p in tree.paths}


def assert_path(p, expected_lens_advs):
    """Per-token advantages are the given (length, advantage) runs, in order."""
    lens = [n for n, _ in expected_lens_advs]
    want = np.repeat([a for _, a in expected_lens_advs], lens)
    np.testing.assert_allclose(p.advantages, want, rtol=1e-6, atol=1e-7)


def test_mixed_tree_hand_computed():
    # r0 (reward 1, 10 tokens) branches at 3 (conts 0, 1) and 6 (conts 0, 0); r1 unexpanded (0).
    tree = build_tree([resp(10, 1, (3, 6), ((0, 1), (0, 0))), resp(8, 0, base=1)])
    # leaves: S2 1, 0, 1, 0, 0, r1 0 -> V(root) = 1/3
    assert tree.root_value == pytest.approx(1 / 3)
    v_root, v_s0, v_s1 = 1 / 3, 2 / 5, 1 / 3
    a_s0 = 2 * (v_s0 - v_root) / math.sqrt(5)
    a_s1 = ((v_s1 - v_root) + (v_s1 - v_s0)) / math.sqrt(3)
    a_s2 = (1 - v_root) + (1 - v_s1)
    paths = path_by_leaf(tree)
    assert len(paths) == 5  # the unexpanded response is not trained on
    assert_path(paths[(0, -1, -1)], [(3, a_s0), (3, a_s1), (4, a_s2)])
    assert_path(paths[(0, 0, 0)], [(3, a_s0), (3, -v_root - v_s0)])
    assert_path(paths[(0, 0, 1)], [(3, a_s0), (3, (1 - v_root) + (1 - v_s0))])
    for k in (0, 1):
        assert_path(paths[(0, 1, k)], [(3, a_s0), (3, a_s1), (3, -v_root - v_s1)])
    p = paths[(0, 1, 1)]
    np.testing.assert_array_equal(p.tokens, np.concatenate([toks(6, 0), toks(3, 1110)]))
    np.testing.assert_array_equal(p.from_response, [True] * 6 + [False] * 3)
    np.testing.assert_array_equal(paths[(0, -1, -1)].from_response, [True] * 10)
    assert [p.reward for p in tree.paths].count(1.0) == 2
    counts = {(s.start, s.branch): s.path_count for s in tree.segments}
    assert counts[(0, -1)] == 5 and counts[(3, -1)] == 3 and counts[(6, -1)] == 1


@pytest.mark.parametrize("reward", [0, 1])
def test_uniform_rewards_give_zero_advantages(reward):
    tree = build_tree(
        [
            resp(9, reward, (2, 5), ((reward,) * 2, (reward,) * 2)),
            resp(7, reward, base=1),
            resp(8, reward, (4,), ((reward, reward),), base=2),
        ]
    )
    assert tree.root_value == reward
    assert len(tree.paths) == 5 + 3
    for p in tree.paths:
        np.testing.assert_array_equal(p.advantages, 0.0)


def dup_problem():
    # r0 (reward 0, 8 tokens) branches twice at 4: conts (1, 0) then (1, 1); r1 unexpanded (1).
    return [resp(8, 0, (4, 4), ((1, 0), (1, 1))), resp(5, 1, base=1)]


def test_duplicate_branch_points_merged_like_released_code():
    tree = build_tree(dup_problem())
    v_root, v_s0 = 4 / 6, 3 / 5
    a_s0 = 2 * (v_s0 - v_root) / math.sqrt(5)
    paths = path_by_leaf(tree)
    assert len(paths) == 5 and len(tree.segments) == 2 + 4
    assert_path(paths[(0, -1, -1)], [(4, a_s0), (4, -v_root - v_s0)])
    for branch, k in [(0, 0), (1, 0), (1, 1)]:
        assert_path(paths[(0, branch, k)], [(4, a_s0), (3, (1 - v_root) + (1 - v_s0))])
    assert_path(paths[(0, 0, 1)], [(4, a_s0), (3, -v_root - v_s0)])


def test_duplicate_branch_points_kept_apart_give_an_empty_segment():
    tree = build_tree(dup_problem(), merge_duplicates=False)
    v_root, v_s0, v_s1 = 4 / 6, 3 / 5, 2 / 3
    a_s0 = 2 * (v_s0 - v_root) / math.sqrt(5)
    a_s1 = ((v_s1 - v_root) + (v_s1 - v_s0)) / math.sqrt(3)
    empty = [s for s in tree.segments if len(s.tokens) == 0]
    assert len(empty) == 1 and empty[0].path_count == 3
    assert empty[0].advantage == pytest.approx(a_s1)
    paths = path_by_leaf(tree)
    assert_path(paths[(0, -1, -1)], [(4, a_s0), (4, -v_root - v_s1)])
    assert_path(paths[(0, 0, 0)], [(4, a_s0), (3, (1 - v_root) + (1 - v_s0))])
    assert_path(paths[(0, 0, 1)], [(4, a_s0), (3, -v_root - v_s0)])
    for k in (0, 1):
        assert_path(paths[(0, 1, k)], [(4, a_s0), (3, (1 - v_root) + (1 - v_s1))])
    assert len(paths[(0, -1, -1)].segments) == 3


def test_branch_point_at_zero_and_unsorted_points():
    # entropy branching may pick offset 0 (empty prefix); points arrive in selection order
    tree = build_tree([resp(6, 1, (4, 0), ((0,), (0,))), resp(4, 0, base=1)])
    v_root, v_s0, v_s1 = 1 / 4, 1 / 3, 1 / 2
    paths = path_by_leaf(tree)
    assert_path(paths[(0, 1, 0)], [(3, -v_root - v_s0)])  # empty S0, then the continuation
    assert_path(
        paths[(0, 0, 0)],
        [(4, ((v_s1 - v_root) + (v_s1 - v_s0)) / math.sqrt(2)), (3, -v_root - v_s1)],
    )
    assert paths[(0, -1, -1)].tokens.tolist() == list(range(6))


def test_branch_point_without_continuations_is_no_branch_point():
    tree = build_tree([resp(6, 1, (2, 4), ((), (0, 1))), resp(4, 0, base=1)])
    assert sorted(s.start for s in tree.segments if s.branch == -1) == [0, 4]
    assert build_tree([resp(6, 1, (2,), ((),)), resp(4, 0, base=1)]).paths == ()


def test_invalid_inputs():
    with pytest.raises(ValueError, match="one group per branch point"):
        Response(toks(5, 0), 1, (2,), ())
    with pytest.raises(ValueError, match="outside"):
        Response(toks(5, 0), 1, (6,), ((Continuation(toks(2, 0), 1),),))


# --- slow direct implementation of the definition -------------------------------------------


def slow_paths(responses, merge):
    """Explicit node objects, leaves by recursion, the advantage formula verbatim."""

    def node(tokens, from_resp, parent, leaf=None):
        n = {"tokens": list(tokens), "from_resp": from_resp, "parent": parent, "kids": []}
        n["leaf"] = leaf
        if parent is not None:
            parent["kids"].append(n)
        return n

    def leaves(n):
        return [n] if not n["kids"] else [x for k in n["kids"] for x in leaves(k)]

    root = node([], True, None)
    for j, r in enumerate(responses):
        pts = [(b, i) for i, b in enumerate(r.branch_points) if r.continuations[i]]
        if not pts:
            node(r.tokens, True, root, ((j, None), r.reward))
            continue
        groups = []
        for b, i in sorted(pts):
            if merge and groups and groups[-1][0] == b:
                groups[-1][1].append(i)
            else:
                groups.append((b, [i]))
        cuts = [0] + [b for b, _ in groups] + [len(r.tokens)]
        parent = root
        for g in range(len(groups) + 1):
            last = g == len(groups)
            seg = node(r.tokens[cuts[g] : cuts[g + 1]], True, parent, None)
            if last:
                seg["leaf"] = ((j, (-1, -1)), r.reward)
            else:
                for i in groups[g][1]:
                    for k, c in enumerate(r.continuations[i]):
                        node(c.tokens, False, seg, ((j, (i, k)), c.reward))
            parent = seg

    def value(n):
        return float(np.mean([x["leaf"][1] for x in leaves(n)]))

    v_root = value(root)
    out = {}
    for lf in leaves(root):
        chain, n = [], lf
        while n is not root:
            chain.append(n)
            n = n["parent"]
        if len(chain) == 1:  # an unexpanded response's single node
            continue
        advs, tokens, src = [], [], []
        for n in reversed(chain):
            p = n["parent"]
            a = ((value(n) - v_root) + (value(n) - value(p))) / math.sqrt(len(leaves(n)))
            advs += [a] * len(n["tokens"])
            tokens += n["tokens"]
            src += [n["from_resp"]] * len(n["tokens"])
        j, (i, k) = lf["leaf"][0]
        out[(j, i, k)] = (tokens, advs, src, lf["leaf"][1])
    return v_root, out


def random_problem(rng):
    responses = []
    for j in range(int(rng.integers(1, 7))):
        n = int(rng.integers(1, 12))
        reward = int(rng.integers(0, 2))
        if rng.random() < 0.3:
            responses.append(Response(toks(n, 50 * j), reward))
            continue
        points = tuple(int(b) for b in rng.integers(0, n + 1, size=int(rng.integers(0, 3))))
        if len(points) == 2 and rng.random() < 0.3:
            points = (points[0], points[0])
        conts = tuple(
            tuple(
                Continuation(toks(int(rng.integers(1, 5)), 5000 + 100 * j + 10 * i + k), int(c))
                for k, c in enumerate(rng.integers(0, 2, size=int(rng.integers(0, 3))))
            )
            for i in range(len(points))
        )
        responses.append(Response(toks(n, 50 * j), reward, points, conts))
    return responses


@pytest.mark.parametrize("merge", [True, False])
def test_random_trees_match_slow_definition(merge):
    rng = np.random.default_rng(0 if merge else 1)
    for _ in range(150):
        problem = random_problem(rng)
        tree = build_tree(problem, merge_duplicates=merge)
        v_root, want = slow_paths(problem, merge)
        assert tree.root_value == pytest.approx(v_root, abs=1e-7)  # float32 values
        got = path_by_leaf(tree)
        assert set(got) == set(want)
        for key, (tokens, advs, src, reward) in want.items():
            p = got[key]
            assert p.tokens.tolist() == tokens and p.from_response.tolist() == src
            np.testing.assert_allclose(p.advantages, advs, rtol=1e-6, atol=1e-7)
            assert p.reward == reward


def test_packed_segments_equal_sum_over_paths():
    """Per distinct token: sum over paths of its advantage == path count x advantage (packed),
    and every path is the concatenation of its segments."""
    rng = np.random.default_rng(2)
    for _ in range(100):
        tree = build_tree(random_problem(rng))
        per_path = defaultdict(float)
        visits = defaultdict(int)
        for p in tree.paths:
            pos = 0
            for s in p.segments:
                seg = tree.segments[s]
                for t in range(len(seg.tokens)):
                    per_path[(s, t)] += float(p.advantages[pos + t])
                    visits[(s, t)] += 1
                pos += len(seg.tokens)
            assert pos == len(p.tokens)
            np.testing.assert_array_equal(
                p.tokens, np.concatenate([tree.segments[s].tokens for s in p.segments])
            )
        for s, seg in enumerate(tree.segments):
            assert seg.parent < s
            assert seg.start == (0 if seg.parent < 0 else _end(tree, seg.parent))
            for t in range(len(seg.tokens)):
                assert visits[(s, t)] == seg.path_count
                assert per_path[(s, t)] == pytest.approx(seg.path_count * seg.advantage, abs=1e-6)
        total_path = sum(float(p.advantages.sum()) for p in tree.paths)
        total_packed = sum(s.path_count * s.advantage * len(s.tokens) for s in tree.segments)
        assert total_path == pytest.approx(total_packed, abs=1e-5)


def _end(tree, s):
    seg = tree.segments[s]
    return seg.start + len(seg.tokens)


@pytest.mark.parametrize("merge", [True, False])
def test_batched_trees_equal_host_reference(merge):
    """One jitted call for 600 random problems == the former host implementation per problem."""
    rng = np.random.default_rng(7)
    problems = [random_problem(rng) for _ in range(600)]
    for j in range(0, 600, 3):  # all-correct and all-wrong groups too
        r = j % 2
        problems[j] = [
            Response(x.tokens, r, x.branch_points,
                     tuple(tuple(Continuation(c.tokens, r) for c in g) for g in x.continuations))
            for x in problems[j]
        ]  # fmt: skip
    got = build_trees(problems, merge)
    for problem, tree in zip(problems, got, strict=True):
        want = ref.build_tree(
            [ref.Response(x.tokens, x.reward, x.branch_points,
                          tuple(tuple(ref.Continuation(c.tokens, c.reward) for c in g)
                                for g in x.continuations)) for x in problem],
            merge,
        )  # fmt: skip
        assert tree.root_value == pytest.approx(want.root_value, abs=1e-7)
        assert len(tree.segments) == len(want.segments) and len(tree.paths) == len(want.paths)
        for a, b in zip(tree.segments, want.segments, strict=True):
            assert (a.response, a.parent, a.start, a.branch, a.continuation, a.path_count) == (
                b.response, b.parent, b.start, b.branch, b.continuation, b.path_count
            )  # fmt: skip
            assert a.tokens.tolist() == b.tokens.tolist()
            assert a.value == pytest.approx(b.value, abs=1e-7)
            assert a.advantage == pytest.approx(b.advantage, abs=2e-7)  # float32, |A| <= 2
        for a, b in zip(tree.paths, want.paths, strict=True):
            assert (a.response, a.branch, a.continuation, a.segments, a.reward) == (
                b.response, b.branch, b.continuation, b.segments, b.reward
            )  # fmt: skip
            np.testing.assert_array_equal(a.tokens, b.tokens)
            np.testing.assert_array_equal(a.from_response, b.from_response)
            np.testing.assert_allclose(a.advantages, b.advantages, rtol=0, atol=2e-7)


def test_assembling_a_subset_from_device_values_equals_the_whole_batch():
    """assemble_trees on kept problems only (device arrays in) gives those problems' trees, and
    a path's per-token arrays are its segments' (tokens, advantage, source) laid end to end."""
    rng = np.random.default_rng(11)
    problems = [random_problem(rng) for _ in range(40)]
    inputs, values = tree_batch(problems)
    whole = assemble_trees(problems, inputs, values)
    which = [3, 0, 17, 39]
    for tree, want in zip(
        assemble_trees(problems, inputs, values, which), [whole[i] for i in which], strict=True
    ):
        assert tree.root_value == want.root_value
        assert [(s.parent, s.start, s.advantage, s.tokens.tolist()) for s in tree.segments] == [
            (s.parent, s.start, s.advantage, s.tokens.tolist()) for s in want.segments
        ]
        assert [p.segments for p in tree.paths] == [p.segments for p in want.paths]
    for tree in whole:
        for p in tree.paths:
            segs = [tree.segments[s] for s in p.segments]
            np.testing.assert_array_equal(p.lengths, [len(s.tokens) for s in segs])
            for s, adv, src, tok in zip(
                segs,
                np.split(p.advantages, np.cumsum(p.lengths)[:-1]),
                np.split(p.from_response, np.cumsum(p.lengths)[:-1]),
                np.split(p.tokens, np.cumsum(p.lengths)[:-1]),
                strict=True,
            ):
                assert (adv == np.float32(s.advantage)).all() and (src == (s.branch == -1)).all()
                np.testing.assert_array_equal(tok, s.tokens)


def test_assembling_no_problem_gives_no_tree():
    """The zero-advantage filter can drop every problem of a step."""
    problems = [[resp(6, 1, (2,), ((1,),)), resp(4, 1, base=1)]]
    inputs, values = tree_batch(problems)
    assert assemble_trees(problems, inputs, values, np.zeros(0, np.int64)) == []
    assert len(assemble_trees(problems, inputs, values, [0])[0].paths) == 2
