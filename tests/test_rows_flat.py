"""The flat-array training rows (rl/row_build.py, rl/rows.py) equal the former per-object code
(tests/reference_packed.py) exactly, field by field and dtype by dtype, on many random batches:
random depths, branch points (offset 0, the response end, duplicates, points without
continuations), empty responses and continuations, prompts of length 0, budgets from the
longest path to the whole tree, both packings, merged and unmerged duplicates, trees assembled
from node columns (one shared pool, as build_problems makes them) and trees built from objects
(GRPO groups, ProblemTree(segments, paths)); then pack_rows and stack_rows of both."""

import numpy as np
import pytest

import tests.reference_packed as ref
from attnrl_jax.rl.grpo import grpo_tree
from attnrl_jax.rl.packed import (
    ROW_FIELDS,
    Rows,
    TrainProblem,
    make_rows,
    pack_rows,
    stack_rows,
    tokens_processed,
)
from attnrl_jax.rl.ragged import Ragged
from attnrl_jax.rl.tree import (
    Continuation,
    ProblemTree,
    Response,
    TreeSources,
    assemble,
    tree_batch,
)


def random_responses(rng) -> list[Response]:
    out = []
    for _ in range(rng.integers(1, 5)):
        length = int(rng.choice([0, 1, rng.integers(2, 20)], p=[0.1, 0.1, 0.8]))
        points = []
        for _ in range(rng.integers(0, 4)):
            points.append(int(rng.choice([0, length, rng.integers(0, length + 1)])))
        if points and rng.random() < 0.3:
            points.append(points[0])  # a duplicate
        conts = tuple(
            tuple(
                Continuation(rng.integers(1, 50, rng.integers(0, 7)), float(rng.integers(2)))
                for _ in range(rng.integers(0, 3))  # 0: a point without continuations
            )
            for _ in points
        )
        tokens = rng.integers(1, 50, length)
        out.append(Response(tokens, float(rng.integers(2)), tuple(points), conts))
    return out


def assembled_problems(rng, merge: bool) -> list[TrainProblem]:
    """A batch's problems as build_problems makes them: trees from node columns, behaviour
    log-probs and versions gathered from one shared pool (Ragged rows)."""
    batch = [random_responses(rng) for _ in range(rng.integers(1, 5))]
    flat = [x for responses in batch for x in responses]
    groups = [g for x in flat for g in x.continuations]
    conts = [c for g in groups for c in g]
    if rng.random() < 0.5:  # two arrays, or one split in two (build_problems' form)
        tokens = Ragged.of([x.tokens for x in flat], np.int32)
        cont_tokens = Ragged.of([c.tokens for c in conts], np.int32)
    else:
        rows = [x.tokens for x in flat] + [c.tokens for c in conts]
        tokens, cont_tokens = Ragged.of(rows, np.int32).split(len(flat))

    def random_like(rows, low, high, dtype):
        return Ragged(rng.uniform(low, high, len(rows.values)).astype(dtype), rows.first)

    sources = TreeSources.of(
        problem_sizes=np.array([len(r) for r in batch]),
        points=np.array([len(x.branch_points) for x in flat]),
        conts=np.array([len(g) for g in groups], np.int64),
        reward=np.array([x.reward for x in flat]),
        cont_reward=np.array([c.reward for c in conts]),
        pool={
            "tokens": (tokens, cont_tokens),
            "logp": (random_like(tokens, -4, 0, np.float32),
                     random_like(cont_tokens, -4, 0, np.float32)),
            "version": (random_like(tokens, 0, 3, np.int32),
                        random_like(cont_tokens, 3, 5, np.int32)),
        },
    )  # fmt: skip
    inputs, values = tree_batch(batch, merge)
    keep = np.flatnonzero(rng.random(len(batch)) < 0.8)
    trees, fields = assemble(sources, inputs, values, keep)
    return [
        TrainProblem(rng.integers(1, 50, prompt_len(rng)).astype(np.int32), t, lp, ver)
        for t, lp, ver in zip(trees, fields["logp"], fields["version"], strict=True)
    ]


def prompt_len(rng) -> int:
    return int(rng.choice([0, rng.integers(1, 6)], p=[0.1, 0.9]))


def object_problems(rng, assembled: list[TrainProblem]) -> list[TrainProblem]:
    """The same trees rebuilt from their Segment / TrainingPath objects (tuples of per-segment
    arrays), and a GRPO group."""
    out = [
        TrainProblem(
            p.prompt_ids,
            ProblemTree(p.tree.root_value, p.tree.segments, p.tree.paths),
            tuple(np.asarray(x) for x in p.segment_logp),
            tuple(np.asarray(x) for x in p.segment_version),
        )
        for p in assembled
    ]
    responses = [rng.integers(1, 50, rng.integers(0, 9)) for _ in range(rng.integers(1, 5))]
    tree = grpo_tree(responses, rng.integers(0, 2, len(responses)).astype(np.float32))
    logp = tuple(rng.uniform(-3, 0, len(s.tokens)) for s in tree.segments)  # float64
    vers = tuple(np.zeros(len(s.tokens), np.int64) for s in tree.segments)
    out.append(TrainProblem(rng.integers(1, 50, prompt_len(rng)), tree, logp, vers))
    return out


