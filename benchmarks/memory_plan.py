"""Ahead-of-time memory plan: per-device memory of the sampler, scoring and training programs
for DeepSeek-R1-Distill-Qwen-1.5B / -7B shapes on TPU slices and 8-GPU nodes, from compiled
executables (nothing runs; weights exist only as shapes). See attnrl_jax/aot_phases.py for
what each phase compiles and how `total` is counted, aot_targets.py for the models and targets.
For one config on one slice, `python -m attnrl_jax.plan` (README, "Will my run fit?").

TPU targets need libtpu, kept out of the default install. In a separate virtual environment:

    python3.11 -m venv /work/venv-tpu
    /work/venv-tpu/bin/pip install -e . "jax[tpu]==0.10.2"
    /work/venv-tpu/bin/python benchmarks/memory_plan.py --model 1.5b --target v5e-8 \\
        --mesh 1x8x1 --phases score,grad --remat
    /work/venv-tpu/bin/python benchmarks/memory_plan.py --all      # the plan in BENCHMARKS.md

--all writes benchmarks/results/memory_plan.json (one row per compiled phase, rewritten after
every entry, so an interrupted run keeps what it compiled; --resume skips rows already there)
and prints the markdown table; --table prints the table of an existing JSON file.
Targets "h100x8" / "cpu4" compile for forced CPU devices (XLA:CPU), an estimate for GPUs.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attnrl_jax.aot_phases import PHASES, Shapes, plan_phases  # noqa: E402
from benchmarks.aot_targets import (  # noqa: E402
    CHIP_HBM_GIB,
    GIB,
    TARGETS,
    model_config,
    parse_mesh,
    target_devices,
    target_mesh,
)
from benchmarks.table_defs import memory_plan_table as markdown_table  # noqa: E402

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "memory_plan.json"
HEADROOM = 0.9  # a total "fits" a chip when it is at most 90% of its HBM (runtime, fragments)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One compile job: a model on a target's mesh with given numerics and padded sizes."""

    model: str
    target: str
    mesh: str
    precision: str = "bf16"
    remat: bool = True
    phases: tuple[str, ...] = PHASES
    shapes: Shapes = Shapes()
    label: str = ""  # names the scenario in the table (e.g. "continuation")


def run_entry(entry: Entry) -> list[dict]:
    """Compiles the entry's phases; one JSON-ready row per phase."""
    target = TARGETS[entry.target]
    mesh = target_mesh(target, parse_mesh(entry.mesh), target_devices(target))
    cfg = model_config(entry.model, entry.precision, entry.remat)
    rows = []
    for m in plan_phases(cfg, mesh, entry.shapes, entry.phases):
        micro, seq = entry.shapes.describe(m.phase)
        total = m.total / GIB
        rows.append(
            {
                "model": entry.model,
                "precision": entry.precision,
                "remat": entry.remat,
                "target": entry.target,
                "compiled_for": target.topology or f"{target.num_devices} x XLA:CPU",
                "mesh": entry.mesh,
                "phase": m.phase,
                "label": entry.label,
                "rows": micro,
                "seq": seq,
                "arguments_gib": m.arguments / GIB,
                "outputs_gib": m.outputs / GIB,
                "aliased_gib": m.aliased / GIB,
                "temporaries_gib": m.temporaries / GIB,
                "program_gib": m.program / GIB,
                "resident_gib": m.resident / GIB,
                "total_gib": total,
                "lower_bound": m.exhausted,
                "compile_s": round(m.compile_s, 1),
                "fits": [c for c, hbm in CHIP_HBM_GIB.items() if total <= HEADROOM * hbm],
                "message": m.message,
                "entry": entry_key(entry),
            }
        )
    return rows


def entry_key(entry: Entry) -> str:
    """Identifies an entry (all its settings) in the JSON rows, for --resume."""
    return json.dumps(dataclasses.asdict(entry), sort_keys=True)


def _environment() -> dict:
    import jax

    try:
        from importlib.metadata import version

        libtpu = version("libtpu")
    except Exception:
        libtpu = None
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "jax": jax.__version__,
        "libtpu": libtpu,
        "headroom": HEADROOM,
        "chip_hbm_gib": CHIP_HBM_GIB,
    }


def run_plan(entries: list[Entry], path: Path, resume: bool, log=print) -> list[dict]:
    """Runs entries in order, rewriting `path` after each; returns all rows."""
    rows: list[dict] = []
    if resume and path.exists():
        rows = json.loads(path.read_text())["rows"]
    done = {r["entry"] for r in rows}
    for i, entry in enumerate(entries):
        key = entry_key(entry)
        if key in done:
            continue
        start = time.perf_counter()
        new = run_entry(entry)
        rows.extend(new)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"environment": _environment(), "rows": rows}, indent=1))
        log(f"[{i + 1}/{len(entries)}] {key}: {time.perf_counter() - start:.0f} s")
    return rows


TRAIN = ("score", "reference", "grad", "apply")
ONE_ROW_8 = Shapes(score_rows=8, train_rows=8)  # one row per device on 8 devices (1x8x1)


