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

Assembly computes every node's fields for the whole batch with index arrays (`_node_table`); a
node's tokens (and other per-token fields, e.g. behaviour log-probs) are a run of the flat
`TreeSources` pool, kept as views (`Runs`: begin and length per node, nothing gathered), which
training rows read straight from the pool (rl/row_build.py); a ProblemTree keeps its node
columns and makes the Segment / TrainingPath objects when first read. A path's per-token
arrays are built from its segments when first read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import jax
import numpy as np

from attnrl_jax.rl.ragged import Ragged, Runs

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


class ProblemTree:
    """A problem's tree: V(root), the packed segments and the per-path sequences.

    Built from Segment / TrainingPath tuples (`ProblemTree(root_value, segments, paths)`), or by
    the assembly from its node columns (`from_nodes`): then the Segment / TrainingPath objects
    are made on the first read of `segments` / `paths`, and `node_tokens` / `nodes` give the
    same data as arrays without them. Read-only.
    """

    __slots__ = ("root_value", "_segments", "_paths", "_nodes", "_tokens", "_chain_id")

    def __init__(
        self,
        root_value: float,
        segments: Sequence[Segment] = (),
        paths: Sequence[TrainingPath] = (),
    ):
        self.root_value = root_value
        self._segments, self._paths = tuple(segments), tuple(paths)
        self._nodes = self._tokens = self._chain_id = None

    @classmethod
    def from_nodes(
        cls,
        root_value: float,
        nodes: dict[str, np.ndarray],
        tokens: Ragged | Runs,
        chain_id: np.ndarray,
    ) -> ProblemTree:
        """nodes: per-node columns in node order (response, parent, start, branch, continuation,
        value, path_count, advantage, reward, depth, leaf; see `_node_table`); tokens: node i's
        token ids as row i; chain_id int[G, N + 1]: the node index of chain slot (j, s)."""
        tree = cls(root_value)
        tree._segments = tree._paths = None
        tree._nodes, tree._tokens, tree._chain_id = nodes, tokens, chain_id
        return tree

    @property
    def nodes(self) -> dict[str, np.ndarray] | None:
        """The node columns (None for a tree built from objects)."""
        return self._nodes

    @property
    def node_tokens(self) -> Ragged | Runs:
        """Row i: the token ids of segment i (int32 views; of the batch's token pool for an
        assembled tree)."""
        if self._tokens is None:
            self._tokens = Ragged.of([s.tokens for s in self.segments], np.int32)
        return self._tokens

    @property
    def num_paths(self) -> int:
        """len(paths), counted from the node columns when there are any (no object made)."""
        if self._nodes is not None:
            return int(np.count_nonzero(self._nodes["leaf"]))
        return len(self.paths)

    @property
    def segments(self) -> tuple[Segment, ...]:
        if self._segments is None:
            n = self._nodes
            cols = [n[k].tolist() for k in _SEGMENT_COLUMNS]
            self._segments = tuple(
                Segment(j, parent, start, toks, branch, cont, value, count, adv)
                for (j, parent, start, branch, cont, value, count, adv), toks in zip(
                    zip(*cols, strict=True), self._tokens, strict=True
                )
            )
        return self._segments

    @property
    def paths(self) -> tuple[TrainingPath, ...]:
        if self._paths is None:
            n, segments = self._nodes, self.segments
            chain_id = self._chain_id.tolist()
            leaves = np.flatnonzero(n["leaf"]).tolist()
            cols = [n[k][leaves].tolist() for k in ("response", "branch", "continuation", "depth")]
            rewards = n["reward"][leaves].tolist()
            self._paths = tuple(
                TrainingPath(
                    j, branch, cont,
                    tuple(chain_id[j][: depth + 1]) + (() if branch == ORIGINAL else (i,)),
                    reward, segments,
                )
                for i, j, branch, cont, depth, reward in zip(leaves, *cols, rewards, strict=True)
            )  # fmt: skip
        return self._paths


