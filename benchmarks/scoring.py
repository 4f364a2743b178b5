"""Scoring forward: time and memory with and without FCI, against a materialising reference.

Systems (small model: hidden 256, 4 layers, vocab 8192, GQA 8:2; prompt 128 tokens, then steps
of 40 tokens):
  plain_forward           lm.forward: logits [B, T, V] float32, the same chunked attention
  scoring                 score_batch(with_fci=False): plain forward + chunked log-probs/entropies
  scoring_fci             score_batch(with_fci=True): the same, plus FCI from query chunks
  materialised_reference  full [B, H, T, T] attention per layer and the step matrix W A W^T (the
                          published approach, in JAX), + the same log-probs; checks our FCI

Times come from one process running the systems round-robin (the machine's load drifts, so each
system sees the same conditions); the FCI cost is the median over rounds of the paired
scoring_fci / scoring ratio. Peak memory comes from one fresh process per system: on GPU the
device's peak bytes in use above the inputs; on CPU the peak resident memory above the level
before the first run (/proc/self/clear_refs resets the high-water mark; glibc is told to return
large blocks when freed). Compiled temp bytes are XLA's buffer assignment for the program.

Then, without weights (abstract inputs, `.lower().compile().memory_analysis()` on the default
backend), the compiled memory for the DeepSeek-R1-Distill-Qwen-1.5B shape (bf16) at 8192 tokens,
and FCI's extra temporary memory at 2k/4k/8k/16k tokens (linear in T: at most 2x per doubling).
On XLA:CPU about 5 GB of that temp is the bf16 weights converted to float32 for CPU matmuls.

    python benchmarks/scoring.py --json scoring.json                        # CPU: small model
    python benchmarks/scoring.py --lengths 1024,2048,4096,8192 --real-shape-timing --json gpu.json
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from aot_targets import MODELS as REAL_MODELS  # benchmarks/, the script's dir

from attnrl_jax.models.attention import (
    MASK_VALUE,
    attention_output,
    attention_scores,
    causal_segment_mask,
)
from attnrl_jax.models.config import ModelConfig
from attnrl_jax.models.lm import default_positions, forward, forward_hidden, init_params
from attnrl_jax.scoring.fci import FciConfig, finish_fci, initial_state
from attnrl_jax.scoring.forward import ScoringConfig, score_batch
from attnrl_jax.scoring.logprobs import token_logprobs_entropies

MODELS = {
    "small": ModelConfig(
        vocab_size=8192,
        hidden_size=256,
        intermediate_size=1024,
        num_layers=4,
        num_heads=8,
        num_kv_heads=2,
        head_dim=32,
    ),
    # the real shape (config.json of DeepSeek-R1-Distill-Qwen-1.5B), bf16 weights and compute
    "r1-distill-qwen-1.5b": REAL_MODELS["1.5b"].replace(dtype="bfloat16", param_dtype="bfloat16"),
}
SYSTEMS = ("plain_forward", "scoring", "scoring_fci", "materialised_reference")
PROMPT_LEN = 128
STEP_LEN = 40  # tokens per response step (R1-style responses: about 30-60)
QUERY_CHUNK = 512


def step_ids_for(batch: int, length: int) -> tuple[np.ndarray, int]:
    """A prompt of PROMPT_LEN tokens, then steps of STEP_LEN tokens: step_ids [B, T], S_max."""
    pos = np.arange(length)
    steps = np.where(pos < PROMPT_LEN, 0, 1 + (pos - PROMPT_LEN) // STEP_LEN).astype(np.int32)
    return np.tile(steps, (batch, 1)), 1 << int(steps.max()).bit_length()


@functools.partial(jax.jit, static_argnames=("cfg", "max_steps"))
def materialised_reference(params, tokens, step_ids, think_end_step, *, cfg, max_steps):
    """FCI (mean pooling, delta 4, max) from full attention maps: a = W A W^T per layer."""
    config = FciConfig()
    valid = step_ids >= 0
    segments = valid.astype(jnp.int32)
    one_hot = jax.nn.one_hot(step_ids, max_steps, dtype=jnp.float32)  # [B, T, S]; -1 -> zeros
    w = one_hot / jnp.maximum(one_hot.sum(axis=1, keepdims=True), 1.0)
    steps = jnp.arange(max_steps)
    later = steps[:, None] >= steps[None, :] + config.delta  # [j, k]

    def attend(layer, q, k, v, state):
        index = jnp.arange(q.shape[1])
        mask = causal_segment_mask(segments, segments, index, index)
        probs = jax.nn.softmax(jnp.where(mask, attention_scores(q, k), MASK_VALUE), axis=-1)
        a = jnp.einsum("btj,bhgtu,buk->bhgjk", w, probs, w)  # [B, Hkv, G, S, S]
        y = jnp.sum(jnp.where(later, a, 0.0), axis=-2)
        return attention_output(probs, v), jnp.maximum(state, jnp.max(y, axis=(1, 2)))

    state = initial_state(tokens.shape[0], max_steps)
    hidden, state = forward_hidden(params, cfg, tokens, default_positions(tokens), attend, state)
    logprobs, entropies = token_logprobs_entropies(params, hidden, tokens, valid, 256)
    return logprobs, entropies, finish_fci(state, think_end_step, config, cfg.num_layers)


def system_fn(system: str, cfg: ModelConfig, max_steps: int):
    """(params, tokens, step_ids, think_end_step) -> outputs, for one system."""
    if system == "plain_forward":
        return lambda p, t, s, e: forward(
            p, cfg, t, segment_ids=(s >= 0).astype(jnp.int32), query_chunk=QUERY_CHUNK
        )
    if system == "materialised_reference":
        return functools.partial(materialised_reference, cfg=cfg, max_steps=max_steps)
    config = ScoringConfig(with_fci=system == "scoring_fci", query_chunk=QUERY_CHUNK)
    return functools.partial(score_batch, cfg=cfg, config=config, max_steps=max_steps)


def _proc_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def _inputs(cfg: ModelConfig, length: int, batch: int) -> tuple[tuple, int]:
    """(params, tokens, step_ids, think_end_step) with random weights and tokens, and S_max."""
    step_ids, max_steps = step_ids_for(batch, length)
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, length))
    args = (
        init_params(cfg, jax.random.key(0)),
        jnp.asarray(tokens, jnp.int32),
        jnp.asarray(step_ids),
        jnp.full((batch,), -1, jnp.int32),
    )
    return args, max_steps


def time_systems(systems, model: str, length: int, batch: int, repeats: int) -> dict:
    """Min and median wall time of each system, runs interleaved round-robin (this machine's
    load drifts, so every system sees the same conditions), the median over rounds of the
    scoring_fci / scoring time ratio (a paired comparison), and the FCI each system returns."""
    cfg = MODELS[model]
    args, max_steps = _inputs(cfg, length, batch)
    compiled, out = {}, {}
    for system in systems:
        start = time.perf_counter()
        compiled[system] = jax.jit(system_fn(system, cfg, max_steps)).lower(*args).compile()
        out[system] = {"compile_s": time.perf_counter() - start}
        result = jax.block_until_ready(compiled[system](*args))
        if system in ("scoring_fci", "materialised_reference"):
            out[system]["fci"] = np.asarray(result[-1][0])
    times = {system: [] for system in systems}
    for _ in range(repeats):
        for system in systems:
            start = time.perf_counter()
            jax.block_until_ready(compiled[system](*args))
            times[system].append(time.perf_counter() - start)
    for system in systems:
        out[system].update(
            time_min=min(times[system]), time_median=statistics.median(times[system])
        )
    rounds = zip(times["scoring_fci"], times["scoring"], strict=True)
    out["scoring_fci"]["ratio"] = statistics.median(fci / plain for fci, plain in rounds)
    return out


def measure_memory(system: str, model: str, length: int, batch: int) -> dict:
    """Peak memory of the first run above the level before it (outputs included), and XLA's
    compiled temp bytes.

    Meant for a fresh process (`run_worker`): CPU peaks come from the process's resident-memory
    high-water mark, with glibc made to return large blocks to the system when freed.
    """
    cfg = MODELS[model]
    args, max_steps = _inputs(cfg, length, batch)
    compiled = jax.jit(system_fn(system, cfg, max_steps)).lower(*args).compile()
    device = jax.devices()[0]
    stats = device.memory_stats()
    if stats is None:
        Path("/proc/self/clear_refs").write_text("5")
        base = _proc_kib("VmRSS") * 1024
    else:
        base = stats["bytes_in_use"]
    jax.block_until_ready(compiled(*args))
    if stats is None:
        peak = _proc_kib("VmHWM") * 1024 - base
    else:
        peak = device.memory_stats()["peak_bytes_in_use"] - base
    temp = compiled.memory_analysis().temp_size_in_bytes
    return {"peak_memory_delta": peak, "compiled_temp_bytes": temp}


def compiled_memory(system: str, cfg: ModelConfig, length: int, max_steps: int):
    """XLA's memory analysis of one system on abstract inputs (no weights are created)."""
    params = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
    ints = jax.ShapeDtypeStruct((1, length), jnp.int32)
    think = jax.ShapeDtypeStruct((1,), jnp.int32)
    lowered = jax.jit(system_fn(system, cfg, max_steps)).lower(params, ints, ints, think)
    return lowered.compile().memory_analysis()