def plan_entries() -> list[Entry]:
    """The plan behind BENCHMARKS.md, most important first. 8- and 16-chip meshes compile for
    v5p (95 GiB: the compiler accounts programs up to that size instead of refusing them); the
    sampler is checked directly on v5e. h100x8 is XLA:CPU. Sized to finish in about an hour on
    2 shared CPU cores (the sampler, with its layers unrolled, takes ~5 min per compile)."""
    one_row_16 = Shapes(score_rows=16, train_rows=16)
    one_row_4 = Shapes(score_rows=4, train_rows=4)  # one row per data x fsdp shard of 1x4x2
    # The longest continuation batch: prompt + prefix pads to 16384 (> 8192), and the budget
    # stays max_new_tokens (sampling/requests.py does not shorten it by the prefix).
    continuation = Shapes(context_len=16384, cache_len=24576)
    rest = ("sample", "reference", "apply")
    return [
        Entry("1.5b", "v5p-16", "1x8x1", phases=TRAIN, shapes=ONE_ROW_8),
        Entry("7b", "v5p-16", "1x8x1", phases=TRAIN, shapes=ONE_ROW_8),
        Entry("1.5b", "v5e-8", "1x8x1", phases=("sample",), shapes=ONE_ROW_8),
        Entry("1.5b", "v5p-16", "1x4x2", phases=("grad",), shapes=one_row_4),
        Entry("7b", "v5p-16", "1x2x4", phases=("grad",), shapes=Shapes(train_rows=2)),
        Entry("7b", "v5p-32", "1x16x1", phases=("score", "grad", "apply"), shapes=one_row_16),
        Entry("1.5b", "h100x8", "1x8x1", phases=("score", "grad"), shapes=ONE_ROW_8),
        Entry("1.5b", "v5p-16", "1x8x1", remat=False, phases=("grad",), shapes=ONE_ROW_8),
        Entry("7b", "v5p-16", "1x8x1", phases=("sample",), shapes=ONE_ROW_8),
        Entry("7b", "h100x8", "1x8x1", phases=("score", "grad"), shapes=ONE_ROW_8),
        # XLA:CPU compiles these in seconds: the rest of the 8 x H100 estimate.
        Entry("1.5b", "h100x8", "1x8x1", phases=rest, shapes=ONE_ROW_8),
        Entry("7b", "h100x8", "1x8x1", phases=rest, shapes=ONE_ROW_8),
        Entry("7b", "h100x8", "1x2x4", phases=("grad",), shapes=Shapes(train_rows=2)),
        Entry("1.5b", "h100x8", "1x8x1", phases=("grad",), shapes=Shapes(train_rows=16)),
        Entry("1.5b", "v6e-8", "1x4x2", phases=("grad",), shapes=one_row_4),
        Entry("1.5b", "v5p-16", "1x8x1", "f32", phases=("grad",), shapes=ONE_ROW_8),
        Entry("1.5b", "v5p-16", "1x8x1", phases=("grad",), shapes=Shapes(train_rows=16)),
        Entry(
            "1.5b", "v5p-16", "1x8x1", phases=("sample",), shapes=continuation, label="continuation"
        ),
    ]


def _shapes(args) -> Shapes:
    changes = {
        k: getattr(args, k)
        for k in (f.name for f in dataclasses.fields(Shapes))
        if getattr(args, k, None) is not None
    }
    if args.seq is not None:
        changes.setdefault("score_len", args.seq)
        changes.setdefault("train_len", args.seq)
    return Shapes(**changes)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", choices=["1.5b", "7b", "tiny"], default="1.5b")
    p.add_argument("--target", choices=sorted(TARGETS), default="v5e-8")
    p.add_argument("--mesh", default="1x8x1", help="DATAxFSDPxTENSOR, e.g. 1x4x2")
    p.add_argument("--precision", choices=["bf16", "f32"], default="bf16")
    p.add_argument("--remat", action="store_true", help="rematerialise each layer in backward")
    p.add_argument("--phases", default=",".join(PHASES))
    p.add_argument("--seq", type=int, help="sets score_len and train_len (prompt + response)")
    for f in dataclasses.fields(Shapes):
        p.add_argument(f"--{f.name.replace('_', '-')}", type=int, dest=f.name)
    p.add_argument("--all", action="store_true", help="run the whole plan (plan_entries)")
    p.add_argument("--resume", action="store_true", help="with --all: keep rows already in --json")
    p.add_argument("--table", action="store_true", help="print the table of --json and exit")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    if args.table:
        print(markdown_table(json.loads((args.json or DEFAULT_JSON).read_text())["rows"]))
        return
    if args.all:
        rows = run_plan(plan_entries(), args.json or DEFAULT_JSON, args.resume)
    else:
        entry = Entry(
            args.model,
            args.target,
            args.mesh,
            args.precision,
            args.remat,
            tuple(args.phases.split(",")),
            _shapes(args),
        )
        rows = run_entry(entry)
        if args.json:
            args.json.write_text(json.dumps({"environment": _environment(), "rows": rows}))
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
