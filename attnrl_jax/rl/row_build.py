"""Training rows of a batch of problems from the trees' flat node arrays (`build_rows`): path
rows, tree rows and tree rows split under a token budget, as index-array operations over all
problems at once (rl/packed.py describes the layouts).

The problems' trees become one node table (`NodeTable`: response, parent, start, path count,
advantage and a token run in a flat pool per node; the training paths as node lists). From it:
- the DFS pre-order of every response's nodes: one lexsort of each node's root path;
- a row's "runs": the prompt, then its nodes' token runs; each run's per-token fields are a
  constant, an arange or a gather from the pool (one np.repeat / take each over all rows);
- split tree rows: the greedy grouping of a response's paths (split_paths in
  tests/reference_packed.py) is a scan with resets, computed group by group for all responses
  at once: a path adds the tokens it does not share with the previous path (paths in DFS order
  of their leaves), so a group ends where the running sum passes the budget (one searchsorted
  per group index).
The loops left are over tree depth (ancestor chains, subtree sizes, empty-node predictors) and
over the group index of split rows: their counts are the trees' depth (branch points + 2) and
the most rows one response splits into, not the number of responses, paths or nodes.
Collecting the problems' arrays is one pass over the problems (array references, no per-node
work) for trees assembled from node columns; trees built from Segment objects (GRPO groups,
hand-built trees) are read per segment and per path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from attnrl_jax.rl.ragged import Ragged, Runs
from attnrl_jax.rl.rows import Rows

if TYPE_CHECKING:  # packed.py imports this module
    from attnrl_jax.rl.packed import TrainProblem

PACKINGS = ("tree", "path")
FIELDS = {"tokens": np.int32, "logp": np.float32, "version": np.int32}  # pool dtypes


@dataclass(frozen=True, eq=False)
class NodeTable:
    """Nodes of a list of problems, numbered globally in problem then node order.

    problem, response, parent (global id, -1 under the root), start, path_count: int64[N];
    advantage: float32[N]; length int64[N]: tokens per node; begin: field -> int64[N], the
    node's values of that field are pools[field][begin : begin + length] (fields "tokens",
    "logp", "version");
    prompts: Ragged of the prompt ids (row k: problem k); paths: Ragged of global node ids (root
    side first), problem then path order; path_problem int64[paths].
    """

    problem: np.ndarray
    response: np.ndarray
    parent: np.ndarray
    start: np.ndarray
    path_count: np.ndarray
    advantage: np.ndarray
    length: np.ndarray
    begin: dict[str, np.ndarray]
    pools: dict[str, np.ndarray]
    prompts: Ragged
    paths: Ragged
    path_problem: np.ndarray


def _offsets(counts) -> np.ndarray:
    out = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=out[1:])
    return out


def _as_runs(rows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, begin, length) of per-segment arrays: Runs or a Ragged as they are (no copy),
    else one concatenation."""
    if isinstance(rows, Runs):
        return rows.values, rows.begin, rows.lengths
    if not isinstance(rows, Ragged):
        rows = Ragged.of([np.asarray(r) for r in rows])
    return rows.values, rows.first[:-1], rows.lengths


class _Pool:
    """Per-problem arrays merged into one flat pool; the same array (by identity) is added once,
    so problems assembled from one batch share its pool without a copy."""

    def __init__(self):
        self.arrays, self.at, self.size = [], {}, 0

    def add(self, values: np.ndarray) -> int:
        key = id(values)
        if key not in self.at:
            self.at[key] = self.size
            self.arrays.append(values)
            self.size += len(values)
        return self.at[key]

    def flat(self, dtype) -> np.ndarray:
        if len(self.arrays) == 1:
            return self.arrays[0]
        return np.concatenate([np.zeros(0, dtype), *self.arrays])


