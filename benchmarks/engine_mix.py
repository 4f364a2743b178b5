"""The rollout engine on an RL-like length mix: continuous batching against equal lengths and
against the lock-step sampler; KV memory against what the live rows need.

    python benchmarks/engine_mix.py [--quick] [--model small] [--requests 192] [--slots 64]
        [--max_budget 512] [--prompt_len 64] [--decode_chunk 32] [--page_size 16]
        [--systems continuous,equal,lockstep] [--dtype float32] [--repeats 2]
        [--kv_pages N] [--short_warmup T] [--hbm_gbps G] [--decode_attention gathered,ragged]
        [--ragged_chunk 64] [--json OUT]

The mix (seeded): --requests prompts of --prompt_len random tokens, one sample each, EOS off;
budgets heavy-tailed like a distilled reasoning model's response lengths: a fifth at
--max_budget, the rest log-normal around max/8 (clipped to [max/64, max]). Systems:

    continuous  the continuous engine on the mix
    equal       the same engine, every request with budget = mean of the mix (the same total
                tokens, so its tokens/s is the ceiling the mix is measured against)
    lockstep    the lock-step sampler (scheduler="lockstep", batches of --slots rows) on the mix

Metrics per system: useful (generated) tokens/s over the whole call (best of --repeats after a
warm-up call that compiles; programs compiled during the timed calls are counted, 0 unless
--short_warmup missed an admission size); slot utilisation = useful token-steps / slot-steps, a
count (the engine's EngineStats; for lock-step, each batch runs its longest budget in every
row); for the engines, peak KV positions allocated (pages x page size) against the peak the
live rows need (each request's context once) and the worst ratio of the two over chunk ends.
--decode_attention: the engine's decode attention readers to run (SamplerConfig.decode_attention);
with two, the continuous and equal systems run once per reader (named system/reader) in the
same process, so their ratio is measured under the same load. Printed ratios: continuous /
equal and continuous / lockstep tokens/s. With --hbm_gbps (a
GPU's bandwidth), also the fraction of the bandwidth floor: every decode step reads the weights
and the live KV, so the floor time is (steps x weight bytes + sum over steps of live KV bytes)
/ bandwidth.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from attnrl_jax.buckets import powers_of_two, round_up  # noqa: E402
from attnrl_jax.models import init_params  # noqa: E402
from attnrl_jax.sampling import Buckets, Request, SamplerConfig, SamplingOptions, sample  # noqa: E402
from attnrl_jax.sampling.scheduler import EngineStats  # noqa: E402
from benchmarks.sampler import model_config  # noqa: E402

QUICK = dict(requests=48, slots=16, max_budget=64, prompt_len=16, repeats=1, model="small")


def budget_mix(n: int, max_budget: int, seed: int = 0) -> list[int]:
    """Heavy-tailed budgets: a fifth at max_budget, the rest log-normal around max/8."""
    rng = np.random.default_rng(seed)
    short = rng.lognormal(np.log(max_budget / 8), 0.8, size=n)
    budgets = np.clip(np.round(short), max(1, max_budget // 64), max_budget).astype(int)
    budgets[rng.permutation(n)[: n // 5]] = max_budget
    return budgets.tolist()


def lockstep_utilisation(budgets: list[int], rows: int) -> float:
    """Useful / slot steps of lock-step batches of `rows` rows in request order (what the
    lock-step sampler does when every context has the same length): each batch runs its
    longest budget, padded to `rows` rows."""
    steps = sum(max(budgets[i : i + rows]) * rows for i in range(0, len(budgets), rows))
    return sum(budgets) / steps


def run_system(
    model_params, cfg, prompts, budgets, config, repeats, short_warmup=0
) -> tuple[float, EngineStats, int]:
    """(best seconds, its EngineStats, programs compiled during the timed calls).

    short_warmup > 0: the warm-up call caps every budget but the longest at this many tokens
    (the same cache length, most admission sizes; far shorter than the mix itself)."""
    options = SamplingOptions(max_new_tokens=max(budgets), temperature=1.0, seed=0)

    def call(budgets) -> tuple[float, EngineStats]:
        requests = [Request(p, max_new_tokens=b) for p, b in zip(prompts, budgets, strict=True)]
        stats = EngineStats()
        start = time.perf_counter()
        samples = sample(model_params, cfg, requests, options, config, stats=stats)
        elapsed = time.perf_counter() - start
        assert [len(s.token_ids) for s in samples] == budgets, "EOS is off: every budget is used"
        return elapsed, stats

    warm = list(budgets)
    if short_warmup:
        longest = int(np.argmax(warm))
        warm = [b if i == longest else min(b, short_warmup) for i, b in enumerate(warm)]
    call(warm)  # compiles
    compiles = []

    def listener(event, duration, **_):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        best = min((call(budgets) for _ in range(repeats)), key=lambda r: r[0])
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    return *best, len(compiles)


def bandwidth_floor_s(cfg, prompt_len: int, budgets: list[int], steps: int, gbps: float) -> float:
    """Seconds the decode steps need at least: weights once per step plus every live row's KV
    (keys and values of every layer) once per step it decodes."""
    itemsize = np.dtype(cfg.compute_dtype).itemsize
    weight_bytes = sum(x.size for x in jax.tree.leaves(_shapes(cfg))) * itemsize
    per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * itemsize
    kv_token_steps = sum(b * prompt_len + b * (b - 1) / 2 for b in budgets)
    return (steps * weight_bytes + kv_token_steps * per_token) / (gbps * 1e9)


def _shapes(cfg):
    return jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small preset: " + str(QUICK))
    parser.add_argument("--model", default="small")
    parser.add_argument("--layers", type=int)
    parser.add_argument("--requests", type=int, default=192)
    parser.add_argument("--slots", type=int, default=64)
    parser.add_argument("--max_budget", type=int, default=512)
    parser.add_argument("--prompt_len", type=int, default=64)
    parser.add_argument("--decode_chunk", type=int, default=32)
    parser.add_argument("--page_size", type=int, default=16)
    parser.add_argument("--systems", default="continuous,equal,lockstep")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--kv_pages", type=int, help="SamplerConfig.kv_pages (default: all)")
    parser.add_argument(
        "--short_warmup", type=int, default=0, help="cap the warm-up call's budgets (0: the mix)"
    )
    parser.add_argument("--hbm_gbps", type=float, help="HBM bandwidth for the floor (GPU)")
    parser.add_argument("--decode_attention", default="gathered")
    parser.add_argument("--ragged_chunk", type=int, default=64)
    parser.add_argument("--json", type=Path, help="write the rows here as a JSON list")
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)

    cfg = model_config(args.model, args.dtype, args.layers)
    longest = args.prompt_len + args.max_budget
    cfg = dataclasses.replace(
        cfg, max_position_embeddings=max(cfg.max_position_embeddings, longest)
    )
    params = jax.jit(init_params, static_argnums=0)(cfg, jax.random.key(0))
    rng = np.random.default_rng(1)
    prompts = rng.integers(0, cfg.vocab_size, size=(args.requests, args.prompt_len)).tolist()
    mix = budget_mix(args.requests, args.max_budget)
    total = sum(mix)
    equal = [total // args.requests + (i < total % args.requests) for i in range(args.requests)]
    lengths = powers_of_two(16, longest)
    if lengths[-1] < longest:  # one more bucket: the longest row rounded to whole pages
        lengths += (round_up(longest, args.page_size),)
    buckets = Buckets(rows=powers_of_two(1, args.slots), lengths=lengths)
    base = SamplerConfig(
        buckets,
        decode_chunk=args.decode_chunk,
        page_size=args.page_size,
        query_chunk=None,
        kv_pages=args.kv_pages,
        ragged_chunk=args.ragged_chunk,
    )
    readers = args.decode_attention.split(",")
    print(
        f"# jax {jax.__version__} ({jax.default_backend()}, {jax.devices()[0].device_kind}), "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; {args.requests} "
        f"requests, budgets: mean {total / args.requests:.0f}, max {args.max_budget}, "
        f"{sum(b == args.max_budget for b in mix)} at max; {args.slots} slots",
        flush=True,
    )
    params_row = dict(
        model=args.model,
        layers=cfg.num_layers,
        dtype=args.dtype,
        requests=args.requests,
        slots=args.slots,
        max_budget=args.max_budget,
        mean_budget=round(total / args.requests, 1),
        prompt_len=args.prompt_len,
        decode_chunk=args.decode_chunk,
        page_size=args.page_size,
        decode_attention=args.decode_attention,
        ragged_chunk=args.ragged_chunk,
        device=jax.devices()[0].device_kind,
    )
    rows, speed = [], {}

    def emit(system, metric, value, unit):
        row = dict(benchmark="engine_mix", system=system, params=params_row, metric=metric)
        rows.append(row | dict(value=round(float(value), 4), unit=unit))

    runs = {"lockstep": (mix, dataclasses.replace(base, scheduler="lockstep"))}
    for reader in readers:
        name = "" if len(readers) == 1 else f"/{reader}"
        config = dataclasses.replace(base, decode_attention=reader)
        runs |= {f"continuous{name}": (mix, config), f"equal{name}": (equal, config)}
    systems = [
        s if s == "lockstep" or len(readers) == 1 else f"{s}/{r}"
        for s in args.systems.split(",")
        for r in (readers if s != "lockstep" else [None])
    ]
    print(f"{'system':<20} {'tokens/s':>10} {'utilisation':>11} {'KV alloc/need':>14}")
    for system in systems:
        budgets, config = runs[system]
        if system == "lockstep":
            config = dataclasses.replace(
                config, buckets=dataclasses.replace(buckets, rows=(args.slots,))
            )
        seconds, stats, compiles = run_system(
            params, cfg, prompts, budgets, config, args.repeats, args.short_warmup
        )
        emit(system, "compiles_in_timed_calls", compiles, "programs")
        speed[system] = sum(budgets) / seconds
        emit(system, "useful_tokens_per_s", speed[system], "tokens/s")
        if system == "lockstep":
            utilisation, memory = lockstep_utilisation(budgets, args.slots), ""
        else:
            utilisation = stats.utilisation
            allocated = stats.peak_pages * stats.page_size
            emit(system, "kv_positions_peak", allocated, "positions")
            emit(system, "kv_needed_peak", stats.peak_needed, "positions")
            emit(system, "kv_ratio_worst", stats.worst_ratio, "x")
            memory = f"{allocated}/{stats.peak_needed} (worst {stats.worst_ratio:.2f}x)"
            if args.hbm_gbps:
                steps = stats.slot_steps // args.slots
                floor = bandwidth_floor_s(cfg, args.prompt_len, budgets, steps, args.hbm_gbps)
                emit(system, "bandwidth_floor_fraction", floor / seconds, "fraction")
                memory += f"; {floor / seconds:.1%} of the HBM floor"
        emit(system, "slot_utilisation", utilisation, "fraction")
        print(f"{system:<20} {speed[system]:>10.0f} {utilisation:>11.3f} {memory:>14}", flush=True)
    for reader in readers:
        name = "" if len(readers) == 1 else f"/{reader}"
        for other in (f"equal{name}", "lockstep"):
            if f"continuous{name}" in speed and other in speed:
                ratio = speed[f"continuous{name}"] / speed[other]
                emit(f"continuous{name}", f"speedup_vs_{other.split('/')[0]}", ratio, "x")
                print(f"continuous{name} / {other} tokens/s: {ratio:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
