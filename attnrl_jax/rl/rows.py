"""Training rows as flat arrays (`Rows`), one `Row` as a view of them, and the two host steps
after building them: packing side by side (`pack_rows`) and padding into the update's arrays
(`stack_rows`). See rl/packed.py for what a row holds.

A `Rows` keeps every row's per-token fields one after another (offsets `first`) and each row's
node tree as the DFS subtree size of each node (offsets `node_first`): nodes are numbered in
DFS pre-order, so node a's subtree is the id interval [a, a + size(a)) and the ancestor matrix
follows from the sizes (`intervals`). Packing and padding are index-array operations over all
rows; only first-fit packing's choice of a bin is a loop over the rows' lengths (plain ints).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

ROW_FIELDS = (
    "tokens",
    "positions",
    "nodes",
    "predictor",
    "ancestors",
    "weights",
    "advantages",
    "old_logp",
    "versions",
)
# per-token fields: dtype and the value of padding
TOKEN_FIELDS = {
    "tokens": (np.int32, 0),
    "positions": (np.int32, 0),
    "nodes": (np.int32, -1),
    "predictor": (np.int32, 0),
    "weights": (np.float32, 0),
    "advantages": (np.float32, 0),
    "old_logp": (np.float32, 0),
    "versions": (np.int32, -1),
}


@dataclass(frozen=True, eq=False)
class Row:
    """One unpadded training row (fields as in ROW_FIELDS, each [L] except ancestors [K, K])."""

    tokens: np.ndarray
    positions: np.ndarray
    nodes: np.ndarray
    predictor: np.ndarray
    ancestors: np.ndarray
    weights: np.ndarray
    advantages: np.ndarray
    old_logp: np.ndarray
    versions: np.ndarray


def intervals(sizes: np.ndarray) -> np.ndarray:
    """bool[..., K, K] ancestor matrices of DFS-numbered trees from subtree sizes [..., K]:
    [n, a] is True when a <= n < a + size(a) (size 0: no node)."""
    ids = np.arange(sizes.shape[-1])
    return (ids[None, :] <= ids[:, None]) & (ids[:, None] < (ids + sizes)[..., None, :])


def is_dfs_numbered(ancestors: np.ndarray) -> bool:
    """Whether ancestors [K, K] (ancestors[n, a]: a is an ancestor-or-self of n) is a tree
    numbered in DFS pre-order: a's subtree is exactly the ids [a, a + size(a))."""
    return bool(np.array_equal(ancestors, intervals(ancestors.sum(axis=0))))


def _offsets(counts: np.ndarray) -> np.ndarray:
    out = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=out[1:])
    return out


