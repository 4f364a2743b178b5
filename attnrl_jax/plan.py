"""`python -m attnrl_jax.plan --config=FILE[:VARIANT] [--config.key=value ...] --topology=v5e:2x4
[--json OUT] [--phases=grad,apply]`: will this run fit? Compiles every device program of the run
(or those --phases names) ahead of time for a Cloud TPU topology (through libtpu, the `tpu`
extra), `cpu:N` (N forced XLA:CPU devices, an estimate for N GPUs of --hbm_gib each) or a GPU
kind and count, `h100:N`, `h200:N`, `a100-40:N`, `a100-80:N`, `l4:N` (this machine's first N
GPUs, XLA:GPU, against that kind's memory: run it where they are; `gpu:N` with --hbm_gib for
another kind) and prints per-device memory by phase:

    sample               the continuous engine's admission (rollout.sampler_rows slots, all
                         admitted at once) or decode chunk, whichever needs more; its KV page
                         pool holds every slot at the longest row (kv_pages=None), split over
                         the data x fsdp shards; the params in the engine's decode layout
                         (rollout.decode_layout; "auto": replicated over data x fsdp when that
                         takes at most a quarter of HBM, sharding.decode_layout)
    sample_continuation  the same for continuation rows (prompt + response prefix as context)
    score                the scoring forward (log-probs, entropies, FCI) of one scoring batch
    reference            the frozen policy's forward for the KL term, one micro-batch
    grad                 forward + backward of the loss on one micro-batch, added into the
                         running gradient sum (donated: no separate accumulation program)
    apply                the AdamW update

with what each program holds (arguments, temporaries) plus what stays resident on the device
while it runs (attnrl_jax/aot_phases.py), against 90% of the chip's HBM. The model's shape comes
from model.path's config.json alone (no weights, no data are read). Exit 0 when every phase
fits, 1 naming the phases that do not, 2 for a bad topology, config, mesh or token budget
(checked before anything compiles). Topologies, their devices and the mesh on them:
plan_topology.py.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from attnrl_jax.plan_topology import (
    PlanError,
    Topology,
    mesh_sizes,
    parse_topology,
    prepare_backend,
    topology_devices,
)

# Importable from here (tests, callers of the plan).
__all__ = [
    "ALL_PHASES",
    "PlanError",
    "main",
    "mesh_sizes",
    "parse_phases",
    "parse_topology",
    "plan",
]

HEADROOM = 0.9  # a phase fits when its per-device total is at most 90% of HBM
GIB = 1024**3


def plan_shapes(run, shards: int):
    """The padded sizes the trainer's buckets give this run (aot_phases.Shapes)."""
    from attnrl_jax.aot_phases import Shapes
    from attnrl_jax.buckets import power_of_two
    from attnrl_jax.rl.update import row_length_bucket
    from attnrl_jax.sampling.buckets import Buckets
    from attnrl_jax.scoring.forward import length_bucket
    from attnrl_jax.scoring.steps import step_bucket

    r, t = run.rollout, run.train
    prompt, new = run.data.max_prompt_len, r.max_new_tokens
    for name, rows in (
        ("rollout.sampler_rows", r.sampler_rows),
        ("rollout.score_batch_size", r.score_batch_size),
        ("train.microbatch_rows", t.microbatch_rows),
    ):
        if rows % shards:
            raise PlanError(f"{name}={rows} is not a multiple of mesh data x fsdp = {shards}")
    buckets = Buckets()  # the sampler's: contexts and caches in power-of-two lengths
    context = buckets.fit_length(prompt)
    if t.tokens_per_row:
        train_len, nodes = row_length_bucket(t.tokens_per_row), 64
    else:
        train_len = row_length_bucket(prompt + new)
        nodes = power_of_two(2 + r.selection.num_points * r.continuations, 8)
    return Shapes(
        sample_rows=r.sampler_rows,
        admit_rows=r.admit_rows,
        context_len=context,
        new_tokens=new,
        cache_len=buckets.cache_length(context, new, prompt + new),
        score_rows=r.score_batch_size,
        score_len=length_bucket(prompt + new),
        score_steps=min(512, step_bucket(new + 1)),
        train_rows=t.microbatch_rows,
        train_len=train_len,
        train_nodes=nodes,
    )


