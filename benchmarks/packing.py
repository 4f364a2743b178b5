"""Tree-packed vs per-path training: tokens processed and time of one training step's updates.

Problems shaped like the paper's trees, scaled down: G responses per problem, every response
expanded at 2 branch points (after 1/3 and 2/3 of it) with T = 2 continuations each, so a
response gives 5 paths that share their first third (ALGORITHM.md section 5). Both layouts run
the same `run_updates` (same mini-batches of problems, micro-batches of 8 rows); the time is the
median over rounds after a compile round, the two layouts alternating so load drift hits both.
--tokens_per_row N: padding-free rows of N tokens, tree rows longer than N split into rows of
whole paths (packed.tree_rows); N must hold prompt + response (one path).

    python benchmarks/packing.py --hidden 256 --layers 4 --response 384 --json packing.json
    python benchmarks/packing.py --tokens_per_row 256 --json packing_split.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import numpy as np

from attnrl_jax.models.config import ModelConfig
from attnrl_jax.models.lm import init_params
from attnrl_jax.rl.loss import LossConfig
from attnrl_jax.rl.packed import TrainProblem, tokens_processed
from attnrl_jax.rl.settings import OptimConfig
from attnrl_jax.rl.tree import Continuation, Response, build_tree
from attnrl_jax.rl.update import make_optimizer, row_length_bucket, run_updates


def problems(num, group, prompt, response, vocab, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(num):
        responses = []
        for g in range(group):
            toks = rng.integers(1, vocab, response)
            points = (response // 3, 2 * response // 3)
            conts = tuple(
                tuple(
                    Continuation(rng.integers(1, vocab, response - b), float(rng.integers(2)))
                    for _ in range(2)
                )
                for b in points
            )
            responses.append(Response(toks, float(g % 2), points, conts))
        tree = build_tree(responses)
        logp = tuple(np.full(len(s.tokens), -1.0, np.float32) for s in tree.segments)
        vers = tuple(np.zeros(len(s.tokens), np.int32) for s in tree.segments)
        out.append(TrainProblem(rng.integers(1, vocab, prompt).astype(np.int32), tree, logp, vers))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--problems", type=int, default=2)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--prompt", type=int, default=48)
    parser.add_argument("--response", type=int, default=192)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens_per_row", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    cfg = ModelConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=2 * args.hidden,
        num_layers=args.layers,
        num_heads=4,
        num_kv_heads=2,
        head_dim=args.hidden // 4,
    )
    data = problems(args.problems, args.group, args.prompt, args.response, args.vocab)
    optim = OptimConfig()
    params = init_params(cfg, jax.random.key(0))
    times = {"tree": [], "path": []}
    budget = row_length_bucket(args.tokens_per_row) if args.tokens_per_row else 0  # run_updates'
    for r in range(args.rounds + 1):
        for packing in times:
            p = jax.tree.map(lambda x: x.copy(), params)
            state = make_optimizer(optim).init(p)
            start = time.perf_counter()
            p, _, m = run_updates(
                p, state, None, data, cfg=cfg, loss=LossConfig(kl_weight=0.0), optim=optim,
                packing=packing, minibatch_problems=args.problems, microbatch_rows=8,
                tokens_per_row=args.tokens_per_row,
            )  # fmt: skip
            jax.block_until_ready(p)
            if r:
                times[packing].append(time.perf_counter() - start)
    result = {
        "device": str(jax.devices()[0].platform),
        "args": vars(args),
        "tokens": {k: tokens_processed(data, k, budget) for k in times},
        "median_s": {k: statistics.median(v) for k, v in times.items()},
    }
    result["tokens_saved"] = 1 - result["tokens"]["tree"] / result["tokens"]["path"]
    result["speedup"] = result["median_s"]["path"] / result["median_s"]["tree"]
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