_SEGMENT_COLUMNS = (
    "response", "parent", "start", "branch", "continuation", "value", "path_count", "advantage",
)  # fmt: skip


@dataclass(frozen=True, eq=False)
class TreeSources:
    """A batch's response and continuation tokens and leaf rewards as flat arrays (no object
    per response): what the assembly reads besides tree_values' inputs and outputs.

    Global numbering: response j of problem a is problem_first[a] + j; branch point b of
    response i is point_first[i] + b (in its given order); continuation c of point p is
    cont_first[p] + c. pool: name -> a flat per-token array holding every response then every
    continuation ("tokens", int, is required; others, e.g. behaviour log-probs, are gathered
    alike by `assemble`). response_at int64[B], cont_at / cont_len int64[C]: pool offsets and
    lengths; reward float64[B], cont_reward float64[C]: the leaves' own rewards.
    """

    problem_first: np.ndarray
    point_first: np.ndarray
    cont_first: np.ndarray
    response_at: np.ndarray
    cont_at: np.ndarray
    cont_len: np.ndarray
    reward: np.ndarray
    cont_reward: np.ndarray
    pool: dict[str, np.ndarray]

    @classmethod
    def from_responses(cls, problems: Sequence[Sequence[Response]]) -> TreeSources:
        """The sources of Response / Continuation objects (one concatenation of all tokens)."""
        flat = [x for responses in problems for x in responses]
        groups = [conts for x in flat for conts in x.continuations]
        conts = [c for group in groups for c in group]
        rows = [np.asarray(x.tokens) for x in flat] + [np.asarray(c.tokens) for c in conts]
        responses, continuations = Ragged.of(rows, np.int32).split(len(flat))
        return cls.of(
            problem_sizes=np.fromiter(map(len, problems), np.int64, len(problems)),
            points=np.fromiter((len(x.branch_points) for x in flat), np.int64, len(flat)),
            conts=np.fromiter(map(len, groups), np.int64, len(groups)),
            reward=np.fromiter((x.reward for x in flat), np.float64, len(flat)),
            cont_reward=np.fromiter((c.reward for c in conts), np.float64, len(conts)),
            pool={"tokens": (responses, continuations)},
        )

    @classmethod
    def of(
        cls,
        problem_sizes: np.ndarray,
        points: np.ndarray,
        conts: np.ndarray,
        reward: np.ndarray,
        cont_reward: np.ndarray,
        pool: dict[str, tuple[Ragged, Ragged]],
    ) -> TreeSources:
        """From counts (responses per problem [P], branch points per response [B],
        continuations per point [sum points]), rewards, and per field the (responses,
        continuations) Ragged rows; the fields' rows must have the same lengths. A field whose
        continuations follow its responses in one array (`Ragged.split`) is used without a
        copy; others are concatenated once."""
        responses, continuations = pool["tokens"]
        for name, (r, c) in pool.items():
            if not (np.array_equal(r.lengths, responses.lengths)
                    and np.array_equal(c.lengths, continuations.lengths)):  # fmt: skip
                raise ValueError(f"pool field {name!r} has other row lengths than 'tokens'")

        def offsets(counts):
            out = np.zeros(len(counts) + 1, np.int64)
            np.cumsum(counts, out=out[1:])
            return out

        def flat(r, c):  # responses then continuations, from index 0
            if r.values is c.values and r.first[-1] == c.first[0]:
                return r.values[r.first[0] : c.first[-1]]
            return np.concatenate([r.values[r.first[0] : r.first[-1]],
                                   c.values[c.first[0] : c.first[-1]]])  # fmt: skip

        base = int(responses.first[-1] - responses.first[0])
        return cls(
            problem_first=offsets(problem_sizes),
            point_first=offsets(points),
            cont_first=offsets(conts),
            response_at=responses.first[:-1] - responses.first[0],
            cont_at=base + continuations.first[:-1] - continuations.first[0],
            cont_len=continuations.lengths,
            reward=np.asarray(reward, np.float64),
            cont_reward=np.asarray(cont_reward, np.float64),
            pool={name: flat(r, c) for name, (r, c) in pool.items()},
        )