def model_config(run):
    """The ModelConfig of model.path's config.json (or the tiny model) with the run's numerics."""
    from attnrl_jax.models.hf_io import read_config

    if run.model.path:
        path = Path(run.model.path)
        if not (path / "config.json").is_file():
            raise PlanError(f"model.path={str(path)!r} has no config.json")
        try:
            cfg = read_config(path)
        except Exception as e:  # CheckpointError, ModelConfigError: a file this cannot run
            raise PlanError(f"{path / 'config.json'}: {e}") from e
    else:
        from attnrl_jax.initial_model import tiny_model_config

        cfg = tiny_model_config(run, run.model.tiny.vocab_size)
    return cfg.replace(
        dtype=run.model.dtype, param_dtype=run.model.param_dtype, remat=run.model.remat
    )


def resolve_for_plan(config):
    """The RunConfig of `config`; data keys and workdir are not needed to plan memory."""
    from attnrl_jax.rl.settings import ConfigError, resolve

    config = config.copy_and_resolve_references()
    if not config.workdir:
        config.workdir = "/nonexistent/plan"
    if not config.data.train_files.strip():
        config.data.train_files = "demo"
    try:
        return resolve(config)
    except ConfigError as e:
        problems = " ".join(str(e).split())  # one line
        raise PlanError(f"the config cannot be built: {problems}") from e


ALL_PHASES = ("sample", "sample_continuation", "score", "reference", "grad", "apply")


def parse_phases(text: str | None) -> tuple[str, ...]:
    """'grad,apply' -> the phases to compile, in ALL_PHASES order (None or '': all)."""
    if not text:
        return ALL_PHASES
    asked = [p.strip() for p in text.split(",") if p.strip()]
    unknown = sorted(set(asked) - set(ALL_PHASES))
    if unknown or not asked:
        raise PlanError(f"--phases={text!r}: unknown {unknown}; choose from {list(ALL_PHASES)}")
    return tuple(p for p in ALL_PHASES if p in asked)


def plan(config, topology: Topology, phases: Sequence[str] = ALL_PHASES) -> list[dict]:
    """Compiles `phases` of `config` for `topology` (default every phase; sample_continuation
    only for tree methods); one JSON row per phase."""
    from attnrl_jax.aot_phases import PHASES, plan_phases
    from attnrl_jax.models.sharding import decode_layout, make_mesh
    from attnrl_jax.sampling.buckets import Buckets

    data, fsdp, tensor = mesh_sizes(config.mesh.to_dict(), topology.num_devices)
    run = resolve_for_plan(config)
    shapes = plan_shapes(run, data * fsdp)
    cfg = model_config(run)
    devices = topology_devices(topology)
    mesh = make_mesh(data, fsdp, tensor, devices=devices)
    # the layout NativeEngine picks on this chip (rollout.decode_layout; "auto" against its
    # default budget, a quarter of HBM)
    budget = int(topology.hbm_gib * GIB) // 4
    layout = decode_layout(cfg, mesh, layout=run.engine.decode_layout, budget_bytes=budget)
    common = dict(loss=run.loss, optim=run.optim, scoring=run.rollout.scoring, sample_layout=layout)
    memories = plan_phases(cfg, mesh, shapes, tuple(p for p in phases if p in PHASES), **common)
    if run.rollout.tree and "sample_continuation" in phases:
        # continuation rows: prompt + response prefix as context; prefix and continuation
        # share one response's budget (RolloutConfig.continuation_budget), but a short prefix
        # leaves nearly all of it, so the decode loop keeps max_new_tokens steps
        buckets, new = Buckets(), shapes.new_tokens
        context = buckets.fit_length(run.data.max_prompt_len + new)
        cache = buckets.cache_length(context, new, run.data.max_prompt_len + new)
        longer = dataclasses.replace(shapes, context_len=context, cache_len=cache)
        (cont,) = plan_phases(cfg, mesh, longer, ("sample",), **common)
        cont.phase = "sample_continuation"
        memories.insert(int("sample" in phases), cont)
    if not memories:
        raise PlanError(f"none of the phases {list(phases)} runs in this config")
    mesh_name = f"{data}x{fsdp}x{tensor}"
    rows = []
    for m in memories:
        total = m.total / GIB
        rows.append(
            {
                "phase": m.phase,
                "topology": topology.name,
                "mesh": mesh_name,
                "args_gib": m.arguments / GIB,
                "outputs_gib": (m.outputs - m.aliased) / GIB,
                "temp_gib": m.temporaries / GIB,
                "resident_gib": m.resident / GIB,
                "total_gib": total,
                "hbm_gib": topology.hbm_gib,
                "fits": bool(total <= HEADROOM * topology.hbm_gib and not m.exhausted),
            }
        )
    return rows


