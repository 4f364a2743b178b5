"""The former per-object training-row code of rl/packed.py (one Python pass per path, per
segment and per row): the reference the flat-array rows (rl/row_build.py, rl/rows.py) must equal
exactly (tests/test_rows_flat.py) and the "host reference" of benchmarks/branching.py's row
building."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from attnrl_jax.rl.packed import PACKINGS, ROW_FIELDS, Row, TrainProblem, is_dfs_numbered
from attnrl_jax.rl.tree import ProblemTree


def _row(prompt: np.ndarray, parts: list, ancestors: np.ndarray) -> Row:
    """parts: (node, parent_node, start, tokens, weight, advantage, logp, version), parents first.

    Node 0 is the prompt; predictor of a node's first token: the last token of its nearest
    non-empty ancestor.
    """
    p = len(prompt)
    tokens, positions, nodes, predictor = [prompt], [np.arange(p)], [np.zeros(p, int)], []
    predictor.append(np.maximum(np.arange(p) - 1, 0))
    weights, adv, logp, ver = [np.zeros(p)], [np.zeros(p)], [np.zeros(p)], [np.full(p, -1)]
    last = {0: p - 1}  # node -> row index of its last token (or of its nearest ancestor's)
    offset = p
    for node, parent, start, toks, w, a, lp, v in parts:
        n = len(toks)
        first = last[parent]
        idx = offset + np.arange(n)
        tokens.append(toks)
        positions.append(p + start + np.arange(n))
        nodes.append(np.full(n, node))
        predictor.append(np.concatenate([[first], idx[:-1]])[:n])
        weights.append(np.full(n, w))
        adv.append(np.full(n, a))
        logp.append(lp)
        ver.append(v)
        last[node] = idx[-1] if n else first
        offset += n

    def cat(xs, dtype):
        return np.concatenate(xs).astype(dtype)

    return Row(
        cat(tokens, np.int32),
        cat(positions, np.int32),
        cat(nodes, np.int32),
        cat(predictor, np.int32),
        ancestors,
        cat(weights, np.float32),
        cat(adv, np.float32),
        cat(logp, np.float32),
        cat(ver, np.int32),
    )


def path_rows(problem: TrainProblem) -> list[Row]:
    """One row per training path; each path token weight 1 (prompt tokens weight 0)."""
    tree, rows = problem.tree, []
    for path in tree.paths:
        parts = [
            (
                0,
                0,
                tree.segments[s].start,
                tree.segments[s].tokens,
                1.0,
                tree.segments[s].advantage,
                problem.segment_logp[s],
                problem.segment_version[s],
            )
            for s in path.segments
        ]
        rows.append(_row(problem.prompt_ids, parts, np.ones((1, 1), bool)))
    return rows


def tree_rows(problem: TrainProblem, tokens_per_row: int = 0) -> list[Row]:
    """One row per expanded response with its segments once, weight = path count.

    Nodes are numbered, and their tokens placed, in DFS pre-order (so parents come before
    children, and each node's subtree is the id interval `attention.tree_mask` reads).
    tokens_per_row > 0: a response whose row would be longer is split into several rows of at
    most that many tokens (split_paths); raises ValueError when one path alone does not fit.
    """
    tree, rows = problem.tree, []
    prompt = len(problem.prompt_ids)
    sizes = [len(s.tokens) for s in tree.segments]
    if tokens_per_row:
        _check_longest_path([problem], tokens_per_row)
    for response in sorted({s.response for s in tree.segments}):
        order = _dfs_order(tree, response)
        if not tokens_per_row or prompt + sum(sizes[i] for i in order) <= tokens_per_row:
            rows.append(_tree_row(problem, order, {i: tree.segments[i].path_count for i in order}))
            continue
        rank = {i: k for k, i in enumerate(order)}
        paths = sorted(
            (p.segments for p in tree.paths if p.segments and p.segments[0] in rank),
            key=lambda path: rank[path[-1]],
        )
        for group in split_paths(paths, sizes, tokens_per_row - prompt):
            weights = Counter(s for path in group for s in path)
            rows.append(_tree_row(problem, [i for i in order if i in weights], weights))
    return rows


def split_paths(
    paths: Sequence[Sequence[int]], sizes: Sequence[int], room: int
) -> list[list[Sequence[int]]]:
    """Greedy split of one response's leaf paths (segment ids, root side first; in DFS order
    of their leaves, so paths sharing deep ancestors are neighbours) into groups whose union of
    segments holds at most `room` tokens: a path joins the current group when the segments it
    adds fit, else it starts the next group with its whole ancestry. Each group is a
    root-connected piece of the tree (a union of root paths). Every path must fit `room` alone.
    """
    groups: list[list[Sequence[int]]] = []
    held: set[int] = set()
    used = 0
    for path in paths:
        alone = sum(sizes[s] for s in path)
        added = sum(sizes[s] for s in path if s not in held)
        if not groups or used + added > room:
            groups.append([])
            held, used, added = set(), 0, alone
        groups[-1].append(path)
        held.update(path)
        used += added
    return groups


def _check_longest_path(problems: Sequence[TrainProblem], tokens_per_row: int) -> None:
    """ValueError naming the budget and the longest path row when that does not fit."""
    longest = max(
        (len(p.prompt_ids) + sum(len(p.tree.segments[s].tokens) for s in path.segments)
         for p in problems for path in p.tree.paths),
        default=0,
    )  # fmt: skip
    if longest > tokens_per_row:
        raise ValueError(
            f"train.tokens_per_row={tokens_per_row} is smaller than the longest path "
            f"({longest} tokens: prompt + one root-to-leaf path)"
        )


def _dfs_order(tree: ProblemTree, response: int) -> list[int]:
    """Segment ids of one response in DFS pre-order (children in segment order)."""
    children: dict[int, list[int]] = {}
    for i, s in enumerate(tree.segments):
        if s.response == response:
            children.setdefault(s.parent, []).append(i)
    order, stack = [], list(reversed(children.get(-1, [])))
    while stack:
        i = stack.pop()
        order.append(i)
        stack.extend(reversed(children.get(i, [])))
    return order


def _tree_row(problem: TrainProblem, order: Sequence[int], weights: Mapping[int, float]) -> Row:
    """The row of segments `order` (DFS pre-order, closed under parents), each token weighted
    by weights[segment]."""
    tree = problem.tree
    node = {i: k + 1 for k, i in enumerate(order)}  # segment -> node id (0 = prompt)
    ancestors = np.eye(len(order) + 1, dtype=bool)
    ancestors[:, 0] = True
    parts = []
    for i in order:
        seg = tree.segments[i]
        parent = node[seg.parent] if seg.parent >= 0 else 0
        ancestors[node[i]] |= ancestors[parent]
        parts.append(
            (
                node[i],
                parent,
                seg.start,
                seg.tokens,
                float(weights[i]),
                seg.advantage,
                problem.segment_logp[i],
                problem.segment_version[i],
            )
        )
    return _row(problem.prompt_ids, parts, ancestors)


def make_rows(problems: Sequence[TrainProblem], packing: str, tokens_per_row: int = 0) -> list[Row]:
    """Rows of `problems` in layout `packing`. tokens_per_row > 0: tree rows longer than that
    are split (tree_rows); a path longer than that is one ValueError naming both."""
    if packing not in PACKINGS:
        raise ValueError(f"packing={packing!r}; allowed: {PACKINGS}")
    if packing == "path":
        if tokens_per_row > 0:
            _check_longest_path(problems, tokens_per_row)
        return [row for problem in problems for row in path_rows(problem)]
    return [row for problem in problems for row in tree_rows(problem, tokens_per_row)]


def pack_rows(rows: Sequence[Row], tokens_per_row: int) -> list[Row]:
    """Padding-free rows: whole rows placed first-fit by decreasing length into rows of at most
    `tokens_per_row` tokens. Each packed row is a forest: the rows' node ids are offset so they
    stay DFS-numbered, the ancestor matrix is block-diagonal, so no token sees another row's
    tokens, and positions and predictors are each row's own (log-probs are unchanged).
    """
    longest = max((len(r.tokens) for r in rows), default=0)
    if longest > tokens_per_row:
        raise ValueError(
            f"train.tokens_per_row={tokens_per_row} is smaller than the longest row ({longest} "
            "tokens: prompt + every segment of one response's tree)"
        )
    bins: list[list[Row]] = []
    room: list[int] = []
    for row in sorted(rows, key=lambda r: -len(r.tokens)):
        n = len(row.tokens)
        i = next((i for i, free in enumerate(room) if free >= n), len(bins))
        if i == len(bins):
            bins.append([])
            room.append(tokens_per_row)
        bins[i].append(row)
        room[i] -= n
    return [_concat(b) for b in bins]


def _concat(rows: Sequence[Row]) -> Row:
    """One row holding `rows` side by side (see pack_rows)."""
    if len(rows) == 1:
        return rows[0]
    sizes = [len(r.tokens) for r in rows]
    counts = [len(r.ancestors) for r in rows]
    token_at, node_at = np.cumsum([0, *sizes[:-1]]), np.cumsum([0, *counts[:-1]])
    k = sum(counts)
    ancestors = np.zeros((k, k), bool)
    for r, start in zip(rows, node_at, strict=True):
        ancestors[start : start + len(r.ancestors), start : start + len(r.ancestors)] = r.ancestors

    def cat(name, offsets=None):
        parts = [getattr(r, name) for r in rows]
        dtype = parts[0].dtype
        if offsets is not None:
            parts = [p + o for p, o in zip(parts, offsets, strict=True)]
        return np.concatenate(parts).astype(dtype)

    return Row(
        tokens=cat("tokens"),
        positions=cat("positions"),
        nodes=cat("nodes", node_at),
        predictor=cat("predictor", token_at),
        ancestors=ancestors,
        weights=cat("weights"),
        advantages=cat("advantages"),
        old_logp=cat("old_logp"),
        versions=cat("versions"),
    )


def stack_rows(rows: Sequence[Row], num_rows: int, length: int, max_nodes: int) -> dict:
    """Right-pad rows to [num_rows, length] (ancestors [num_rows, K, K]); padding has node -1
    and weight 0. Padding rows are all padding."""
    if len(rows) > num_rows:
        raise ValueError(f"{len(rows)} rows do not fit {num_rows}")
    out = {
        "tokens": np.zeros((num_rows, length), np.int32),
        "positions": np.zeros((num_rows, length), np.int32),
        "nodes": np.full((num_rows, length), -1, np.int32),
        "predictor": np.zeros((num_rows, length), np.int32),
        "ancestors": np.zeros((num_rows, max_nodes, max_nodes), bool),
        "weights": np.zeros((num_rows, length), np.float32),
        "advantages": np.zeros((num_rows, length), np.float32),
        "old_logp": np.zeros((num_rows, length), np.float32),
        "versions": np.full((num_rows, length), -1, np.int32),
    }
    for r, row in enumerate(rows):
        n, k = len(row.tokens), len(row.ancestors)
        if n > length or k > max_nodes:
            raise ValueError(f"row {r} ({n} tokens, {k} nodes) exceeds [{length}, {max_nodes}]")
        if not is_dfs_numbered(row.ancestors):
            raise ValueError(f"row {r}: nodes are not numbered in DFS pre-order")
        for name in ROW_FIELDS:
            if name == "ancestors":
                out[name][r, :k, :k] = row.ancestors
            else:
                out[name][r, :n] = getattr(row, name)
    return out
