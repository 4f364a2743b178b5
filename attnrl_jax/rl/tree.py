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
from dataclasses import dataclass, field
from functools import cached_property, partial
from itertools import chain

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
    (-1, -1 for the response's original ending). reward: the leaf's 0/1 reward. tree_segments:
    the problem's segments (shared with its ProblemTree). The per-token arrays (`tokens`,
    `advantages`, `from_response`) are built from the segments by index arrays on first use:
    training rows are built from the segments, so a step never pays for them.
    """

    response: int
    branch: int
    continuation: int
    segments: tuple[int, ...]
    reward: float
    tree_segments: tuple[Segment, ...] = field(repr=False)

    def _nodes(self) -> list[Segment]:
        return [self.tree_segments[i] for i in self.segments]

    @cached_property
    def lengths(self) -> np.ndarray:
        """int64[len(segments)]: tokens of each segment on the path."""
        return np.array([len(s.tokens) for s in self._nodes()], np.int64)

    @cached_property
    def tokens(self) -> np.ndarray:
        """int32[T]."""
        return np.concatenate([s.tokens for s in self._nodes()]).astype(np.int32)

    @cached_property
    def advantages(self) -> np.ndarray:
        """float32[T]: each token carries its segment's advantage."""
        per_node = np.array([s.advantage for s in self._nodes()], np.float32)
        return np.repeat(per_node, self.lengths)

    @cached_property
    def from_response(self) -> np.ndarray:
        """bool[T]; a prefix of True (original-response tokens) then the continuation's False."""
        original = np.array([s.branch == ORIGINAL for s in self._nodes()], bool)
        return np.repeat(original, self.lengths)


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

    P, G, N and T pad to powers of two (at least 8, 8, 2, 2: few shapes, few compiles). The
    graded values are read into flat arrays (one pass over the objects) and scattered by index
    arrays: no Python loop per response with array writes.
    """
    flat = [x for responses in problems for x in responses]
    groups = [conts for x in flat for conts in x.continuations]  # one per branch point
    conts = [c for group in groups for c in group]
    per_problem = np.fromiter(map(len, problems), np.int64, len(problems))
    per_response = np.fromiter((len(x.branch_points) for x in flat), np.int64, len(flat))
    per_point = np.fromiter(map(len, groups), np.int64, len(groups))
    p = power_of_two(len(problems), 8)
    g = power_of_two(int(per_problem.max(initial=1)), 8)
    n = power_of_two(int(per_response.max(initial=1)), 2)
    t = power_of_two(int(per_point.max(initial=1)), 2)
    problem, response = _ragged_index(per_problem)  # of each flat response
    owner, point = _ragged_index(per_response)  # of each branch point
    group, cont = _ragged_index(per_point)  # of each continuation
    reward = np.zeros((p, g), np.float32)
    valid = np.zeros((p, g), bool)
    length = np.zeros((p, g), np.int32)
    at = (problem, response)
    reward[at] = np.fromiter((x.reward for x in flat), np.float32, len(flat))
    valid[at] = True
    length[at] = np.fromiter((len(x.tokens) for x in flat), np.int32, len(flat))
    offsets = np.zeros((p, g, n), np.int32)
    offsets[problem[owner], response[owner], point] = np.fromiter(
        chain.from_iterable(x.branch_points for x in flat), np.int32, len(groups)
    )
    c_reward = np.zeros((p, g, n, t), np.float32)
    c_valid = np.zeros((p, g, n, t), bool)
    c_len = np.zeros((p, g, n, t), np.int32)
    at = (problem[owner[group]], response[owner[group]], point[group], cont)
    c_reward[at] = np.fromiter((c.reward for c in conts), np.float32, len(conts))
    c_valid[at] = True
    c_len[at] = np.fromiter((len(c.tokens) for c in conts), np.int32, len(conts))
    return TreeInputs(reward, valid, length, offsets, c_reward, c_valid, c_len)


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


def assemble_trees(
    problems: Sequence[Sequence[Response]],
    inputs: TreeInputs,
    values: TreeValues,
    which: Sequence[int] | np.ndarray | None = None,
) -> list[ProblemTree]:
    """The ProblemTrees of problems `which` (default all) from tree_values' inputs and outputs.

    Every node's fields (parent, start, value, path count, advantage, path members) come from
    index-array operations over the whole batch (`_node_table`); the host then only wraps them in
    Segment / TrainingPath objects, whose token arrays are views of the response or the
    continuation's own array. Node order: per expanded response, its chain S_0..S_m, then the
    continuations of each group in sorted point order; paths: the original ending first, then
    continuations in node order.
    """
    which = np.arange(len(problems)) if which is None else np.asarray(which, np.int64)
    inputs, values = jax.device_get((inputs, values))
    table = _node_table(inputs, values, which)
    ok = table.pop("ok")
    chain_id = table.pop("chain_id").tolist()
    columns = {name: col[ok].tolist() for name, col in table.items()}
    ends = np.cumsum(ok.reshape(len(which), -1).sum(1)).tolist()
    roots = values.root_value[which].tolist()
    trees, lo = [], 0
    for k, (a, hi) in enumerate(zip(which.tolist(), ends, strict=True)):
        node = {name: col[lo:hi] for name, col in columns.items()}
        trees.append(_wrap(problems[a], node, chain_id[k], roots[k]))
        lo = hi
    return trees


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


def _node_table(inputs: TreeInputs, v: TreeValues, which: np.ndarray) -> dict[str, np.ndarray]:
    """Node fields of problems `which` as [K, G, W] arrays, W = N + 1 + N * T: slots 0..N are
    the chain S_0..S_N of response j, slot N + 1 + s * T + c continuation c of sorted point s.

    "ok": the slots that are nodes (row-major order = node order); "chain_id" [K, G, N + 1]: a
    chain slot's node index in its problem; "depth": the last chain slot on the node's path
    (its own slot for a chain node, the chain it hangs under for a continuation); "leaf": the
    node ends a training path.
    """
    m, group, order = v.num_groups[which], v.group[which], v.order[which]
    k, g, n = order.shape
    t = inputs.cont_valid.shape[-1]
    slot = np.arange(n + 1)
    chain_ok = (slot <= m[..., None]) & (m[..., None] > 0)
    under = np.maximum(group, 0)  # the chain slot a sorted point's continuations hang under

    def sorted_points(x):  # [P, G, N (point index), T] -> [K, G, N (sorted), T]
        return np.take_along_axis(x[which], order[..., None], axis=2)

    def each_cont(x):  # [K, G, N] per sorted point -> [K, G, N, T]
        return np.broadcast_to(x[..., None], (k, g, n, t))

    def cat(chain_part, cont_part):
        chain_part = np.broadcast_to(chain_part, (k, g, n + 1))
        return np.concatenate([chain_part, cont_part.reshape(k, g, n * t)], axis=-1)

    ok = cat(chain_ok, (group >= 0)[..., None] & sorted_points(inputs.cont_valid))
    node = (np.cumsum(ok.reshape(k, -1), axis=1) - 1).reshape(ok.shape)
    chain_id = node[..., : n + 1]
    chain_start = v.chain_start[which]
    cont_reward = sorted_points(inputs.cont_reward)
    return {
        "ok": ok,
        "chain_id": chain_id,
        "response": cat(
            np.arange(g)[:, None], each_cont(np.broadcast_to(np.arange(g)[:, None], (k, g, n)))
        ),
        "parent": cat(
            np.concatenate([np.full((k, g, 1), -1), chain_id[..., :-1]], axis=-1),
            each_cont(np.take_along_axis(chain_id, under, -1)),
        ),
        "start": cat(chain_start, each_cont(np.take_along_axis(chain_start, under + 1, -1))),
        "end": cat(v.chain_end[which], each_cont(np.zeros_like(order))),
        "branch": cat(ORIGINAL, each_cont(order)),
        "continuation": cat(ORIGINAL, np.broadcast_to(np.arange(t), (k, g, n, t))),
        "value": cat(v.chain_value[which], cont_reward),
        "path_count": cat(v.chain_leaves[which], np.ones((k, g, n, t), np.int32)),
        "advantage": cat(v.chain_advantage[which], sorted_points(v.cont_advantage)),
        "reward": cat(inputs.reward[which][..., None], cont_reward),  # replaced by _wrap
        "depth": cat(slot, each_cont(under)),
        "leaf": cat(slot == m[..., None], np.ones((k, g, n, t), bool)),
    }


def _wrap(
    responses: Sequence[Response], node: dict[str, list], chain_id: list, root_value: float
) -> ProblemTree:
    """One problem's Segment and TrainingPath objects from its node columns (no arithmetic;
    leaf rewards are the Responses' / Continuations' own floats)."""
    tokens: dict[int, np.ndarray] = {}
    own, values, rewards = [], list(node["value"]), list(node["reward"])
    for i, (j, start, end, branch, cont) in enumerate(
        zip(node["response"], node["start"], node["end"], node["branch"], node["continuation"],
            strict=True)
    ):  # fmt: skip
        if branch == ORIGINAL:
            if j not in tokens:
                tokens[j] = np.asarray(responses[j].tokens, dtype=np.int32)
            own.append(tokens[j][start:end])
            rewards[i] = float(responses[j].reward)
        else:
            c = responses[j].continuations[branch][cont]
            own.append(np.asarray(c.tokens, dtype=np.int32))
            values[i] = rewards[i] = float(c.reward)
    segments = tuple(
        Segment(j, parent, start, toks, branch, cont, value, count, adv)
        for j, parent, start, toks, branch, cont, value, count, adv in zip(
            node["response"], node["parent"], node["start"], own, node["branch"],
            node["continuation"], values, node["path_count"], node["advantage"], strict=True,
        )
    )  # fmt: skip
    paths = tuple(
        TrainingPath(
            j, branch, cont,
            tuple(chain_id[j][: depth + 1]) + (() if branch == ORIGINAL else (i,)),
            reward, segments,
        )
        for i, (j, branch, cont, depth, reward, leaf) in enumerate(
            zip(node["response"], node["branch"], node["continuation"], node["depth"], rewards,
                node["leaf"], strict=True)
        )
        if leaf
    )  # fmt: skip
    return ProblemTree(root_value, segments, paths)