def node_table(problems: Sequence[TrainProblem]) -> NodeTable:
    """The problems' trees as one NodeTable (one pass over the problems; see the module doc)."""
    names = ("response", "parent", "start", "path_count", "advantage")
    columns = {k: [] for k in names}
    pools = {name: _Pool() for name in FIELDS}
    begins = {name: [] for name in FIELDS}
    lengths, counts, leaves, explicit, explicit_problem = [], [], [], [], []
    base = 0
    for k, problem in enumerate(problems):
        tree = problem.tree
        nodes = tree.nodes
        if nodes is not None:
            for name in names:
                columns[name].append(nodes[name])
            count = len(nodes["parent"])
            leaves.append(np.flatnonzero(nodes["leaf"]) + base)
        else:  # built from objects: read per segment and per path
            segments = tree.segments
            count = len(segments)
            for name in names:
                columns[name].append(np.array([getattr(s, name) for s in segments], np.float64))
            explicit.extend(np.asarray(p.segments, np.int64) + base for p in tree.paths)
            explicit_problem.extend([k] * len(tree.paths))
        runs = {
            "tokens": _as_runs(tree.node_tokens),
            "logp": _as_runs(problem.segment_logp),
            "version": _as_runs(problem.segment_version),
        }
        for name, (values, begin, length) in runs.items():
            if len(begin) != count or not np.array_equal(length, runs["tokens"][2]):
                raise ValueError(f"problem {k}: {name} rows do not match the tree's segments")
            begins[name].append(begin + pools[name].add(values))
        lengths.append(runs["tokens"][2])
        counts.append(count)
        base += count

    def cat(parts, dtype):
        return np.concatenate([np.zeros(0, dtype), *parts]).astype(dtype)

    first = _offsets(counts)
    problem = np.repeat(np.arange(len(problems)), counts)
    parent = cat(columns["parent"], np.int64)
    parent = np.where(parent >= 0, parent + first[:-1][problem], -1)
    leaf = cat(leaves, np.int64)
    paths, path_problem = _merge_paths(
        _root_paths(parent, leaf), problem[leaf], explicit, np.asarray(explicit_problem, np.int64)
    )
    return NodeTable(
        problem=problem,
        response=cat(columns["response"], np.int64),
        parent=parent,
        start=cat(columns["start"], np.int64),
        path_count=cat(columns["path_count"], np.int64),
        advantage=cat(columns["advantage"], np.float32),
        begin={name: cat(b, np.int64) for name, b in begins.items()},
        length=cat(lengths, np.int64),
        pools={name: pool.flat(FIELDS[name]) for name, pool in pools.items()},
        prompts=Ragged.of([np.asarray(p.prompt_ids) for p in problems], np.int32),
        paths=paths,
        path_problem=path_problem,
    )


def _up_chains(parent: np.ndarray) -> np.ndarray:
    """int64[N, D]: column d holds each node's d-th ancestor (0: itself), -1 past the root;
    D - 1 is the deepest node's depth. One vector step per tree level."""
    up = [np.arange(len(parent))]
    while len(parent) and (up[-1] >= 0).any():
        if len(up) > len(parent):
            raise ValueError("segment parents form a cycle")
        cur = up[-1]
        up.append(np.where(cur >= 0, parent[np.maximum(cur, 0)], -1))
    return np.stack(up[:-1] if len(up) > 1 else up, axis=1)


def _root_first(up: np.ndarray) -> np.ndarray:
    """int64[N, D]: each node's root path, root side first, -1 padded at the end."""
    depth = (up >= 0).sum(1) - 1
    col = depth[:, None] - np.arange(up.shape[1])
    return np.where(col >= 0, np.take_along_axis(up, np.maximum(col, 0), axis=1), -1)


def _root_paths(parent: np.ndarray, leaf: np.ndarray) -> Ragged:
    """The root paths (root side first) of nodes `leaf`, as a Ragged of node ids."""
    if not len(leaf):
        return Ragged(np.zeros(0, np.int64), np.zeros(1, np.int64))
    chains = _root_first(_up_chains(parent)[leaf]) if len(parent) else np.zeros((0, 1))
    keep = chains >= 0
    return Ragged(chains[keep], _offsets(keep.sum(1)))


