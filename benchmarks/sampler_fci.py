"""FCI inside the sampler (SamplingOptions.fci) against the scoring forward it would replace.

    python benchmarks/sampler_fci.py [--models small,medium] [--batch 16] [--prompt_len 64]
        [--new_tokens 256] [--step_tokens 32] [--max_steps 256] [--dtype float32]
        [--layers N] [--repeats 3] [--json OUT]

For each random model (the shapes of benchmarks/sampler.py): `batch` prompts of prompt_len random
tokens, each sampled once with new_tokens new tokens (EOS disabled, temperature 1, full
vocabulary). The "\\n\\n" separators are the first vocab_size / step_tokens ids, so with the
near-uniform sampling of a random model a step is about step_tokens tokens long. Timed, the four
calls alternating in every round so that machine noise hits all of them, best of --repeats after
a warm-up (which also compiles):

- sample: the sampler without the option; sample_fci: with it (max_steps step slots);
- score_fci: the scoring forward with FCI over the same (prompt, response) pairs (batch_size =
  batch), i.e. what the trainer runs for the initial responses today; score_plain: the same
  forward without FCI (log-probs and entropies only).

In-sampler FCI replaces score_fci when nothing else needs the scoring forward (then the saving is
score_fci - (sample_fci - sample)), and score_fci - score_plain when the forward still runs for
log-probs / entropies. The rows also report how many responses the option could score exactly
and the largest relative difference of those from the scoring forward's FCI. Times are the best
of the rounds (seconds per call; ms per generated token for the sampler); fci/plain is the
median over rounds of sample_fci / sample, saved_s the median of score_fci - (sample_fci -
sample): what a training step saves per such batch when the scoring forward is skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sampler import model_config  # noqa: E402

from attnrl_jax.models import init_params  # noqa: E402
from attnrl_jax.sampling import Request, SamplerFci, SamplingOptions, sample  # noqa: E402
from attnrl_jax.scoring.forward import ScoringConfig, score_sequences  # noqa: E402
from attnrl_jax.scoring.steps import SeparatorIds  # noqa: E402


def run(args, name: str) -> list[dict]:
    cfg = model_config(name, args.dtype, args.layers)
    params = init_params(cfg, jax.random.key(0))
    rng = np.random.default_rng(0)
    prompts = rng.integers(0, cfg.vocab_size, (args.batch, args.prompt_len)).tolist()
    seps_ids = tuple(range(cfg.vocab_size // args.step_tokens))
    seps = SeparatorIds(double_newline=seps_ids, newline=seps_ids, think_end=())
    option = SamplerFci(seps, max_steps=args.max_steps)
    requests = [Request(p) for p in prompts]
    base = dict(max_new_tokens=args.new_tokens, temperature=1.0, seed=0)
    samples = {}

    def call_sample(fci):
        samples[fci] = sample(
            params, cfg, requests, SamplingOptions(**base, fci=option if fci else None)
        )
        assert all(len(s.token_ids) == args.new_tokens for s in samples[fci])
        rows = [s.fci_row for s in samples[fci] if s.fci_row is not None]
        return rows[0].call.scores if rows else None  # the FCI finish runs async: timed too

    def call_score(with_fci, fci_run=False):
        # timed on the plain run's tokens; checked on the FCI run's own tokens (on a GPU the two
        # runs may sample differently: bf16 reductions are not bitwise reproducible)
        responses = [s.token_ids for s in samples[fci_run]]
        config = ScoringConfig(with_fci=with_fci)
        return score_sequences(params, cfg, config, prompts, responses, seps, args.batch)

    calls = {
        "sample": lambda: call_sample(False),
        "sample_fci": lambda: call_sample(True),
        "score_fci": lambda: call_score(True),
        "score_plain": lambda: call_score(False),
    }
    times: dict[str, list[float]] = {k: [] for k in calls}
    compile_s = {}
    for round_ in range(args.repeats + 1):
        for key, fn in calls.items():
            start = time.perf_counter()
            out = fn()
            jax.block_until_ready(out) if out is not None else None
            elapsed = time.perf_counter() - start
            if round_ == 0:
                compile_s[key] = elapsed
            else:
                times[key].append(elapsed)
    best = {k: min(v) for k, v in times.items()}
    median = {k: float(np.median(v)) for k, v in times.items()}
    # Paired per round (the same machine state): the option's cost and what it replaces.
    ratio = float(np.median(np.divide(times["sample_fci"], times["sample"])))
    saved = float(np.median(np.subtract(times["score_fci"], times["sample_fci"]) + times["sample"]))
    for k in calls:
        compile_s[k] -= best[k]

    scored = call_score(True, fci_run=True)
    exact = [
        (s.fci, r.fci) for s, r in zip(samples[True], scored, strict=True) if s.fci is not None
    ]
    rel = max(
        (float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30)) for a, b in exact),
        default=float("nan"),
    )
    tokens = args.batch * args.new_tokens
    pairs = zip(samples[True], scored, strict=True)
    counts = [r.layout.num_steps for s, r in pairs if s.fci is not None]
    steps = float(np.mean(counts)) if counts else float("nan")
    extra = best["sample_fci"] - best["sample"]
    print(
        f"{name:<7} {cfg.num_layers:>3} {args.batch:>5} {args.new_tokens:>6} {steps:>6.1f} "
        f"{1e3 * best['sample'] / tokens:>9.3f} {1e3 * best['sample_fci'] / tokens:>9.3f} "
        f"{extra:>8.3f} {best['score_fci']:>9.3f} {best['score_plain']:>9.3f} "
        f"{len(exact):>3}/{len(scored):<3} {rel:.1e}  {ratio:.3f}x {saved:>8.3f}",
        flush=True,
    )
    params_row = dict(
        model=name,
        layers=cfg.num_layers,
        hidden=cfg.hidden_size,
        vocab=cfg.vocab_size,
        batch=args.batch,
        prompt_len=args.prompt_len,
        new_tokens=args.new_tokens,
        mean_steps=round(float(steps), 2),
        max_steps=args.max_steps,
        dtype=args.dtype,
        device=jax.devices()[0].device_kind,
        repeats=args.repeats,
    )
    values = [
        ("sample", "ms_per_generated_token", 1e3 * best["sample"] / tokens, "ms"),
        ("sample_fci", "ms_per_generated_token", 1e3 * best["sample_fci"] / tokens, "ms"),
        ("sample_fci", "extra_s_per_call", extra, "s"),
        ("sample_fci", "overhead_ratio_paired_median", ratio, "x"),
        ("sample_fci", "saved_s_if_no_scoring_forward_paired_median", saved, "s"),
        ("score_fci", "time_per_call", best["score_fci"], "s"),
        ("score_plain", "time_per_call", best["score_plain"], "s"),
        ("sample_fci", "exact_rows", len(exact), "rows"),
        ("sample_fci", "max_rel_diff_vs_scoring", rel, "relative"),
    ]
    values += [(k, "median_time_per_call", v, "s") for k, v in median.items()]
    values += [(k, "compile_time", v, "s") for k, v in compile_s.items()]
    return [
        dict(benchmark="sampler_fci", system=system, params=params_row, metric=metric)
        | dict(value=round(value, 6), unit=unit)
        for system, metric, value, unit in values
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="small,medium")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prompt_len", type=int, default=64)
    parser.add_argument("--new_tokens", type=int, default=256)
    parser.add_argument("--step_tokens", type=int, default=32)
    parser.add_argument("--max_steps", type=int, default=256)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--layers", type=int, help="override the models' layer count")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the rows here as a JSON list")
    args = parser.parse_args(argv)
    print(
        f"# jax {jax.__version__} ({jax.default_backend()}, {jax.devices()[0].device_kind}), "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        flush=True,
    )
    print(
        "model   layers batch tokens  steps  ms/tok  ms/tok+fci  extra_s  score_fci "
        "score_plain exact max_rel  fci/plain saved_s",
        flush=True,
    )
    rows = []
    for name in args.models.split(","):
        rows += run(args, name)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