def table(rows: Sequence[dict]) -> str:
    """A plain-text table of plan rows (GiB per device)."""
    head = f"{'phase':<20} {'args':>7} {'temps':>7} {'resident':>8} {'total':>7} {'HBM':>6}  fits"
    lines = [head]
    for r in rows:
        lines.append(
            f"{r['phase']:<20} {r['args_gib']:7.2f} {r['temp_gib']:7.2f} "
            f"{r['resident_gib']:8.2f} {r['total_gib']:7.2f} {r['hbm_gib']:6.1f}  "
            f"{'yes' if r['fits'] else 'NO'}"
        )
    return "\n".join(lines)


def _log_progress() -> None:
    """Each compiled phase and its compile time on stderr (TPU programs take minutes)."""
    log = logging.getLogger("attnrl_jax.aot_phases")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("plan: %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the plan; returns the exit status (0 all fit, 1 some do not, 2 bad input)."""
    from absl import flags
    from ml_collections import config_flags

    argv = list(sys.argv if argv is None else argv)
    values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, "a config file[:VARIANT]", flag_values=values, sys_argv=argv
    )
    flags.DEFINE_string(
        "topology",
        None,
        "v5e:2x4, v6e:2x4, v5p:2x2x2, v4:2x2x1, cpu:N, h100:N, h200:N, a100-40:N, a100-80:N, "
        "l4:N, or gpu:N with --hbm_gib",
        flag_values=values,
    )
    flags.DEFINE_string("json", None, "write the rows as a JSON list here", flag_values=values)
    flags.DEFINE_float(
        "hbm_gib", None, "memory per device (default: the chip's HBM)", flag_values=values
    )
    flags.DEFINE_string(
        "phases", None, f"compile only these, comma-separated (default all: {ALL_PHASES})",
        flag_values=values,
    )  # fmt: skip
    try:
        values(argv)
        if values.topology is None or values.config is None:
            raise PlanError("--config=FILE[:VARIANT] and --topology=... are required")
        topology = parse_topology(values.topology, values.hbm_gib)
        phases = parse_phases(values.phases)
        prepare_backend(topology)
        _log_progress()
        rows = plan(values.config, topology, phases)
    except (PlanError, flags.Error, AttributeError) as e:  # AttributeError: unknown config key
        print(f"plan: {e}", file=sys.stderr)
        return 2
    print(f"{values.topology}, mesh {rows[0]['mesh']} (GiB per device; fits: <= 90% of HBM)")
    print(table(rows))
    if values.json:
        Path(values.json).write_text(json.dumps(rows, indent=1))
    misses = [r["phase"] for r in rows if not r["fits"]]
    if misses:
        print(f"does not fit {values.topology}: {', '.join(misses)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