def _merge_paths(chains: Ragged, chain_problem, explicit, explicit_problem):
    """(paths, path_problem): the chains and the explicit node lists in problem order (each
    problem has one kind)."""
    if not explicit:
        return chains, chain_problem
    lists = Ragged.of(explicit, np.int64)
    values = np.concatenate([chains.values, lists.values])
    lengths = np.concatenate([chains.lengths, lists.lengths])
    first = _offsets(lengths)
    owner = np.concatenate([chain_problem, explicit_problem])
    order = np.argsort(owner, kind="stable")
    index = np.repeat(first[order] - _offsets(lengths[order])[:-1], lengths[order])
    index = index + np.arange(len(values))
    return Ragged(values[index], _offsets(lengths[order])), owner[order]


def build_rows(problems: Sequence[TrainProblem], packing: str, tokens_per_row: int = 0) -> Rows:
    """Rows of `problems` in layout `packing` (problem order; per problem its paths in order, or
    its responses in order, each one tree row or, over tokens_per_row > 0, several split rows).
    A path longer than tokens_per_row > 0 is one ValueError naming both."""
    if packing not in PACKINGS:
        raise ValueError(f"packing={packing!r}; allowed: {PACKINGS}")
    t = node_table(problems)
    if tokens_per_row > 0 or (tokens_per_row and packing == "tree"):
        _check_longest_path(t, tokens_per_row, first_problem=packing == "tree")
    if packing == "path":
        return _path_rows(t)
    return _tree_rows(t, tokens_per_row)


def _path_sizes(t: NodeTable) -> np.ndarray:
    """int64[paths]: prompt + path tokens of every path."""
    cum = _offsets(t.length[t.paths.values])
    return t.prompts.lengths[t.path_problem] + cum[t.paths.first[1:]] - cum[t.paths.first[:-1]]


def _check_longest_path(t: NodeTable, tokens_per_row: int, first_problem: bool) -> None:
    """ValueError naming the budget and the longest path row when that does not fit (tree
    packing: the longest path of the first problem with one too long, as its rows are built)."""
    sizes = _path_sizes(t)
    over = np.flatnonzero(sizes > tokens_per_row)
    if not over.size:
        return
    if first_problem:
        longest = int(sizes[t.path_problem == t.path_problem[over[0]]].max())
    else:
        longest = int(sizes.max())
    raise ValueError(
        f"train.tokens_per_row={tokens_per_row} is smaller than the longest path "
        f"({longest} tokens: prompt + one root-to-leaf path)"
    )


