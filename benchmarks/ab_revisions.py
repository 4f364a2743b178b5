"""Side by side: the sampler and the scoring forward of two checkouts of this repository.

    python benchmarks/ab_revisions.py --base /path/to/old/checkout [--new .] [--rounds 3]
        [--json OUT]

A refactor must not make the hot paths slower. Each round runs one fresh worker process per
checkout (base, then new, alternating), so machine drift hits both; a worker imports the
attnrl_jax of its checkout only, compiles every case once, then keeps the best of --repeats
calls. Cases use only the public APIs (`sampling.sample`, `scoring.forward.score_sequences`):

  sample   small / medium model (hidden 256 x 4 layers / 512 x 8, vocab 8192 / 16384, 8:2 heads),
           B prompts of 64 random tokens, 256 new tokens each (EOS off, temperature 1), with and
           without FCI while decoding (steps of 32 tokens)
  score    small model, 4 sequences of 1024 / 2048 tokens (steps of 40), with and without FCI

Reported per case: each checkout's best seconds over all rounds and new / base (below 1: faster).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import platform
import subprocess
import sys
from pathlib import Path

SHAPES = {
    "small": dict(hidden_size=256, num_layers=4, vocab_size=8192),
    "medium": dict(hidden_size=512, num_layers=8, vocab_size=16384),
}
SAMPLE_CASES = [("small", 16), ("small", 64), ("medium", 16), ("medium", 64)]
SCORE_LENGTHS = (1024, 2048)


def worker(repeats: int) -> list[dict]:
    """Times every case in this process (the checkout on sys.path[0])."""
    import time

    import jax
    import numpy as np

    from attnrl_jax.models import ModelConfig, init_params
    from attnrl_jax.sampling import Request, SamplerFci, SamplingOptions, sample
    from attnrl_jax.scoring.forward import ScoringConfig, score_sequences
    from attnrl_jax.scoring.steps import SeparatorIds

    def config(name: str) -> ModelConfig:
        s = SHAPES[name]
        return ModelConfig(
            **s, intermediate_size=4 * s["hidden_size"], num_heads=8, num_kv_heads=2,
            head_dim=s["hidden_size"] // 8,
        )  # fmt: skip

    def best(fn) -> float:
        fn()  # compile
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    seps = SeparatorIds(double_newline=(7,), newline=(7,), think_end=())
    rows = []
    rng = np.random.default_rng(0)
    for name, batch in SAMPLE_CASES:
        cfg = config(name)
        params = init_params(cfg, jax.random.key(0))
        prompts = rng.integers(8, cfg.vocab_size, (batch, 64))
        requests = [Request(p.tolist()) for p in prompts]
        for fci in (False, True):
            option = SamplerFci(seps, max_steps=16) if fci else None
            options = SamplingOptions(max_new_tokens=256, seed=1, fci=option)
            seconds = best(functools.partial(sample, params, cfg, requests, options))
            rows.append({"case": f"sample {name} B={batch}" + (" +fci" if fci else ""),
                         "seconds": seconds})  # fmt: skip
    cfg = config("small")
    params = init_params(cfg, jax.random.key(0))
    for length in SCORE_LENGTHS:
        prompt = rng.integers(8, cfg.vocab_size, 128).tolist()
        response = rng.integers(8, cfg.vocab_size, length - 128)
        response[39::40] = 7  # a separator every 40 tokens
        for fci in (False, True):
            sc = ScoringConfig(with_fci=fci)
            call = functools.partial(
                score_sequences, params, cfg, sc, [prompt] * 4, [response] * 4, seps, batch_size=4
            )
            seconds = best(call)
            rows.append({"case": f"score T={length}" + (" +fci" if fci else ""),
                         "seconds": seconds})  # fmt: skip
    return rows


def run_worker(checkout: Path, repeats: int) -> list[dict]:
    here = str(Path(__file__).resolve().parent)
    code = (
        f"import sys; sys.path[:0] = [{str(checkout)!r}, {here!r}]; import json, ab_revisions; "
        f"print(json.dumps(ab_revisions.worker({repeats})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=checkout, capture_output=True, text=True, check=False
    )
    if out.returncode:
        raise SystemExit(f"worker for {checkout} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, required=True, help="checkout to compare against")
    parser.add_argument("--new", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    best: dict[str, dict[str, float]] = {"base": {}, "new": {}}
    for _ in range(args.rounds):
        for side in ("base", "new"):
            for row in run_worker(getattr(args, side).resolve(), args.repeats):
                case = row["case"]
                best[side][case] = min(best[side].get(case, float("inf")), row["seconds"])
    rows = []
    print(f"{'case':28s} {'base s':>9s} {'new s':>9s} {'new/base':>9s}")
    for case, base in best["base"].items():
        new = best["new"][case]
        rows.append({"case": case, "base_s": base, "new_s": new, "ratio": new / base})
        print(f"{case:28s} {base:9.3f} {new:9.3f} {new / base:9.2f}")
    if args.json:
        import jax

        meta = {
            "date": datetime.date.today().isoformat(),
            "machine": f"{platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores",
            "jax": jax.__version__,
            "command": "python benchmarks/ab_revisions.py " + " ".join(argv or sys.argv[1:]),
        }
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
