"""One problem's branching tree, node values and TreeRL-style advantages (ALGORITHM.md section 5).

Values and advantages are one jitted function over a padded batch of problems (`tree_values`:
[P, G] responses x [N] branch points x [T] continuations, no Python loop per problem); the host
packs the graded rewards into those arrays (`tree_inputs`), and the token-level objects of
tree_nodes.py are assembled from the results (`build_trees`). Shapes are bucketed to powers of
two, so nothing recompiles across steps. Values and advantages are float32.

Tree of a problem: a virtual root; per initial response with sorted branch offsets u_1 <= ... <= u_m
the segments S0 = [0, u_1), S_i = [u_i, u_{i+1}), S_m = [u_m, R) form a chain under the root; the
continuations sampled from u_i are leaves under S_{i-1}; S_m is a leaf carrying the response's own
reward. A response with no branch points (unexpanded) is a single leaf under the root: it counts in
V(root) but is not trained on (the released code skips length-one paths). A branch point without
continuations is no branch point (the released code builds the tree from the continuations).

Duplicate offsets (b1 == b2): the released code groups continuations by offset, so the response gets
one branching node with all continuations of that offset under S0 and S1 = [b1, R) as the original
ending (`merge_duplicates=True`, the default). With `merge_duplicates=False` every branch point
keeps its own node as the section 5 text reads: S1 = [b1, b2) is then empty and holds S2 and b2's
continuations, which changes their parent value and hence their advantages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from itertools import chain

import jax
import jax.numpy as jnp
import numpy as np

from attnrl_jax.buckets import power_of_two
from attnrl_jax.rl.tree_nodes import (
    ORIGINAL,
    ProblemTree,
    Segment,
    TrainingPath,
    TreeSources,
    assemble,
    assemble_trees,
)

__all__ = [
    "ORIGINAL",
    "Continuation",
    "ProblemTree",
    "Response",
    "Segment",
    "TrainingPath",
    "TreeInputs",
    "TreeSources",
    "TreeValues",
    "assemble",
    "assemble_trees",
    "build_tree",
    "build_trees",
    "pack_tree_inputs",
    "tree_batch",
    "tree_inputs",
    "tree_values",
]


@dataclass(frozen=True, eq=False)
class Continuation:
    """A graded continuation: the sampler's tokens after the prefix response[:offset]."""

    tokens: np.ndarray  # int[L]
    reward: float


@dataclass(frozen=True, eq=False)
class Response:
    """An initial response with its branch points and the continuations hanging off each.

    branch_points: response-relative offsets (any order; duplicates allowed); the prefix of point i
    is tokens[:branch_points[i]]. continuations[i]: the graded continuations from branch_points[i].
    """

    tokens: np.ndarray  # int[R]
    reward: float
    branch_points: tuple[int, ...] = ()
    continuations: tuple[tuple[Continuation, ...], ...] = ()

    def __post_init__(self):
        if len(self.branch_points) != len(self.continuations):
            raise ValueError(
                f"{len(self.branch_points)} branch points but {len(self.continuations)} "
                "continuation groups; need one group per branch point"
            )
        r = len(self.tokens)
        bad = [b for b in self.branch_points if not 0 <= b <= r]
        if bad:
            raise ValueError(f"branch points {bad} outside [0, {r}] (response length {r})")


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class TreeInputs:
    """A padded batch of P problems, G responses each, N branch points, T continuations each.

    reward: float32[P, G] initial-response rewards; response_valid: bool[P, G] (padding False);
    response_len: int32[P, G]; offsets: int32[P, G, N] branch points (any order);
    cont_reward: float32[P, G, N, T]; cont_valid: bool[P, G, N, T]; cont_len: int32[P, G, N, T]
    continuation token counts. A branch point without any valid continuation is no branch point.
    """

    reward: jax.Array
    response_valid: jax.Array
    response_len: jax.Array
    offsets: jax.Array
    cont_reward: jax.Array
    cont_valid: jax.Array
    cont_len: jax.Array


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class TreeValues:
    """Outputs of tree_values (float32 values, padded like the inputs).

    root_value: [P]. order: int32[P, G, N], branch-point indices sorted by offset (stable;
    points without continuations last). group: int32[P, G, N], the branching group of each sorted
    slot (-1 = none): its continuations hang under chain segment S_group. num_groups: int32[P, G]
    (0 = unexpanded). chain_start / chain_end: int32[P, G, N + 1], response-relative [start, end)
    of S_0..S_m; chain_value / chain_leaves / chain_advantage: [P, G, N + 1] (valid for
    i <= num_groups of an expanded response). cont_advantage: [P, G, N, T] per ORIGINAL point
    index (not sorted).
    """

    root_value: jax.Array
    order: jax.Array
    group: jax.Array
    num_groups: jax.Array
    chain_start: jax.Array
    chain_end: jax.Array
    chain_value: jax.Array
    chain_leaves: jax.Array
    chain_advantage: jax.Array
    cont_advantage: jax.Array