def _interleave_prompts(row_of_node_run: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(run_row, is_prompt) of `rows` rows whose node runs belong to rows row_of_node_run
    (nondecreasing): each row's prompt run first."""
    per_row = np.bincount(row_of_node_run, minlength=rows) + 1
    first = _offsets(per_row)
    is_prompt = np.zeros(int(first[-1]), bool)
    is_prompt[first[:-1]] = True
    return np.repeat(np.arange(rows), per_row), is_prompt


def _path_rows(t: NodeTable) -> Rows:
    """One row per path: prompt + the path's segments; node 0 everywhere, weight 1."""
    rows = len(t.paths)
    run_row, is_prompt = _interleave_prompts(np.repeat(np.arange(rows), t.paths.lengths), rows)
    node = np.full(len(run_row), -1, np.int64)
    node[~is_prompt] = t.paths.values
    return _materialise(
        t, t.path_problem, run_row, is_prompt, node, np.zeros(len(node), np.int64),
        np.where(is_prompt, 0.0, 1.0), None, np.ones(rows, np.int32), np.arange(rows + 1),
    )  # fmt: skip


def _materialise(t, row_problem, run_row, is_prompt, node, node_id, weight, parent_run, sizes,
                 node_first) -> Rows:  # fmt: skip
    """Rows from runs listed row by row, each row's prompt run first: run_row, node (-1: the
    prompt), node_id (in the row), weight per run; parent_run: the run of each run's parent
    node (the row's prompt run for root children and for the prompt), None for path rows (a
    run's first token is predicted from the token before it); sizes / node_first: the rows'
    DFS subtree sizes (see Rows). row_problem int64[rows].

    Per token: one np.repeat per field (int32 index arithmetic where sizes allow), one gather
    per pool field through one shared source index, the prompts' tokens (a small set)
    written over afterwards."""
    node_ok = np.maximum(node, 0)
    prompt_len = t.prompts.lengths[row_problem]  # per row
    length = np.where(is_prompt, prompt_len[run_row], t.length[node_ok])
    run_at = _offsets(length)
    total = int(run_at[-1])
    big = max(total, *(len(x) for x in t.pools.values()), len(t.prompts.values))
    index = np.int32 if big < 2**31 - 1 else np.int64
    row_first = run_at[:-1][is_prompt]
    dest = run_at[:-1] - row_first[run_row]  # row-local start of each run
    if parent_run is None:
        first_pred = dest - 1
    else:  # the last token of the parent, or of its nearest non-empty ancestor
        first_pred = _last_index(dest, length, is_prompt, parent_run)[parent_run]
    first_pred = np.where(is_prompt, 0, first_pred)
    ramp = np.arange(total, dtype=index)

    def runs_of(start):  # per token: start of its run + its index in the run
        return np.repeat((start - run_at[:-1]).astype(index), length) + ramp

    predictor = runs_of(dest - 1)
    filled = length > 0
    predictor[run_at[:-1][filled]] = first_pred[filled]
    pos0 = np.where(is_prompt, 0, prompt_len[run_row] + t.start[node_ok])
    fields = {
        "positions": runs_of(pos0),
        "nodes": np.repeat(node_id.astype(np.int32), length),
        "predictor": predictor,
        "weights": np.repeat(weight.astype(np.float32), length),
        "advantages": np.repeat(
            np.where(is_prompt, 0, t.advantage[node_ok]).astype(np.float32), length
        ),  # fmt: skip
    }
    # pool fields: every token gathered (prompt tokens read clipped garbage), then the prompts'
    # tokens written over (a small set); one source index for the fields of one layout
    prompt_first = _offsets(prompt_len)
    in_prompt = np.arange(int(prompt_first[-1])) - np.repeat(prompt_first[:-1], prompt_len)
    prompt_at = np.repeat(row_first, prompt_len) + in_prompt
    sources: dict = {}
    for name, pad in (("tokens", 0), ("logp", 0), ("version", -1)):
        pool, begin = t.pools[name], t.begin[name]
        key = "tokens" if np.array_equal(begin, t.begin["tokens"]) else name
        if key not in sources:
            sources[key] = runs_of(np.where(is_prompt, 0, begin[node_ok]))
        if len(pool):
            out = np.take(pool, sources[key], mode="clip").astype(FIELDS[name], copy=False)
        else:
            out = np.zeros(total, FIELDS[name])
        out[prompt_at] = pad
        fields[name] = out
    prompt_src = np.repeat(t.prompts.first[row_problem], prompt_len) + in_prompt
    fields["tokens"][prompt_at] = t.prompts.values[prompt_src]
    fields["old_logp"], fields["versions"] = fields.pop("logp"), fields.pop("version")
    return Rows(fields, np.append(row_first, total), sizes, node_first)


def _last_index(dest, length, is_prompt, parent_run) -> np.ndarray:
    """int64[R]: row-local index of each run's last token, or of its nearest non-empty
    ancestor's (a prompt run: prompt_len - 1). Pointer jumping over empty runs (a few steps:
    empty nodes come from branch points at offset 0 or duplicate points)."""
    ptr = np.where(is_prompt | (length > 0), np.arange(len(dest)), parent_run)
    while True:
        nxt = ptr[ptr]
        if np.array_equal(nxt, ptr):
            break
        ptr = nxt
    return dest[ptr] + length[ptr] - 1


def _tree_rows(t: NodeTable, tokens_per_row: int) -> Rows:
    """One row per response with nodes: its nodes in DFS pre-order, weight = path count; a
    response longer than tokens_per_row > 0 is split into rows of whole paths (see the module
    doc), a node's weight then the number of the row's paths through it."""
    n = len(t.parent)
    up = _up_chains(t.parent) if n else np.zeros((0, 1), np.int64)
    # DFS pre-order of each response: sort by (problem, response, root path)
    root_first = _root_first(up)
    keys = [root_first[:, c] for c in range(root_first.shape[1] - 1, -1, -1)]
    order = np.lexsort([*keys, t.response, t.problem]) if n else np.zeros(0, np.int64)
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    # responses with nodes, in order; each node's response index
    resp_key = t.problem * (int(t.response.max(initial=0)) + 1) + t.response
    responses, node_resp = np.unique(resp_key, return_inverse=True)
    resp_problem = np.zeros(len(responses), np.int64)
    resp_problem[node_resp] = t.problem
    prompt_len = t.prompts.lengths[resp_problem]
    whole = prompt_len + np.bincount(node_resp, t.length, len(responses)).astype(np.int64)
    split = (whole > tokens_per_row) if tokens_per_row else np.zeros(len(responses), bool)
    # split responses: greedy groups of their paths
    g_resp, g_local, g_node, g_weight = _split_groups(
        t, rank, node_resp, split, tokens_per_row - prompt_len
    )
    rows_per_resp = np.ones(len(responses), np.int64)
    np.maximum.at(rows_per_resp, g_resp, g_local + 1)
    resp_row = _offsets(rows_per_resp)
    # entries (row, node, weight): whole responses, then the split ones' groups
    whole_node = np.flatnonzero(~split[node_resp])
    e_row = np.concatenate([resp_row[node_resp[whole_node]], resp_row[g_resp] + g_local])
    e_node = np.concatenate([whole_node, g_node])
    e_weight = np.concatenate([t.path_count[whole_node].astype(np.float64), g_weight])
    sort = np.lexsort((rank[e_node], e_row))
    e_row, e_node, e_weight = e_row[sort], e_node[sort], e_weight[sort]
    rows = int(resp_row[-1])
    row_resp = np.repeat(np.arange(len(responses)), rows_per_resp)
    # in-row node ids (1..K; 0 is the prompt) and each entry's parent's entry
    per_row = np.bincount(e_row, minlength=rows)
    e_first = _offsets(per_row)
    node_id = np.arange(len(e_row)) - e_first[e_row] + 1
    e_key = e_row * max(n, 1) + rank[e_node]

    def entry_of(row, nodes):  # the entry of (row, node) for nodes in that row
        return np.searchsorted(e_key, row * max(n, 1) + rank[nodes])

    parent = t.parent[e_node]
    parent_entry = np.where(parent >= 0, entry_of(e_row, np.maximum(parent, 0)), -1)
    # subtree sizes: each entry counts once for itself and for every ancestor in its row
    sizes_e = np.ones(len(e_row), np.int64)
    for d in range(1, up.shape[1]):
        anc = up[e_node, d]
        has = anc >= 0
        np.add.at(sizes_e, entry_of(e_row[has], anc[has]), 1)
    # runs: per row its prompt, then its entries; the prompt's size is the row's node count
    run_row, is_prompt = _interleave_prompts(e_row, rows)
    run_of_entry = np.flatnonzero(~is_prompt)
    prompt_run = np.flatnonzero(is_prompt)
    node = np.full(len(run_row), -1, np.int64)
    node[run_of_entry] = e_node
    ids = np.zeros(len(run_row), np.int64)
    ids[run_of_entry] = node_id
    weight = np.zeros(len(run_row))
    weight[run_of_entry] = e_weight
    parent_run = prompt_run[run_row]
    parent_run[run_of_entry] = np.where(
        parent_entry >= 0, run_of_entry[np.maximum(parent_entry, 0)], prompt_run[e_row]
    )
    sizes = np.zeros(len(run_row), np.int64)
    sizes[run_of_entry] = sizes_e
    sizes[prompt_run] = per_row + 1
    return _materialise(t, resp_problem[row_resp], run_row, is_prompt, node, ids, weight,
                        parent_run, sizes, _offsets(per_row + 1))  # fmt: skip


def _split_groups(t, rank, node_resp, split, room):
    """The greedy path groups of the split responses (split_paths in tests/reference_packed.py)
    as (response, group index within it, node, weight) per (group, node) pair, weight the
    number of the group's paths through the node (float64); room int64[responses]: tokens a row
    has for nodes (the budget minus the prompt)."""
    p = t.paths
    empty = np.zeros(0, np.int64)
    nonempty = np.flatnonzero(p.lengths > 0)
    chosen = nonempty[split[node_resp[p.values[p.first[nonempty]]]]]
    if not len(chosen):
        return empty, empty, empty, np.zeros(0)
    # the chosen paths by response, then by the DFS rank of their leaf (stable)
    leaf = p.values[p.first[chosen + 1] - 1]
    chosen = chosen[np.lexsort((rank[leaf], node_resp[p.values[p.first[chosen]]]))]
    resp = node_resp[p.values[p.first[chosen]]]
    lengths = p.lengths[chosen]
    index = np.repeat(p.first[chosen] - _offsets(lengths)[:-1], lengths) + np.arange(lengths.sum())
    nodes = p.values[index]  # the chosen paths' nodes, path after path
    width = int(lengths.max())
    mat = np.full((len(chosen), width), -1, np.int64)
    mat[np.arange(width) < lengths[:, None]] = nodes
    size = np.where(mat >= 0, t.length[np.maximum(mat, 0)], 0)
    alone = size.sum(1)
    # a path adds what it does not share with the previous path of its response (paths in DFS
    # order of their leaves: no earlier path shares more with it)
    same = (mat[1:] == mat[:-1]) & (mat[1:] >= 0) & (resp[1:] == resp[:-1])[:, None]
    shared = np.zeros(len(chosen), np.int64)
    shared[1:] = (np.cumprod(same, axis=1) * size[1:]).sum(1)
    cum = np.cumsum(alone - shared)
    # per response its paths [lo, hi); a group from path s takes paths k while
    # alone[s] + cum[k] - cum[s] fits the room (cum is nondecreasing)
    bounds = np.flatnonzero(np.r_[True, resp[1:] != resp[:-1], True])
    lo, hi = bounds[:-1], bounds[1:]
    is_start = np.zeros(len(chosen), bool)
    s = lo.copy()
    active = s < hi
    while active.any():  # one step per group index (the most rows one response splits into)
        is_start[s[active]] = True
        at = np.minimum(s, len(chosen) - 1)
        limit = cum[at] - alone[at] + room[resp[lo]]
        nxt = np.clip(np.searchsorted(cum, limit, side="right"), s + 1, hi)
        s = np.where(active, nxt, s)
        active = s < hi
    group = np.cumsum(is_start) - 1
    local = group - group[lo][np.repeat(np.arange(len(lo)), hi - lo)]
    # (group, node) pairs with the number of the group's paths through the node
    n = max(len(rank), 1)
    uniq, weight = np.unique(np.repeat(group, lengths) * n + nodes, return_counts=True)
    g, node = np.divmod(uniq, n)
    starts = np.flatnonzero(is_start)
    return resp[starts][g], local[starts][g], node, weight.astype(np.float64)
