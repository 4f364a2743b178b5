"""One problem's branching tree, node values and TreeRL-style advantages (ALGORITHM.md section 5).

Values and advantages are one jitted function over a padded batch of problems (`tree_values`:
[P, G] responses x [N] branch points x [T] continuations, no Python loop per problem); the host
packs the graded rewards into those arrays (`tree_inputs`) and assembles the token-level objects
below from the results (`build_trees`). Shapes are bucketed to powers of two, so nothing recompiles
across steps. Values and advantages are float32.

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

Outputs, for a problem's expanded responses:
- `segments`, the tree-packed form: every distinct node once, with its parent segment, tokens,
  advantage and path count (the number of training paths through it, which is also |leaves(s)|).
  Training each segment's tokens once with weight = path count gives the same loss as training every
  path (both are sums over the same (token, context) pairs).
- `paths`, the per-path form: one sequence per root-to-leaf path with per-token advantages and a
  per-token source marker (True: original-response token, whose behaviour log-prob is the stored one
  from the scoring pass; False: continuation token, log-prob from the continuation's sampler).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from attnrl_jax.buckets import power_of_two

ORIGINAL = -1  # `branch` / `continuation` value of tokens that come from the initial response


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


@dataclass(frozen=True, eq=False)
class Segment:
    """One node of the packed tree: a contiguous run of path tokens sharing one advantage.

    parent: index into ProblemTree.segments, -1 for children of the root. start: response-relative
    position of the first token (position ids are prompt_len + start + arange(L)). Tokens come from
    the initial response [start, start + L) when branch == -1, else they are the whole continuation
    `continuation` of branch point `branch` (indices into the input Response's fields). May be empty
    (a branch point at offset 0, or duplicate points with merge_duplicates=False).
    """

    response: int
    parent: int
    start: int
    tokens: np.ndarray  # int32[L]
    branch: int
    continuation: int
    value: float
    path_count: int
    advantage: float


@dataclass(frozen=True, eq=False)
class TrainingPath:
    """One root-to-leaf training sequence (response tokens only, prompt excluded).

    segments: indices into ProblemTree.segments, root side first. branch/continuation: the leaf
    (-1, -1 for the response's original ending). reward: the leaf's 0/1 reward.
    """

    response: int
    branch: int
    continuation: int
    segments: tuple[int, ...]
    tokens: np.ndarray  # int32[T]
    advantages: np.ndarray  # float32[T]
    from_response: np.ndarray  # bool[T]; a prefix of True then the continuation's False
    reward: float


@dataclass(frozen=True, eq=False)
class ProblemTree:
    """A problem's tree: V(root), the packed segments and the per-path sequences."""

    root_value: float
    segments: tuple[Segment, ...]
    paths: tuple[TrainingPath, ...]


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
    """Host side: pack problems (each a sequence of Responses) into bucketed TreeInputs.

    P, G, N and T pad to powers of two (at least 8, 8, 2, 2: few shapes, few compiles).
    """
    p = power_of_two(len(problems), 8)
    g = power_of_two(max((len(r) for r in problems), default=1), 8)
    n = power_of_two(max((len(x.branch_points) for r in problems for x in r), default=1), 2)
    t = power_of_two(
        max((len(c) for r in problems for x in r for c in x.continuations), default=1), 2
    )
    reward = np.zeros((p, g), np.float32)
    valid = np.zeros((p, g), bool)
    length = np.zeros((p, g), np.int32)
    offsets = np.zeros((p, g, n), np.int32)
    c_reward = np.zeros((p, g, n, t), np.float32)
    c_valid = np.zeros((p, g, n, t), bool)
    c_len = np.zeros((p, g, n, t), np.int32)
    for a, responses in enumerate(problems):  # bookkeeping: gather graded rewards
        for j, resp in enumerate(responses):
            reward[a, j], valid[a, j], length[a, j] = resp.reward, True, len(resp.tokens)
            offsets[a, j, : len(resp.branch_points)] = resp.branch_points
            for i, conts in enumerate(resp.continuations):
                c_reward[a, j, i, : len(conts)] = [c.reward for c in conts]
                c_valid[a, j, i, : len(conts)] = True
                c_len[a, j, i, : len(conts)] = [len(c.tokens) for c in conts]
    return TreeInputs(reward, valid, length, offsets, c_reward, c_valid, c_len)


def tree_batch(
    problems: Sequence[Sequence[Response]], merge_duplicates: bool = True
) -> tuple[TreeInputs, TreeValues]:
    """Pack problems (tree_inputs) and run tree_values on them; arrays stay on the device."""
    for responses in problems:
        if not responses:
            raise ValueError("a problem needs at least one response")
    inputs = tree_inputs(problems)
    return inputs, tree_values(inputs, merge_duplicates)


def assemble_trees(
    problems: Sequence[Sequence[Response]], values: TreeValues, which: Sequence[int] | None = None
) -> list[ProblemTree]:
    """Host assembly of the ProblemTrees of problems `which` (default all) from tree_values'
    outputs (host arrays: jax.device_get them once)."""
    which = range(len(problems)) if which is None else which
    return [_assemble(problems[a], jax.tree.map(lambda x, a=a: x[a], values)) for a in which]


def build_trees(
    problems: Sequence[Sequence[Response]], merge_duplicates: bool = True
) -> list[ProblemTree]:
    """Trees of a batch of problems: one jitted tree_values call, then host assembly of the
    token-level segments and paths (see the module doc)."""
    _, values = tree_batch(problems, merge_duplicates)
    return assemble_trees(problems, jax.device_get(values))


def build_tree(responses: Sequence[Response], merge_duplicates: bool = True) -> ProblemTree:
    """Values, advantages, packed segments and training paths of one problem (build_trees)."""
    return build_trees([responses], merge_duplicates)[0]


def _assemble(responses: Sequence[Response], v: TreeValues) -> ProblemTree:
    """One problem's Segments and TrainingPaths from its row of TreeValues (no arithmetic).

    Node order: per expanded response, its chain S_0..S_m, then the continuations of each group
    in sorted point order; paths: the original ending first, then continuations in node order.
    """
    segments: list[Segment] = []
    paths: list[TrainingPath] = []
    for j, resp in enumerate(responses):
        m = int(v.num_groups[j])
        if m == 0:
            continue
        tokens = np.asarray(resp.tokens, dtype=np.int32)
        chain = []
        for i in range(m + 1):
            lo, hi = int(v.chain_start[j, i]), int(v.chain_end[j, i])
            chain.append(len(segments))
            segments.append(
                Segment(
                    j, chain[-2] if i else -1, lo, tokens[lo:hi], ORIGINAL, ORIGINAL,
                    float(v.chain_value[j, i]), int(v.chain_leaves[j, i]),
                    float(v.chain_advantage[j, i]),
                )
            )  # fmt: skip
        leaves = [(list(chain), ORIGINAL, ORIGINAL, float(resp.reward))]
        for slot in range(len(resp.branch_points)):
            g = int(v.group[j, slot])
            if g < 0:
                break
            branch = int(v.order[j, slot])
            off = int(v.chain_start[j, g + 1])
            for k, cont in enumerate(resp.continuations[branch]):
                segments.append(
                    Segment(
                        j, chain[g], off, np.asarray(cont.tokens, dtype=np.int32), branch, k,
                        float(cont.reward), 1, float(v.cont_advantage[j, branch, k]),
                    )
                )  # fmt: skip
                leaves.append((chain[: g + 1] + [len(segments) - 1], branch, k, float(cont.reward)))
        for ids, branch, k, reward in leaves:
            segs = [segments[i] for i in ids]
            lens = [len(s.tokens) for s in segs]
            paths.append(
                TrainingPath(
                    response=j,
                    branch=branch,
                    continuation=k,
                    segments=tuple(ids),
                    tokens=np.concatenate([s.tokens for s in segs]).astype(np.int32),
                    advantages=np.repeat(np.array([s.advantage for s in segs], np.float32), lens),
                    from_response=np.repeat(np.array([s.branch == ORIGINAL for s in segs]), lens),
                    reward=reward,
                )
            )
    return ProblemTree(float(v.root_value), tuple(segments), tuple(paths))