def _response_chain(offsets, cont_reward, cont_valid, reward, length, merge):
    """One response: sorted groups, chain cuts and chain leaf sums/counts (see TreeValues)."""
    n = offsets.shape[0]
    counts = cont_valid.sum(-1)
    sums = jnp.where(cont_valid, cont_reward, 0.0).sum(-1)
    live = counts > 0
    big = jnp.iinfo(jnp.int32).max
    order = jnp.argsort(jnp.where(live, offsets, big), stable=True).astype(jnp.int32)
    so, sl = offsets[order], live[order]
    prev = jnp.concatenate([jnp.full(1, -1, so.dtype), so[:-1]])
    new = sl & ((jnp.arange(n) == 0) | (so != prev)) if merge else sl
    group = jnp.where(sl, jnp.cumsum(new) - 1, -1).astype(jnp.int32)
    m = new.sum().astype(jnp.int32)
    slot = jnp.where(sl, group, n)  # out of range: dropped
    g_sum = jnp.zeros(n).at[slot].add(sums[order], mode="drop")
    g_cnt = jnp.zeros(n, jnp.int32).at[slot].add(counts[order], mode="drop")
    g_off = jnp.zeros(n, jnp.int32).at[jnp.where(new, group, n)].set(so, mode="drop")
    # chain i covers [cut_i, cut_{i+1}) with cut_0 = 0, cut_i = offset of group i - 1, cut_m+1 = R
    i = jnp.arange(n + 1)
    start = jnp.where(i == 0, 0, jnp.concatenate([jnp.zeros(1, jnp.int32), g_off])[i])
    nxt = jnp.concatenate([g_off, jnp.zeros(1, jnp.int32)])
    end = jnp.where(i >= m, length, nxt)
    # leaves under S_i: the original ending and every continuation of groups >= i
    suffix_sum = jnp.cumsum(g_sum[::-1])[::-1]
    suffix_cnt = jnp.cumsum(g_cnt[::-1])[::-1]
    pad = jnp.zeros(1)
    leaf_sum = reward + jnp.concatenate([suffix_sum, pad])
    leaf_cnt = 1 + jnp.concatenate([suffix_cnt, jnp.zeros(1, jnp.int32)])
    return order, group, m, start, end, leaf_sum, leaf_cnt


@partial(jax.jit, static_argnames="merge")
def tree_values(inputs: TreeInputs, merge: bool = True) -> TreeValues:
    """Values and advantages of every node of every problem (ALGORITHM.md section 5).

    V(s) = mean leaf reward below s, V(root) = mean over all leaves (unexpanded responses
    included), A(s) = ((V(s) - V(root)) + (V(s) - V(parent))) / sqrt(|leaves(s)|) with
    V(parent) = V(root) for children of the root.
    """
    chain = jax.vmap(jax.vmap(partial(_response_chain, merge=merge)))
    order, group, m, start, end, leaf_sum, leaf_cnt = chain(
        inputs.offsets,
        inputs.cont_reward.astype(jnp.float32),
        inputs.cont_valid,
        inputs.reward.astype(jnp.float32),
        inputs.response_len,
    )
    expanded = inputs.response_valid & (m > 0)
    own = jnp.where(inputs.response_valid, inputs.reward, 0.0)
    root_sum = jnp.where(expanded, leaf_sum[..., 0], own).sum(-1)
    root_cnt = jnp.where(expanded, leaf_cnt[..., 0], inputs.response_valid).sum(-1)
    v_root = root_sum / jnp.maximum(root_cnt, 1)
    value = leaf_sum / leaf_cnt
    vr = v_root[:, None, None]
    parent = jnp.concatenate([jnp.broadcast_to(vr, value[..., :1].shape), value[..., :-1]], -1)
    advantage = ((value - vr) + (value - parent)) / jnp.sqrt(leaf_cnt.astype(jnp.float32))
    # continuation leaves: parent is S_group of their point
    point_group = (
        jnp.zeros_like(group)
        .at[
            jnp.arange(group.shape[0])[:, None, None],
            jnp.arange(group.shape[1])[None, :, None],
            order,
        ]
        .set(group)
    )
    v_parent = jnp.take_along_axis(value, jnp.maximum(point_group, 0), axis=-1)[..., None]
    c = inputs.cont_reward.astype(jnp.float32)
    cont_adv = (c - vr[..., None]) + (c - v_parent)
    return TreeValues(
        root_value=v_root,
        order=order,
        group=group,
        num_groups=jnp.where(inputs.response_valid, m, 0),
        chain_start=start,
        chain_end=end,
        chain_value=value,
        chain_leaves=leaf_cnt,
        chain_advantage=advantage,
        cont_advantage=jnp.where(inputs.cont_valid, cont_adv, 0.0),
    )