def assemble_trees(
    problems: Sequence[Sequence[Response]] | TreeSources,
    inputs: TreeInputs,
    values: TreeValues,
    which: Sequence[int] | np.ndarray | None = None,
) -> list[ProblemTree]:
    """The ProblemTrees of problems `which` (default all) from tree_values' inputs and outputs
    and the problems' tokens (Response objects or their TreeSources).

    Every node's fields (parent, start, value, path count, advantage, path members) and its
    tokens come from index-array operations over the whole batch (`assemble`); the trees make
    their Segment / TrainingPath objects only when read. Node order: per expanded response, its
    chain S_0..S_m, then the continuations of each group in sorted point order; paths: the
    original ending first, then continuations in node order.
    """
    if not isinstance(problems, TreeSources):
        problems = TreeSources.from_responses(problems)
    return assemble(problems, inputs, values, which)[0]


def assemble(
    sources: TreeSources,
    inputs: TreeInputs,
    values: TreeValues,
    which: Sequence[int] | np.ndarray | None = None,
) -> tuple[list[ProblemTree], dict[str, list[Runs]]]:
    """(trees of problems `which`, per pool field other than "tokens" each tree's node rows):
    e.g. fields["logp"][k][i] are the pool's "logp" values of segment i of tree k. Node
    tokens and fields are `Runs`, views of the sources' pool: assembly copies no token."""
    which = np.arange(len(sources.problem_first) - 1) if which is None else which
    which = np.asarray(which, np.int64)
    inputs, values = jax.device_get((inputs, values))
    table = _node_table(inputs, values, which)
    ok = table.pop("ok")
    chain_id = table.pop("chain_id")
    node = {name: col[ok] for name, col in table.items()}
    per_problem = ok.sum((1, 2))
    i = sources.problem_first[np.repeat(which, per_problem)] + node["response"]  # global
    cont = node["branch"] != ORIGINAL
    c = sources.cont_first[sources.point_first[i] + np.where(cont, node["branch"], 0)]
    c = np.where(cont, c + node["continuation"], 0)
    cont_reward = sources.cont_reward[c] if len(sources.cont_reward) else np.zeros(len(c))
    node["value"] = np.where(cont, cont_reward, node["value"])
    node["reward"] = np.where(cont, cont_reward, sources.reward[i])
    cont_at = sources.cont_at[c] if len(sources.cont_at) else np.zeros(len(c), np.int64)
    cont_len = sources.cont_len[c] if len(sources.cont_len) else np.zeros(len(c), np.int64)
    begin = np.where(cont, cont_at, sources.response_at[i] + node["start"])
    length = np.where(cont, cont_len, node.pop("end") - node["start"])
    size = len(sources.pool["tokens"])
    if len(begin) and ((begin < 0).any() or (begin + length > size).any() or (length < 0).any()):
        raise ValueError(f"tree nodes' token runs fall outside the sources' {size} tokens")
    bounds = np.zeros(len(which) + 1, np.int64)
    np.cumsum(per_problem, out=bounds[1:])
    roots = values.root_value[which].tolist()
    trees, fields = [], {name: [] for name in sources.pool if name != "tokens"}
    for k, (lo, hi) in enumerate(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)):
        # views of the pool: no token is copied until something reads it
        runs = {name: Runs(pool, begin[lo:hi], length[lo:hi]) for name, pool in
                sources.pool.items()}  # fmt: skip
        columns = {name: col[lo:hi] for name, col in node.items()}
        trees.append(ProblemTree.from_nodes(roots[k], columns, runs.pop("tokens"), chain_id[k]))
        for name, rows in runs.items():
            fields[name].append(rows)
    return trees, fields


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
