"""A problem's token-level tree (Segment, TrainingPath, ProblemTree) and its assembly from the
batched node values of tree.py (`assemble_trees`; ALGORITHM.md section 5).

Outputs, for a problem's expanded responses:
- `segments`, the tree-packed form: every distinct node once, with its parent segment, tokens,
  advantage and path count (the number of training paths through it, which is also |leaves(s)|).
  Training each segment's tokens once with weight = path count gives the same loss as training every
  path (both are sums over the same (token, context) pairs).
- `paths`, the per-path form: one sequence per root-to-leaf path with per-token advantages and a
  per-token source marker (True: original-response token, whose behaviour log-prob is the stored one
  from the scoring pass; False: continuation token, log-prob from the continuation's sampler).

Assembly computes every node's fields for the whole batch with index arrays (`_node_table`); the
host then only wraps them in objects. A path's per-token arrays are built from its segments when
first read (training rows are built from the segments).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import jax
import numpy as np

if TYPE_CHECKING:  # tree.py imports this module
    from attnrl_jax.rl.tree import Response, TreeInputs, TreeValues

ORIGINAL = -1  # `branch` / `continuation` value of tokens that come from the initial response


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
    ends = np.cumsum(ok.sum((1, 2))).tolist()
    roots = values.root_value[which].tolist()
    trees, lo = [], 0
    for k, (a, hi) in enumerate(zip(which.tolist(), ends, strict=True)):
        node = {name: col[lo:hi] for name, col in columns.items()}
        trees.append(_wrap(problems[a], node, chain_id[k], roots[k]))
        lo = hi
    return trees


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
    node = (np.cumsum(ok.reshape(k, g * ok.shape[-1]), axis=1) - 1).reshape(ok.shape)
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