def outcome(fn, *args):
    """fn(*args), or the message of the ValueError it raises."""
    try:
        return fn(*args)
    except ValueError as e:
        return str(e)


def assert_rows_equal(want, got, what):
    assert isinstance(got, Rows), what
    assert len(want) == len(got), what
    for r, (a, b) in enumerate(zip(want, got, strict=True)):
        for name in ROW_FIELDS:
            x, y = getattr(a, name), getattr(b, name)
            assert x.dtype == y.dtype and np.array_equal(x, y), (what, r, name)


def budgets(rng, problems) -> list[int]:
    rows = ref.make_rows(problems, "path")
    longest = max((len(r.tokens) for r in rows), default=0)
    whole = max((len(r.tokens) for r in ref.make_rows(problems, "tree")), default=0)
    return [0, longest, int(rng.integers(longest, whole + 2)), whole, max(longest - 1, 1)]


@pytest.mark.parametrize("seed", range(6))
def test_flat_rows_equal_the_per_object_rows(seed):
    rng = np.random.default_rng(seed)
    cases = 0
    for case in range(25):
        assembled = assembled_problems(rng, merge=bool(case % 2))
        for kind, problems in (("nodes", assembled), ("objects", object_problems(rng, assembled))):
            for budget in budgets(rng, problems):
                for packing in ("tree", "path"):
                    what = (seed, case, kind, packing, budget)
                    want = outcome(ref.make_rows, problems, packing, budget)
                    got = outcome(make_rows, problems, packing, budget)
                    if isinstance(want, str) or isinstance(got, str):
                        assert want == got, what
                        continue
                    assert_rows_equal(want, got, what)
                    assert all(p.tree.num_paths == len(p.tree.paths) for p in problems)
                    assert tokens_processed(problems, packing, budget) == sum(
                        len(r.tokens) for r in want
                    )
                    cases += 1
                    if not want:
                        continue
                    capacity = max(len(r.tokens) for r in want) + int(rng.integers(0, 30))
                    packed_want = ref.pack_rows(want, capacity)
                    packed = pack_rows(got, capacity)
                    assert_rows_equal(packed_want, packed, (*what, "packed"))
                    nodes = max(len(r.ancestors) for r in packed_want)
                    for rows_want, rows_got in ((want, got), (packed_want, packed)):
                        stacked_want = ref.stack_rows(rows_want, len(rows_want) + 1, capacity,
                                                      nodes + 1)  # fmt: skip
                        stacked = stack_rows(rows_got, len(rows_got) + 1, capacity, nodes + 1)
                        for name in ROW_FIELDS:
                            x, y = stacked_want[name], stacked[name]
                            assert x.dtype == y.dtype and np.array_equal(x, y), (what, name)
    assert cases > 300  # most cases build rows (a budget below the longest path is refused)


def test_stack_rows_refuses_what_the_reference_refuses():
    rng = np.random.default_rng(9)
    problems = assembled_problems(rng, merge=True)
    while not ref.make_rows(problems, "tree"):
        problems = assembled_problems(rng, merge=True)
    rows = make_rows(problems, "tree")
    n = int(rows.lengths.max())
    k = int(rows.num_nodes.max())
    for args in ((len(rows) - 1, n, k), (len(rows), n - 1, k), (len(rows), n, k - 1)):
        want = outcome(ref.stack_rows, list(rows), *args)
        assert isinstance(want, str)
        assert outcome(stack_rows, rows, *args) == want
        assert outcome(stack_rows, list(rows), *args) == want


def test_rows_slices_and_takes_equal_their_rows():
    rng = np.random.default_rng(4)
    problems = assembled_problems(rng, merge=False)
    while len(ref.make_rows(problems, "tree")) < 3:
        problems = assembled_problems(rng, merge=False)
    rows = make_rows(problems, "tree")
    n = len(rows)
    cases = [slice(0, 2), slice(1, None), slice(3, 1), slice(None, None, 2), slice(-2, None)]
    for sl in [*cases, slice(n, n + 4)]:
        assert_rows_equal([rows[i] for i in range(n)[sl]], rows[sl], sl)
    order = rng.permutation(n)
    assert_rows_equal([rows[int(i)] for i in order], rows.take(order), "take")
