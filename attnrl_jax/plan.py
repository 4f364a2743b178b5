"""`python -m attnrl_jax.plan --config=FILE[:VARIANT] [--config.key=value ...] --topology=v5e:2x4
[--json OUT] [--phases=grad,apply]`: will this run fit? Compiles every device program of the run
(or those --phases names) ahead of time for a Cloud TPU topology (through libtpu, the `tpu`
extra), `cpu:N` (N forced XLA:CPU devices, an estimate for N GPUs of --hbm_gib each) or `gpu:N`
(this machine's first N GPUs, XLA:GPU: run it where they are) and prints per-device memory by
phase:

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
(checked before anything compiles).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

HEADROOM = 0.9  # a phase fits when its per-device total is at most 90% of HBM
GIB = 1024**3
# HBM per chip (GiB) of the TPU generations libtpu can describe.
TPU_HBM_GIB = {"v4": 32.0, "v5e": 16.0, "v5p": 95.0, "v6e": 32.0}
CPU_HBM_GIB = 80.0  # cpu:N stands in for N 80 GB GPUs unless --hbm_gib says otherwise
LOCAL = ("cpu", "gpu")  # this machine's devices, counted, not a TPU topology


class PlanError(ValueError):
    """Bad input to the plan: named in one line, found before anything compiles."""


@dataclasses.dataclass(frozen=True)
class Topology:
    """`name` as given ("v5e:2x4", "cpu:8", "gpu:1"); platform "tpu", "cpu" or "gpu"."""

    name: str
    platform: str
    num_devices: int
    hbm_gib: float


def parse_topology(name: str, hbm_gib: float | None = None) -> Topology:
    """'v5e:2x4' (a TPU generation and its chip grid), 'cpu:8' or 'gpu:1'."""
    found = re.fullmatch(r"([a-z0-9]+):(\d+(?:x\d+)*)", name.strip().lower())
    if found is None:
        raise PlanError(f"topology {name!r}: expected GENERATION:AxB[xC] (v5e:2x4), cpu:N or gpu:N")
    kind, dims = found.group(1), [int(d) for d in found.group(2).split("x")]
    devices = math.prod(dims)
    if kind in LOCAL:
        if len(dims) != 1 or devices < 1:
            raise PlanError(f"topology {name!r}: {kind} takes one device count, e.g. {kind}:8")
        return Topology(name, kind, devices, hbm_gib or CPU_HBM_GIB)
    if kind not in TPU_HBM_GIB:
        raise PlanError(
            f"unknown TPU generation {kind!r} in topology {name!r}; known: {sorted(TPU_HBM_GIB)} "
            "(or cpu:N, gpu:N)"
        )
    if devices < 1:
        raise PlanError(f"topology {name!r} has no chips")
    return Topology(name, "tpu", devices, hbm_gib or TPU_HBM_GIB[kind])


def prepare_backend(topology: Topology) -> None:
    """Environment the backend needs, set before JAX starts: forced CPU devices, or libtpu kept
    from probing for a local TPU (PITFALLS.md)."""
    if topology.platform == "cpu":
        flags = re.sub(
            r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", "")
        )
        os.environ["XLA_FLAGS"] = (
            f"{flags} --xla_force_host_platform_device_count={topology.num_devices}".strip()
        )
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    elif topology.platform == "tpu":
        os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
        os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-8")
        os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")


def topology_devices(topology: Topology) -> list:
    """The topology's devices: compile-only TPU devices from libtpu, or CPU / GPU devices."""
    import jax

    if topology.platform in LOCAL:
        try:
            devices = jax.devices(topology.platform)
        except RuntimeError:  # no backend for that platform on this machine
            devices = []
        if len(devices) < topology.num_devices and topology.platform == "cpu":
            raise PlanError(
                f"{topology.name}: JAX started with {len(devices)} CPU devices (run the plan in "
                "a fresh process, it sets XLA_FLAGS itself)"
            )
        if len(devices) < topology.num_devices:
            raise PlanError(
                f"{topology.name}: JAX sees {len(devices)} GPUs here (run it on a machine with "
                "them, with jax's GPU support installed)"
            )
        return devices[: topology.num_devices]
    from jax.experimental import topologies

    try:
        desc = topologies.get_topology_desc(platform="tpu", topology_name=topology.name)
    except Exception as e:  # libtpu missing, an unknown shape, or libtpu held by another process
        raise PlanError(
            f"libtpu cannot describe topology {topology.name!r} ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200]}); TPU plans need libtpu: pip install "
            '"jax[tpu]==0.10.2" (the tpu extra), one process at a time'
        ) from e
    return list(desc.devices)


def mesh_sizes(mesh: dict[str, int], num_devices: int) -> tuple[int, int, int]:
    """(data, fsdp, tensor) of the config's mesh (one axis may be -1) on num_devices."""
    sizes = [mesh["data"], mesh["fsdp"], mesh["tensor"]]
    if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise PlanError(f"mesh {mesh}: sizes must be positive, at most one -1")
    known = math.prod(s for s in sizes if s != -1)
    if num_devices % known:
        raise PlanError(f"mesh {mesh} does not divide the topology's {num_devices} devices")
    if -1 in sizes:
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise PlanError(
            f"mesh {'x'.join(map(str, sizes))} uses {math.prod(sizes)} of the topology's "
            f"{num_devices} devices"
        )
    return tuple(sizes)  # type: ignore[return-value]


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
        "v5e:2x4, v6e:2x4, v5p:2x2x2, v4:2x2x1, cpu:N or gpu:N",
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
