"""REFERENCE (tests only): the former host implementation of tree values and advantages, one
problem at a time in numpy float64. The package runs attnrl_jax.rl.tree (jitted tree_values);
tests/test_rl_tree.py checks both agree.

One problem's branching tree, node values and TreeRL-style advantages (ALGORITHM.md section 5).

Host-side numpy over one problem (G initial responses plus their graded continuations); it runs once
per problem per step and costs microseconds.

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

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from attnrl_jax.rl.tree import (  # noqa: F401 (re-exported for the tests)
    ORIGINAL,
    Continuation,
    ProblemTree,
    Response,
    Segment,
    TrainingPath,
)


# The data types are the package's own (only the algorithm below is the former host code).
@dataclass
class _Node:
    """Mutable node while building; leaf statistics accumulate bottom-up."""

    response: int
    parent: int  # index into the problem's node list, -1 = root
    start: int
    tokens: np.ndarray
    branch: int = ORIGINAL
    continuation: int = ORIGINAL
    leaf_sum: float = 0.0
    leaves: int = 0


def _groups(resp: Response, merge: bool) -> list[tuple[int, list[tuple[int, int, float]]]]:
    """Branching groups in offset order: (offset, [(branch, continuation, reward), ...])."""
    order = sorted(
        (i for i in range(len(resp.branch_points)) if resp.continuations[i]),
        key=lambda i: resp.branch_points[i],
    )
    groups: list[tuple[int, list[tuple[int, int, float]]]] = []
    for i in order:
        members = [(i, k, float(c.reward)) for k, c in enumerate(resp.continuations[i])]
        if merge and groups and groups[-1][0] == resp.branch_points[i]:
            groups[-1][1].extend(members)
        else:
            groups.append((resp.branch_points[i], members))
    return groups


def _add_response(
    nodes: list[_Node], j: int, resp: Response, merge: bool
) -> list[tuple[list[int], int, int, float]]:
    """Append response j's nodes; return its leaf paths (node ids, branch, continuation, reward)."""
    groups = _groups(resp, merge)
    tokens = np.asarray(resp.tokens, dtype=np.int32)
    bounds = [0] + [off for off, _ in groups] + [len(tokens)]
    chain: list[int] = []
    for i in range(len(groups) + 1):
        nodes.append(
            _Node(j, chain[-1] if chain else -1, bounds[i], tokens[bounds[i] : bounds[i + 1]])
        )
        chain.append(len(nodes) - 1)
    leaves = [(list(chain), ORIGINAL, ORIGINAL, float(resp.reward))]
    for g, (off, members) in enumerate(groups):  # group g hangs under S_g
        for branch, k, reward in members:
            cont = np.asarray(resp.continuations[branch][k].tokens, dtype=np.int32)
            nodes.append(_Node(j, chain[g], off, cont, branch, k))
            leaves.append((chain[: g + 1] + [len(nodes) - 1], branch, k, reward))
    return leaves


def build_tree(responses: Sequence[Response], merge_duplicates: bool = True) -> ProblemTree:
    """Values, advantages, packed segments and training paths of one problem.

    V(s) = mean leaf reward below s, V(root) = mean over all leaves (unexpanded responses included),
    A(s) = ((V(s) - V(root)) + (V(s) - V(parent))) / sqrt(|leaves(s)|) with V(parent) = V(root) for
    children of the root.
    """
    nodes: list[_Node] = []
    leaf_paths: list[tuple[list[int], int, int, float]] = []
    root_sum, root_leaves = 0.0, 0
    for j, resp in enumerate(responses):
        if not any(resp.continuations):  # unexpanded: a leaf under the root, never trained
            root_sum, root_leaves = root_sum + float(resp.reward), root_leaves + 1
            continue
        for path in _add_response(nodes, j, resp, merge_duplicates):
            leaf_paths.append(path)
            root_sum, root_leaves = root_sum + path[3], root_leaves + 1
            for n in path[0]:
                nodes[n].leaf_sum += path[3]
                nodes[n].leaves += 1
    if root_leaves == 0:
        raise ValueError("a problem needs at least one response")
    v_root = root_sum / root_leaves

    segments: list[Segment] = []
    for n in nodes:
        v = n.leaf_sum / n.leaves
        v_parent = v_root if n.parent < 0 else segments[n.parent].value
        adv = ((v - v_root) + (v - v_parent)) / math.sqrt(n.leaves)
        segments.append(
            Segment(
                n.response, n.parent, n.start, n.tokens, n.branch, n.continuation, v, n.leaves, adv
            )
        )

    segments = tuple(segments)
    paths = [
        TrainingPath(segments[ids[0]].response, branch, k, tuple(ids), reward, segments)
        for ids, branch, k, reward in leaf_paths
    ]
    return ProblemTree(v_root, segments, tuple(paths))
