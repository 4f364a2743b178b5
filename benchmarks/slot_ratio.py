"""Computed token slots / real tokens of one paper-scale training step, with and without
padding-free rows, and tree-packed (whole trees, or split into rows of the token budget) vs
per-path trained tokens (host only: nothing runs on a device, no timing).

Problems are shaped like the paper's (G = 6 responses, every response expanded at N = 2 points
with T = 2 continuations, 1,024-token prompt budget, 8,192-token responses) with heavy-tailed
lengths as RL rollouts have them: log-normal responses (median 3,000 tokens) truncated at the
budget, continuations log-normal too and at most what their prefix leaves of the budget
(RolloutConfig.continuation_budget), prompts 60-400 tokens.

    python benchmarks/slot_ratio.py --json benchmarks/results/slot_ratio.json
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np

from attnrl_jax.rl.packed import TrainProblem, make_rows, pack_rows
from attnrl_jax.rl.tree import Continuation, Response, build_tree
from attnrl_jax.rl.update import row_length_bucket


def lengths(rng, n: int, median: float, budget: int) -> np.ndarray:
    return np.clip(rng.lognormal(math.log(median), 0.8, n), 16, budget).astype(int)


def problems(rng, num: int, group=6, points=2, conts=2, budget=8192) -> list[TrainProblem]:
    out = []
    for _ in range(num):
        responses = []
        for g in range(group):
            n = int(lengths(rng, 1, 3000, budget)[0])
            at = tuple(sorted(int(x) for x in rng.integers(1, n, points)))
            cont = tuple(
                tuple(
                    Continuation(np.ones(int(m), np.int32), float(rng.integers(2)))
                    # prefix + continuation within one response's budget (as the sampler)
                    for m in lengths(rng, conts, 0.6 * (n - b) + 16, budget - b)
                )
                for b in at
            )
            responses.append(Response(np.ones(n, np.int32), float(g % 2), at, cont))
        tree = build_tree(responses)
        logp = tuple(np.zeros(len(s.tokens), np.float32) for s in tree.segments)
        vers = tuple(np.zeros(len(s.tokens), np.int32) for s in tree.segments)
        prompt = np.ones(int(rng.integers(60, 400)), np.int32)
        out.append(TrainProblem(prompt, tree, logp, vers))
    return out


def slots(problems, packing: str, minibatch: int, micro: int, tokens_per_row: int) -> dict:
    """Slots run_updates computes for these problems (its bucketing, rl/update.py)."""
    budget = row_length_bucket(tokens_per_row) if tokens_per_row else 0
    minis = [  # tree rows longer than the budget split into rows of whole paths
        make_rows(problems[i : i + minibatch], packing, budget)
        for i in range(0, len(problems), minibatch)
    ]
    rows = [r for m in minis for r in m]
    real = sum(len(r.tokens) for r in rows)
    if tokens_per_row:
        length = budget
        minis = [pack_rows(m, length) for m in minis]
    else:
        length = row_length_bucket(max(len(r.tokens) for r in rows))
    computed = sum(math.ceil(len(m) / micro) * micro * length for m in minis)
    return {"packing": packing, "tokens_per_row": tokens_per_row, "row_tokens": real,
            "slots": computed, "slot_ratio": computed / real, "row_length": length}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--problems", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    probs = problems(np.random.default_rng(args.seed), args.problems)
    longest_tree = max(len(r.tokens) for r in make_rows(probs, "tree"))
    results = [
        slots(probs, "path", 32, 8, 0),
        slots(probs, "path", 32, 8, 9216),  # the paper config: 1,024 + 8,192
        slots(probs, "tree", 32, 8, 0),
        slots(probs, "tree", 32, 8, row_length_bucket(longest_tree)),  # no tree split
        slots(probs, "tree", 32, 8, 9216),  # trees split into rows of the paper's budget
        slots(probs, "tree", 32, 8, 12288),  # and of a budget 4/3 of it
    ]
    path, tree, split = (results[i]["row_tokens"] for i in (0, 2, 4))
    out = {"problems": args.problems, "seed": args.seed, "rows": results,
           "tree_vs_path_tokens": tree / path, "split_tree_vs_path_tokens": split / path,
           "longest_tree_row": longest_tree}  # fmt: skip
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