def run_worker(system: str, model: str, length: int, batch: int) -> dict:
    """`measure_memory` in a fresh process, so that the peak belongs to this system alone."""
    cmd = [sys.executable, __file__, "--worker", system, "--model", model]
    cmd += ["--lengths", str(length), "--batch", str(batch)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}  # large frees go back to the OS
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def row(system: str, params: dict, metric: str, value, unit: str) -> dict:
    return dict(
        benchmark="scoring", system=system, params=params, metric=metric, value=value, unit=unit
    )


def bench_small(model: str, length: int, batch: int, systems, repeats: int, where: str) -> list:
    """Time (interleaved, one process) and peak memory (one process per system) at one length."""
    params = {"model": model, "tokens": length, "batch": batch, "device": where}
    results = time_systems(systems, model, length, batch, repeats)
    rows = []
    for system in systems:
        r = results[system] | run_worker(system, model, length, batch)
        print(
            f"{model} T={length} {system}: min {r['time_min']:.3f} s, median "
            f"{r['time_median']:.3f} s, peak +{r['peak_memory_delta'] / 2**20:.0f} MiB, "
            f"compiled temp {r['compiled_temp_bytes'] / 2**20:.0f} MiB",
            flush=True,
        )
        for metric, unit in (("time_median", "s"), ("time_min", "s"), ("compile_s", "s")):
            rows.append(row(system, params, metric, r[metric], unit))
        for metric in ("peak_memory_delta", "compiled_temp_bytes"):
            rows.append(row(system, params, metric, r[metric], "bytes"))
    ratio = results["scoring_fci"]["ratio"]
    rows.append(row("scoring_fci", params, "time_ratio_vs_scoring", ratio, "x (median of rounds)"))
    print(f"  scoring_fci / scoring time: {ratio:.3f}x", flush=True)
    if "materialised_reference" in results:
        ours, ref = results["scoring_fci"]["fci"], results["materialised_reference"]["fci"]
        diff = float(np.max(np.abs(ours - ref)) / max(np.max(np.abs(ref)), 1e-30))
        rows.append(row("scoring_fci", params, "fci_max_rel_diff_vs_reference", diff, "relative"))
        print(f"  FCI vs materialised reference: max rel diff {diff:.1e}", flush=True)
    return rows