def _runs(first: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index, new first): the flat entries of `rows` (int[K]) of a flat array with row offsets
    `first`, one after another."""
    rows = np.asarray(rows, np.int64)
    counts = first[rows + 1] - first[rows]
    new = _offsets(counts)
    index = np.repeat(first[rows] - new[:-1], counts) + np.arange(new[-1])
    return index, new


class Rows(Sequence):
    """Rows as flat arrays; a Sequence of `Row` views (len, index, slice, iterate).

    fields: name -> flat [sum L] array (TOKEN_FIELDS' dtypes); first int64[R + 1]: row i's
    tokens are [first[i], first[i + 1]); sizes int32[sum K]: DFS subtree size of each node of
    each row (node 0, the prompt, first); node_first int64[R + 1] alike.
    """

    __slots__ = ("fields", "first", "sizes", "node_first")

    def __init__(self, fields: dict, first: np.ndarray, sizes: np.ndarray, node_first: np.ndarray):
        self.fields = {name: np.asarray(fields[name], dtype) for name, (dtype, _) in
                       TOKEN_FIELDS.items()}  # fmt: skip
        self.first = np.asarray(first, np.int64)
        self.sizes = np.asarray(sizes, np.int32)
        self.node_first = np.asarray(node_first, np.int64)

    @classmethod
    def of(cls, rows: Sequence[Row]) -> Rows:
        """Row objects (DFS-numbered ancestors; not checked here) as one Rows (a Rows as is)."""
        if isinstance(rows, Rows):
            return rows
        rows = list(rows)
        lengths = np.fromiter((len(r.tokens) for r in rows), np.int64, len(rows))
        nodes = np.fromiter((len(r.ancestors) for r in rows), np.int64, len(rows))
        fields = {
            name: np.concatenate([np.zeros(0, dtype), *(getattr(r, name) for r in rows)])
            for name, (dtype, _) in TOKEN_FIELDS.items()
        }
        sizes = np.concatenate([np.zeros(0, np.int64), *(r.ancestors.sum(0) for r in rows)])
        return cls(fields, _offsets(lengths), sizes, _offsets(nodes))

    @property
    def lengths(self) -> np.ndarray:
        """int64[R]: tokens of each row."""
        return np.diff(self.first)

    @property
    def num_nodes(self) -> np.ndarray:
        """int64[R]: nodes of each row (K, the prompt included)."""
        return np.diff(self.node_first)

    def __len__(self) -> int:
        return len(self.first) - 1

    def __getitem__(self, i):
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if step != 1:
                return self.take(np.arange(len(self))[i])
            stop = max(start, stop)  # contiguous rows: views, no copy
            a, b = self.first[start], self.first[stop]
            c, d = self.node_first[start], self.node_first[stop]
            fields = {k: v[a:b] for k, v in self.fields.items()}
            return Rows(fields, self.first[start : stop + 1] - a, self.sizes[c:d],
                        self.node_first[start : stop + 1] - c)  # fmt: skip
        if not -len(self) <= i < len(self):
            raise IndexError(f"row {i} out of range for {len(self)} rows")
        i %= len(self)
        a, b = self.first[i], self.first[i + 1]
        sizes = self.sizes[self.node_first[i] : self.node_first[i + 1]]
        return Row(ancestors=intervals(sizes), **{k: v[a:b] for k, v in self.fields.items()})

    def __iter__(self) -> Iterator[Row]:
        return (self[i] for i in range(len(self)))

    def take(self, rows: Sequence[int] | np.ndarray) -> Rows:
        """Rows `rows` (int[K], any order) as a new Rows (one gather per field)."""
        index, first = _runs(self.first, rows)
        node_index, node_first = _runs(self.node_first, rows)
        fields = {k: v[index] for k, v in self.fields.items()}
        return Rows(fields, first, self.sizes[node_index], node_first)


def first_fit_bins(lengths: np.ndarray, capacity: int) -> tuple[np.ndarray, np.ndarray]:
    """(order, bin) int64[R]: first-fit decreasing of rows of `lengths` into bins of `capacity`
    tokens: rows by decreasing length (stable), each into the first bin with room. `order` lists
    the rows bin by bin, each bin's rows in placement order; bin[k] is the bin of order[k].

    First fit is sequential (a row's bin depends on every earlier placement): this is the one
    loop over rows on the row path, over plain ints, each step one numpy scan of the open bins'
    free room.
    """
    order = np.argsort(-np.asarray(lengths, np.int64), kind="stable")
    room = np.empty(len(order), np.int64)
    assigned = np.empty(len(order), np.int64)
    opened = 0
    for k, n in enumerate(np.asarray(lengths, np.int64)[order].tolist()):
        fits = np.flatnonzero(room[:opened] >= n)
        b = int(fits[0]) if fits.size else opened
        if b == opened:
            room[opened] = capacity
            opened += 1
        room[b] -= n
        assigned[k] = b
    by_bin = np.argsort(assigned, kind="stable")
    return order[by_bin], assigned[by_bin]


def pack_rows(rows: Sequence[Row] | Rows, tokens_per_row: int) -> Rows:
    """Padding-free rows: whole rows placed first-fit by decreasing length into rows of at most
    `tokens_per_row` tokens. Each packed row is a forest: the rows' node ids are offset so they
    stay DFS-numbered, the ancestor matrix is block-diagonal, so no token sees another row's
    tokens, and positions and predictors are each row's own (log-probs are unchanged).
    """
    rows = Rows.of(rows)
    lengths = rows.lengths
    longest = int(lengths.max(initial=0))
    if longest > tokens_per_row:
        raise ValueError(
            f"train.tokens_per_row={tokens_per_row} is smaller than the longest row ({longest} "
            "tokens: prompt + every segment of one response's tree)"
        )
    if not len(rows):
        return rows
    order, bins = first_fit_bins(lengths, tokens_per_row)
    packed = rows.take(order)
    # each member row's token / node offset within its bin
    new_bin = np.ones(len(order), bool)
    new_bin[1:] = bins[1:] != bins[:-1]
    bin_start = np.flatnonzero(new_bin)
    member_bin = np.cumsum(new_bin) - 1
    token_at = packed.first[:-1] - packed.first[bin_start][member_bin]
    node_at = packed.node_first[:-1] - packed.node_first[bin_start][member_bin]
    counts = packed.lengths
    fields = dict(packed.fields)
    fields["nodes"] = fields["nodes"] + np.repeat(node_at, counts).astype(np.int32)
    fields["predictor"] = fields["predictor"] + np.repeat(token_at, counts).astype(np.int32)
    first = np.append(packed.first[bin_start], packed.first[-1])
    node_first = np.append(packed.node_first[bin_start], packed.node_first[-1])
    return Rows(fields, first, packed.sizes, node_first)


def stack_rows(rows: Sequence[Row] | Rows, num_rows: int, length: int, max_nodes: int) -> dict:
    """Right-pad rows to [num_rows, length] (ancestors [num_rows, K, K]); padding has node -1
    and weight 0. Padding rows are all padding. Row objects are checked to be DFS-numbered."""
    if len(rows) > num_rows:
        raise ValueError(f"{len(rows)} rows do not fit {num_rows}")
    if not isinstance(rows, Rows):
        for r, row in enumerate(rows):
            n, k = len(row.tokens), len(row.ancestors)
            if n > length or k > max_nodes:
                raise ValueError(f"row {r} ({n} tokens, {k} nodes) exceeds [{length}, {max_nodes}]")
            if not is_dfs_numbered(row.ancestors):
                raise ValueError(f"row {r}: nodes are not numbered in DFS pre-order")
        rows = Rows.of(rows)
    lengths, nodes = rows.lengths, rows.num_nodes
    bad = np.flatnonzero((lengths > length) | (nodes > max_nodes))
    if bad.size:
        r = int(bad[0])
        raise ValueError(
            f"row {r} ({lengths[r]} tokens, {nodes[r]} nodes) exceeds [{length}, {max_nodes}]"
        )
    b = len(rows)
    # row-major order of a row-prefix mask is the flat order: one mask for every field
    mask = np.arange(length) < lengths[:, None]
    out = {}
    for name, (dtype, pad) in TOKEN_FIELDS.items():
        x = np.full((num_rows, length), pad, dtype)
        x[:b][mask] = rows.fields[name]
        out[name] = x
    sizes = np.zeros(num_rows * max_nodes, np.int32)
    node_at = np.repeat(np.arange(b) * max_nodes - rows.node_first[:-1], nodes)
    sizes[node_at + np.arange(rows.node_first[-1])] = rows.sizes
    out["ancestors"] = intervals(sizes.reshape(num_rows, max_nodes))
    return {name: out[name] for name in ROW_FIELDS}
