"""The sampler's decode loop on a mesh, weights in the training (FSDP) layout against the decode
layout (models/sharding.py decode_layout): the collectives inside the compiled decode loop and
the parameter bytes each device holds. Compiles sampler.sample_batch ahead of time for a Cloud
TPU slice through libtpu (nothing runs; weights exist only as shapes) and reads the loop's
collectives from the optimized HLO (attnrl_jax/loop_collectives.py).

    /work/venv-tpu/bin/python benchmarks/decode_layout.py                 # 1.5B, v5e-8, 1x4x2
    /work/venv-tpu/bin/python benchmarks/decode_layout.py --model 7b --mesh 1x2x4
    python benchmarks/decode_layout.py --target cpu4 --model tiny --mesh 1x2x2   # XLA:CPU

Appends one JSON row per layout to --json (default benchmarks/results/decode_layout.json; rows
of the same model, target, mesh and sizes are replaced) and prints the table of BENCHMARKS.md
(table_defs.decode_layout). TPU needs the `tpu` extra (libtpu in its own virtual
environment: README "Will my run fit?"), one process at a time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from attnrl_jax.aot_inputs import Shapes, abstract_params, sampler_batch  # noqa: E402
from attnrl_jax.loop_collectives import loop_collectives, summary  # noqa: E402
from attnrl_jax.models import sharding  # noqa: E402
from attnrl_jax.sampling.buckets import Buckets  # noqa: E402
from attnrl_jax.sampling.sampler import SamplerConfig, sample_batch  # noqa: E402
from benchmarks.aot_targets import (  # noqa: E402
    GIB,
    TARGETS,
    model_config,
    parse_mesh,
    target_devices,
    target_mesh,
)
from benchmarks.table_defs import decode_layout_table  # noqa: E402

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "decode_layout.json"


def compile_layout(cfg, mesh, shapes: Shapes, layout: str) -> dict:
    """Compiles the sampler with the params in `layout` ("training" or "replicated"); the
    collectives of its decode loop and the per-device memory."""
    config = SamplerConfig(buckets=Buckets(rows=(shapes.sample_rows,)), mesh=mesh)
    rules, dtype = sharding.decode_layout(cfg, mesh, config.rules, layout)
    params = abstract_params(cfg, mesh, rules, dtype)
    batch = sampler_batch(mesh, shapes, config.max_eos_ids)
    start = time.perf_counter()
    compiled = sample_batch.lower(
        params,
        batch,
        cfg=cfg,
        config=config,
        max_new_tokens=shapes.new_tokens,
        cache_length=shapes.cache_len,
    ).compile()
    seconds = time.perf_counter() - start
    found = loop_collectives(compiled.as_text(), mesh)
    stats = compiled.memory_analysis()
    return {
        "layout": layout,
        "param_dtype": jnp.dtype(dtype).name,
        "param_gib_per_device": sharding.param_bytes_per_device(cfg, mesh, rules, dtype) / GIB,
        "temp_gib": stats.temp_size_in_bytes / GIB,
        "args_gib": stats.argument_size_in_bytes / GIB,
        "compile_s": round(seconds, 1),
        **summary(found),
        "invariant_gather_ops": sorted(
            {c.op_name for c in found if c.invariant and c.kind != "all-reduce"}
        ),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="1.5b")
    parser.add_argument("--precision", default="bf16", choices=("bf16", "f32"))
    parser.add_argument("--target", default="v5e-8", choices=sorted(TARGETS))
    parser.add_argument("--mesh", default="1x4x2", help="DATAxFSDPxTENSOR")
    parser.add_argument("--rows", type=int, default=64, help="rows of one device batch")
    parser.add_argument("--context", type=int, default=1024, help="padded context length")
    parser.add_argument("--new_tokens", type=int, default=1024)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args(argv)
    target = TARGETS[args.target]
    mesh = target_mesh(target, parse_mesh(args.mesh), target_devices(target))
    cfg = model_config(args.model, args.precision)
    cache = Buckets().cache_length(args.context, args.new_tokens, args.context + args.new_tokens)
    shapes = Shapes(
        sample_rows=args.rows,
        context_len=args.context,
        new_tokens=args.new_tokens,
        cache_len=cache,
    )
    common = {
        "benchmark": "decode_layout",
        "model": args.model,
        "precision": args.precision,
        "target": args.target,
        "compiled_for": target.topology or f"{target.num_devices} x XLA:CPU",
        "mesh": args.mesh,
        "rows": args.rows,
        "context": args.context,
        "new_tokens": args.new_tokens,
        "cache": cache,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "jax": jax.__version__,
    }
    rows = []
    for layout in ("training", "replicated"):
        print(f"compiling the sampler, params in the {layout} layout ...", file=sys.stderr)
        rows.append({**common, **compile_layout(cfg, mesh, shapes, layout)})
    old = json.loads(args.json.read_text()) if args.json.exists() else []
    same = ("model", "precision", "target", "mesh", "rows", "context", "new_tokens")
    kept = [r for r in old if any(r.get(k) != common[k] for k in same)]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(kept + rows, indent=1))
    print(decode_layout_table(kept + rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
