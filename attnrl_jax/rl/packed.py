"""Training rows from problem trees: per-path rows or tree-packed rows, and their log-probs.

Two layouts of the same training data (ALGORITHM.md section 5), both fed to one jitted function:

- "path": one row per root-to-leaf path, prompt + path tokens; every path token has weight 1.
  A shared first segment is processed once per path through it (five times for 2 x 2 branching).
- "tree": one row per expanded response, holding the prompt and every segment of that response's
  tree once, in DFS pre-order (so parents come before children).
  Each token has weight = its segment's path count, so the weighted token sums (loss, gradient,
  denominator) equal the per-path ones exactly.
- "tree" under a token budget (`train.tokens_per_row`): a response whose tree row would be
  longer is split into several tree rows, each a root-connected piece (the prompt, a set of whole
  leaf paths and their ancestors, grouped greedily in DFS order of the leaves). A segment's
  weight in a row is the number of that row's paths through it, so its weights sum over rows to
  its path count and the weighted sums stay exact; a shared prefix is repeated once per row
  holding it, not once per path. A budget as large as the tree gives the unsplit row; one
  path's length gives about one row per path. Every path must fit the budget alone (as per-path
  rows must).

Attention in a packed row follows the tree: a token attends to itself and earlier tokens of its
own node and to every token of its ancestors (the prompt is everyone's ancestor). A row carries
node ids per token (numbered in DFS pre-order) and a small node-ancestor matrix [K, K]; the mask
is `ancestor[node[i], node[j]] and j <= i` (ancestors are always placed before their
descendants, so this is causal), built per query chunk from each node's DFS interval
(`attention.tree_mask`), never as a T x T array. Position ids restart at each node's place in
its path (prompt_len + start), so every token sees exactly the positions and context it has in
its per-path row. The first token of a node is predicted from the last token of its nearest
non-empty ancestor, not from the token before it in the row: rows carry `predictor`, the index
each token's distribution is read from. A path row is the special case K = 1, predictor =
index - 1.

Why one row per response rather than one per problem: segments of different responses share
only the prompt, so per-response rows cost one extra prompt copy per response and keep rows short.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from attnrl_jax.buckets import largest_divisor
from attnrl_jax.models.attention import tree_attend
from attnrl_jax.models.config import ModelConfig
from attnrl_jax.models.lm import Params, forward_hidden
from attnrl_jax.rl.row_build import PACKINGS, build_rows
from attnrl_jax.rl.rows import ROW_FIELDS, Row, Rows, is_dfs_numbered, pack_rows, stack_rows
from attnrl_jax.rl.tree import ProblemTree
from attnrl_jax.scoring.logprobs import token_logprobs_entropies

__all__ = [
    "PACKINGS",
    "ROW_FIELDS",
    "Row",
    "Rows",
    "TrainProblem",
    "is_dfs_numbered",
    "make_rows",
    "pack_rows",
    "path_rows",
    "row_logprobs",
    "stack_rows",
    "tokens_processed",
    "tree_rows",
]


@dataclass(frozen=True, eq=False)
class TrainProblem:
    """One problem's tree with the behaviour log-prob and policy version of every segment token.

    segment_logp[i], segment_version[i]: float32[L_i], int32[L_i] for tree.segments[i]: prefix
    (original-response) tokens carry the scoring pass values of the policy that sampled them,
    continuation tokens the sampler's values of the policy that sampled the continuation.
    """

    prompt_ids: np.ndarray  # int32[P]
    tree: ProblemTree
    segment_logp: tuple[np.ndarray, ...]
    segment_version: tuple[np.ndarray, ...]


def path_rows(problem: TrainProblem) -> Rows:
    """One row per training path; each path token weight 1 (prompt tokens weight 0)."""
    return build_rows([problem], "path")


def tree_rows(problem: TrainProblem, tokens_per_row: int = 0) -> Rows:
    """One row per expanded response with its segments once, weight = path count.

    Nodes are numbered, and their tokens placed, in DFS pre-order (so parents come before
    children, and each node's subtree is the id interval `attention.tree_mask` reads).
    tokens_per_row > 0: a response whose row would be longer is split into several rows of at
    most that many tokens (whole paths, greedily in DFS order of their leaves); raises
    ValueError when one path alone does not fit.
    """
    return build_rows([problem], "tree", tokens_per_row)


def make_rows(problems: Sequence[TrainProblem], packing: str, tokens_per_row: int = 0) -> Rows:
    """Rows of `problems` in layout `packing`, built from the trees' flat node arrays for all
    problems at once (rl/row_build.py). tokens_per_row > 0: tree rows longer than that are
    split (tree_rows); a path longer than that is one ValueError naming both."""
    return build_rows(problems, packing, tokens_per_row)


@partial(jax.jit, static_argnames=("cfg", "logit_chunk", "query_chunk"))
def row_logprobs(
    params: Params,
    batch: dict,
    temperature: jax.Array | float = 1.0,
    *,
    cfg: ModelConfig,
    logit_chunk: int = 256,
    query_chunk: int = 512,
) -> tuple[jax.Array, jax.Array]:
    """Log-probs and entropies [B, T] of each row token under `params` (0 at node-0 tokens).

    batch: the stack_rows arrays (tokens, positions, nodes, predictor, ancestors used).
    temperature: float32 scalar (traced); the distribution is softmax(logits / temperature), the
    one the behaviour log-probs were taken under. query_chunk: rows longer than this run
    attention in query chunks (the largest divisor of the length up to query_chunk), each
    recomputed in the backward pass, so attention memory grows linearly in the row length.
    """
    length = batch["tokens"].shape[1]
    chunk = None if length <= query_chunk else largest_divisor(length, query_chunk)
    attend = tree_attend(batch["nodes"], batch["ancestors"], chunk)
    hidden, _ = forward_hidden(params, cfg, batch["tokens"], batch["positions"], attend)
    # token_logprobs_entropies reads token t's distribution from hidden[t - 1]; putting each
    # token's predictor state there makes it read hidden[predictor[t]].
    source = jnp.take_along_axis(hidden, batch["predictor"][:, :, None], axis=1)
    shifted = jnp.roll(source, -1, axis=1)
    valid = batch["nodes"] >= 0
    chunk = largest_divisor(length, logit_chunk)
    return token_logprobs_entropies(params, shifted, batch["tokens"], valid, chunk, temperature)


def tokens_processed(
    problems: Sequence[TrainProblem], packing: str, tokens_per_row: int = 0
) -> int:
    """Row tokens (prompts included) a layout makes the model process (tree rows split at
    tokens_per_row > 0, as make_rows)."""
    return int(make_rows(problems, packing, tokens_per_row).lengths.sum())