def tree_inputs(problems: Sequence[Sequence[Response]]) -> TreeInputs:
    """Host side: pack problems (each a sequence of Responses) into bucketed TreeInputs: the
    graded values are read into flat arrays (one pass over the objects), then `pack_tree_inputs`.
    """
    flat = [x for responses in problems for x in responses]
    groups = [conts for x in flat for conts in x.continuations]  # one per branch point
    conts = [c for group in groups for c in group]
    return pack_tree_inputs(
        problem_sizes=np.fromiter(map(len, problems), np.int64, len(problems)),
        reward=np.fromiter((x.reward for x in flat), np.float32, len(flat)),
        response_len=np.fromiter((len(x.tokens) for x in flat), np.int32, len(flat)),
        points=np.fromiter((len(x.branch_points) for x in flat), np.int64, len(flat)),
        offsets=np.fromiter(
            chain.from_iterable(x.branch_points for x in flat), np.int32, len(groups)
        ),
        conts=np.fromiter(map(len, groups), np.int64, len(groups)),
        cont_reward=np.fromiter((c.reward for c in conts), np.float32, len(conts)),
        cont_len=np.fromiter((len(c.tokens) for c in conts), np.int32, len(conts)),
    )


def pack_tree_inputs(
    problem_sizes: np.ndarray,
    reward: np.ndarray,
    response_len: np.ndarray,
    points: np.ndarray,
    offsets: np.ndarray,
    conts: np.ndarray,
    cont_reward: np.ndarray,
    cont_len: np.ndarray,
) -> TreeInputs:
    """Bucketed TreeInputs from flat arrays, scattered by index arrays (no loop per response).

    problem_sizes int[P]: responses per problem; reward / response_len [B]: per response, in
    problem order; points int[B]: branch points per response; offsets int[sum points]: the
    points, response by response; conts int[sum points]: continuations per point;
    cont_reward / cont_len [sum conts]: per continuation, point by point. P, G, N and T pad to
    powers of two (at least 8, 8, 2, 2: few shapes, few compiles).
    """
    per_problem = np.asarray(problem_sizes, np.int64)
    per_response = np.asarray(points, np.int64)
    per_point = np.asarray(conts, np.int64)
    if len(reward) != per_problem.sum() or len(per_response) != len(reward):
        raise ValueError(
            f"{len(reward)} rewards, {len(per_response)} point counts for "
            f"{int(per_problem.sum())} responses"
        )
    if len(offsets) != per_response.sum() or len(per_point) != len(offsets):
        raise ValueError(f"{len(offsets)} offsets for {int(per_response.sum())} branch points")
    if len(cont_reward) != per_point.sum() or len(cont_len) != len(cont_reward):
        raise ValueError(f"{len(cont_reward)} rewards for {int(per_point.sum())} continuations")
    p = power_of_two(len(per_problem), 8)
    g = power_of_two(int(per_problem.max(initial=1)), 8)
    n = power_of_two(int(per_response.max(initial=1)), 2)
    t = power_of_two(int(per_point.max(initial=1)), 2)
    problem, response = _ragged_index(per_problem)  # of each flat response
    owner, point = _ragged_index(per_response)  # of each branch point
    group, cont = _ragged_index(per_point)  # of each continuation
    out_reward = np.zeros((p, g), np.float32)
    valid = np.zeros((p, g), bool)
    length = np.zeros((p, g), np.int32)
    at = (problem, response)
    out_reward[at] = reward
    valid[at] = True
    length[at] = response_len
    out_offsets = np.zeros((p, g, n), np.int32)
    out_offsets[problem[owner], response[owner], point] = offsets
    c_reward = np.zeros((p, g, n, t), np.float32)
    c_valid = np.zeros((p, g, n, t), bool)
    c_len = np.zeros((p, g, n, t), np.int32)
    at = (problem[owner[group]], response[owner[group]], point[group], cont)
    c_reward[at] = cont_reward
    c_valid[at] = True
    c_len[at] = cont_len
    return TreeInputs(out_reward, valid, length, out_offsets, c_reward, c_valid, c_len)


def _ragged_index(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(outer, inner) int64[sum(counts)]: item k of group i is (i, k), groups in order."""
    outer = np.repeat(np.arange(len(counts)), counts)
    return outer, np.arange(len(outer)) - np.repeat(np.cumsum(counts) - counts, counts)


def tree_batch(
    problems: Sequence[Sequence[Response]], merge_duplicates: bool = True
) -> tuple[TreeInputs, TreeValues]:
    """Pack problems (tree_inputs) and run tree_values on them; arrays stay on the device."""
    for responses in problems:
        if not responses:
            raise ValueError("a problem needs at least one response")
    inputs = tree_inputs(problems)
    return inputs, tree_values(inputs, merge_duplicates)


def build_trees(
    problems: Sequence[Sequence[Response]], merge_duplicates: bool = True
) -> list[ProblemTree]:
    """Trees of a batch of problems: one jitted tree_values call, then the assembly of the
    segments and paths (see the module doc)."""
    inputs, values = tree_batch(problems, merge_duplicates)
    return assemble_trees(problems, inputs, values)


def build_tree(responses: Sequence[Response], merge_duplicates: bool = True) -> ProblemTree:
    """Values, advantages, packed segments and training paths of one problem (build_trees)."""
    return build_trees([responses], merge_duplicates)[0]