def bench_memory_plan(where: str) -> list:
    """Compiled memory of the 1.5B shape (no weights), and FCI's extra temp bytes against T."""
    cfg = MODELS["r1-distill-qwen-1.5b"]
    rows, extra = [], {}
    for length in (2048, 4096, 8192, 16384):
        params = {
            "model": "r1-distill-qwen-1.5b",
            "tokens": length,
            "batch": 1,
            "step_slots": 256,
            "device": where,
        }
        systems = ["scoring", "scoring_fci"] + (["materialised_reference"] * (length == 8192))
        temp = {}
        for system in systems:
            analysis = compiled_memory(system, cfg, length, max_steps=256)
            temp[system] = analysis.temp_size_in_bytes
            rows.append(row(system, params, "compiled_temp_bytes", temp[system], "bytes"))
            if length == 8192:
                for name in ("argument", "output"):
                    value = getattr(analysis, f"{name}_size_in_bytes")
                    rows.append(row(system, params, f"compiled_{name}_bytes", value, "bytes"))
        extra[length] = temp["scoring_fci"] - temp["scoring"]
        rows.append(row("scoring_fci", params, "fci_extra_temp_bytes", extra[length], "bytes"))
        sizes = ", ".join(f"{s} {b / 2**20:.0f} MiB" for s, b in temp.items())
        print(
            f"1.5B shape T={length}: compiled temp {sizes}; FCI extra "
            f"{extra[length] / 2**20:.1f} MiB",
            flush=True,
        )
    for short, long in zip(list(extra)[:-1], list(extra)[1:], strict=True):
        growth = extra[long] / extra[short]
        params = {"model": "r1-distill-qwen-1.5b", "tokens": f"{short}->{long}", "device": where}
        rows.append(row("scoring_fci", params, "fci_extra_growth", growth, "x per doubling of T"))
        print(f"FCI extra temp {short} -> {long} tokens: {growth:.2f}x", flush=True)
    growths = [r["value"] for r in rows if r["metric"] == "fci_extra_growth"]
    verdict = "at most linear" if max(growths) <= 2.2 else "FASTER THAN LINEAR"
    print(f"FCI extra memory grows {verdict} in T (quadratic would be 4x per doubling)")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="1024,2048,4096", help="comma-separated tokens")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default="small", choices=sorted(MODELS))
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument(
        "--real-shape-timing",
        action="store_true",
        help="also time scoring with and without FCI for the 1.5B shape at 8192 tokens (GPU)",
    )
    parser.add_argument("--skip-memory-plan", action="store_true")
    parser.add_argument("--worker", choices=SYSTEMS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    lengths = [int(n) for n in args.lengths.split(",")]
    if args.worker:
        result = measure_memory(args.worker, args.model, lengths[0], args.batch)
        print(json.dumps(result))
        return

    device = jax.devices()[0]
    where = f"{device.platform}:{device.device_kind}"
    rows = []

    def add(new_rows: list) -> None:  # written after every part, so a timeout keeps the rest
        rows.extend(new_rows)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1) + "\n")

    for length in lengths:
        add(bench_small(args.model, length, args.batch, SYSTEMS, args.repeats, where))
    if args.real_shape_timing:
        systems = ("scoring", "scoring_fci")
        add(bench_small("r1-distill-qwen-1.5b", 8192, 1, systems, args.repeats, where))
    if not args.skip_memory_plan:
        add(bench_memory_plan(where))
    print(f"# {datetime.datetime.now().isoformat(timespec='seconds')} on {where}")


if __name__ == "__main__":
    main()
