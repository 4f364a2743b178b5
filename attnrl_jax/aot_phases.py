"""Compiles the project's device programs for abstract inputs and reads their per-device memory.

Each phase lowers the real jitted function (no re-implementation) with jax.ShapeDtypeStruct
inputs carrying the NamedShardings the trainer gives them, compiles it for the mesh's devices
and reads `compiled.memory_analysis()`. Nothing is allocated: 7B weights exist only as shapes.

    sample     sampling.continuous admit and      the continuous engine's two programs with
               decode_chunk                       `sample_rows` slots (the larger one counts)
    score      scoring.forward.score_batch        log-probs, entropies and FCI, one scoring batch
    reference  rl.update.reference_logprobs       the frozen policy's forward for the KL term
    grad       rl.update.accumulate_gradients     forward + backward of the loss on one micro-batch,
                                                  added into the running gradient sum (donated)
    apply      rl.update.apply_gradients          the AdamW update (params and moments donated)

A program's own memory is arguments + outputs - aliased (donated) + temporaries. While it runs,
the trainer also holds buffers that are not its arguments (rl/trainer.py keeps the params, AdamW
moments and, with a KL term, the reference params on the devices for the whole run; run_updates
keeps the running gradient sum between micro-batches, an argument of grad and apply but resident
while the reference forward runs); `resident` adds their per-device bytes,
from their shapes and shardings, so `total` is the device memory the phase needs in training.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import time
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from attnrl_jax.buckets import power_of_two, round_up
from attnrl_jax.models.config import ModelConfig
from attnrl_jax.models.lm import param_shapes, unflatten
from attnrl_jax.models.sharding import (
    DEFAULT_RULES,
    Rules,
    batch_sharding,
    optimizer_state_shardings,
    param_shardings,
)
from attnrl_jax.rl.loss import LossConfig
from attnrl_jax.rl.settings import OptimConfig
from attnrl_jax.rl.update import (
    DEVICE_FIELDS,
    LOSS_FIELDS,
    accumulate_gradients,
    apply_gradients,
    make_optimizer,
    reference_copy,
    reference_logprobs,
    zero_sums,
)
from attnrl_jax.sampling import continuous
from attnrl_jax.sampling.buckets import Buckets
from attnrl_jax.sampling.continuous import Admission, Call
from attnrl_jax.sampling.sampler import DeviceBatch, SamplerConfig
from attnrl_jax.sampling.token_choice import SamplingParams
from attnrl_jax.scoring.forward import ScoringConfig, score_batch

LOG = logging.getLogger(__name__)
PHASES = ("sample", "score", "reference", "grad", "apply")


@dataclasses.dataclass(frozen=True)
class Shapes:
    """Padded sizes of every program, as the trainer's buckets make them.

    sample: `sample_rows` engine slots, all admitted at once (or `admit_rows` per batch
    shard: rollout.admit_rows) with contexts padded to `context_len` (the largest admission),
    `new_tokens` the budget, rows of up to `cache_len` positions; the page pool holds every
    slot at `cache_len` (SamplerConfig.kv_pages=None).
    score: `score_rows` sequences of `score_len` tokens with `score_steps` step slots.
    reference / grad: micro-batches of `train_rows` rows of `train_len` tokens, `train_nodes`
    tree-node slots.
    """

    sample_rows: int = 64
    admit_rows: int = 0
    context_len: int = 1024
    new_tokens: int = 8192
    cache_len: int = 9216
    score_rows: int = 8
    score_len: int = 9216
    score_steps: int = 1024
    train_rows: int = 8
    train_len: int = 9216
    train_nodes: int = 8

    def describe(self, phase: str) -> tuple[int, str]:
        """(micro-batch rows, a short description of the sequence sizes) of one phase."""
        if phase == "sample":
            return self.sample_rows, (
                f"ctx {self.context_len} + {self.new_tokens} new, cache {self.cache_len}"
            )
        if phase == "score":
            return self.score_rows, f"{self.score_len} tok, {self.score_steps} steps"
        return self.train_rows, f"{self.train_len} tok"


@dataclasses.dataclass
class PhaseMemory:
    """Per-device bytes of one compiled phase (see the module docstring for `total`).

    `exhausted`: the TPU compiler refused the program because it does not fit the chip's HBM
    (RESOURCE_EXHAUSTED); `temporaries` is then the requirement its error message states, the
    arguments are counted from their shapes and shardings, outputs are unknown (0), so `total`
    is a lower bound. `message` keeps that error's text.
    """

    phase: str
    arguments: int
    outputs: int
    aliased: int
    temporaries: int
    code: int
    resident: int
    compile_s: float
    exhausted: bool = False
    message: str = ""

    @property
    def program(self) -> int:
        return self.arguments + self.outputs - self.aliased + self.temporaries

    @property
    def total(self) -> int:
        return self.program + self.resident


# ----- abstract arrays -----


def _spec(shape, dtype, sharding) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype), sharding=sharding)


def per_device_bytes(tree: Any) -> int:
    """Bytes one device holds of a tree of sharded abstract arrays (the largest shard)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shard = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
        total += math.prod(shard) * jnp.dtype(leaf.dtype).itemsize
    return total


def abstract_params(
    cfg: ModelConfig, mesh: Mesh, rules: Rules = DEFAULT_RULES, dtype: Any = None
) -> dict:
    """The model's params as ShapeDtypeStructs with the trainer's shardings (param_shardings),
    or those of `rules` in `dtype` (the sampler's decode layout: sharding.decode_layout)."""
    shapes = unflatten(param_shapes(cfg))
    plain = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s, dtype or cfg.weight_dtype), shapes, is_leaf=_is_shape
    )
    shardings = param_shardings(cfg, mesh, rules)
    return jax.tree.map(lambda a, s: _spec(a.shape, a.dtype, s), plain, shardings)


def _is_shape(x) -> bool:
    return isinstance(x, tuple) and all(isinstance(i, int) for i in x)


def abstract_opt_state(params: dict, mesh: Mesh, optim: OptimConfig) -> Any:
    """AdamW state shaped by optax's init, sharded by optimizer_state_shardings."""
    state = jax.eval_shape(make_optimizer(optim).init, params)
    shardings = jax.tree.map(lambda a: a.sharding, params)
    placed = optimizer_state_shardings(state, params, shardings, mesh)
    return jax.tree.map(lambda a, s: _spec(a.shape, a.dtype, s), state, placed)


def _rows(mesh: Mesh, shape, dtype) -> jax.ShapeDtypeStruct:
    """An array whose leading (row) axis is split over data x fsdp, as the trainer places it."""
    return _spec(shape, dtype, batch_sharding(mesh, len(shape)))


def _replicated(mesh: Mesh, shape, dtype) -> jax.ShapeDtypeStruct:
    return _spec(shape, dtype, NamedSharding(mesh, PartitionSpec()))


def _check_rows(rows: int, mesh: Mesh, what: str) -> None:
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if rows % shards:
        raise ValueError(f"{what}={rows} must be a multiple of mesh data x fsdp = {shards}")


def sampler_batch(mesh: Mesh, shapes: Shapes, max_eos_ids: int) -> DeviceBatch:
    """A DeviceBatch placed like sampling/requests._place: rows split, seed and EOS replicated."""
    r, c = shapes.sample_rows, shapes.context_len
    _check_rows(r, mesh, "sample_rows")
    row = lambda dtype: _rows(mesh, (r,), dtype)  # noqa: E731
    return DeviceBatch(
        contexts=_rows(mesh, (r, c), jnp.int32),
        context_lengths=row(jnp.int32),
        source=row(jnp.int32),
        budget=row(jnp.int32),
        request_index=row(jnp.int32),
        sample_index=row(jnp.int32),
        sampling=SamplingParams(row(jnp.float32), row(jnp.float32), row(jnp.int32)),
        seed=_replicated(mesh, (), jnp.int32),
        eos_ids=_replicated(mesh, (max_eos_ids,), jnp.int32),
    )


def engine_programs(
    cfg: ModelConfig, mesh: Mesh, shapes: Shapes, params: dict
) -> tuple[tuple, tuple]:
    """Abstract arguments of continuous.admit and decode_chunk (params: stacked, as
    abstract_params; unstacked here as the scheduler does): slots = sample_rows, a pool of
    slots x cache_len positions plus a trash page per batch shard, split over the shards."""
    b, c = shapes.sample_rows, shapes.context_len
    _check_rows(b, mesh, "sample_rows")
    config = SamplerConfig(
        buckets=Buckets(rows=(b,)), mesh=mesh, admit_rows=shapes.admit_rows or None
    )
    shards, page_size = config.batch_shards, config.page_size
    # the largest admission: every slot, or admit_rows per shard (padded as the scheduler pads)
    a = b if not shapes.admit_rows else shards * min(b // shards, power_of_two(shapes.admit_rows))
    per_slot = round_up(shapes.cache_len, page_size) // page_size
    num_pages = config.kv_pages or b * per_slot + shards
    call = Call(
        _replicated(mesh, (), jnp.int32), _replicated(mesh, (config.max_eos_ids,), jnp.int32), None
    )
    statics = dict(
        cfg=cfg, config=config, slots=b, num_pages=num_pages, page_size=page_size,
        cache_length=per_slot * page_size, fci=None,
    )  # fmt: skip
    lowered = continuous.empty_state.lower(call, **statics)
    shardings = lowered.compile().output_shardings
    state = jax.tree.map(lambda a, s: _spec(a.shape, a.dtype, s), lowered.out_info, shardings)

    def layer(a):  # one layer of a stacked param: its sharding without the layers axis
        spec = PartitionSpec(*tuple(a.sharding.spec)[1:])
        return _spec(a.shape[1:], a.dtype, NamedSharding(mesh, spec))

    unstacked = {**params, "layers": [jax.tree.map(layer, params["layers"])] * cfg.num_layers}
    rows = lambda shape, dtype: _rows(mesh, shape, dtype)  # noqa: E731
    batch = Admission(
        contexts=rows((a, c), jnp.int32),
        context_lengths=rows((a,), jnp.int32),
        source=rows((a,), jnp.int32),
        slot=rows((a,), jnp.int32),
        writes=rows((a, c), jnp.bool_),
        budget=rows((a,), jnp.int32),
        request_index=rows((a,), jnp.int32),
        sample_index=rows((a,), jnp.int32),
        sampling=SamplingParams(
            rows((a,), jnp.float32), rows((a,), jnp.float32), rows((a,), jnp.int32)
        ),
    )
    table = rows((b, per_slot), jnp.int32)
    target = _replicated(mesh, (), jnp.int32)
    program = dict(cfg=cfg, config=config, fci=None)
    admit = ((unstacked, state, batch, table, call), program)
    decode = ((unstacked, state, table, target, call), {**program, "steps": config.decode_chunk})
    return admit, decode


def train_batch(mesh: Mesh, shapes: Shapes) -> dict:
    """The stack_rows arrays run_updates sends to the device (update._device_batch)."""
    m, t, k = shapes.train_rows, shapes.train_len, shapes.train_nodes
    _check_rows(m, mesh, "train_rows")
    dtypes = {"ancestors": jnp.bool_, "weights": jnp.float32, "advantages": jnp.float32}
    dtypes["old_logp"] = jnp.float32
    out = {}
    for name in DEVICE_FIELDS + LOSS_FIELDS:
        shape = (m, k, k) if name == "ancestors" else (m, t)
        out[name] = _rows(mesh, shape, dtypes.get(name, jnp.int32))
    return out


# ----- compiling -----

_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_TEMPS = re.compile(r"required for HLO temporaries \(([0-9.]+)([KMGT]?)\)")


def exhausted_temporaries(message: str) -> int | None:
    """Bytes of temporaries that a TPU RESOURCE_EXHAUSTED compile error says a program needs."""
    found = _TEMPS.search(message)
    if "RESOURCE_EXHAUSTED" not in message or found is None:
        return None
    return int(float(found.group(1)) * _UNITS[found.group(2)])


def _analyse(phase: str, fn, args: tuple, kwargs: dict, resident: int):
    """Lowers and compiles fn(*args, **kwargs); returns (PhaseMemory, outputs) where outputs
    are abstract arrays with the compiled output shardings, or None when the compiler refused
    the program for lack of memory."""
    lowered = fn.lower(*args, **kwargs)
    start = time.perf_counter()
    try:
        compiled = lowered.compile()
    except Exception as e:  # jax.errors.JaxRuntimeError; anything but an HBM refusal re-raised
        temps = exhausted_temporaries(str(e))
        if temps is None:
            raise
        seconds = time.perf_counter() - start
        LOG.info("%s does not fit the device (refused by the compiler, %.0f s)", phase, seconds)
        memory = PhaseMemory(phase, per_device_bytes(args), 0, 0, temps, 0, resident, seconds)
        memory.exhausted, memory.message = True, str(e).splitlines()[0][:300]
        return memory, None
    seconds = time.perf_counter() - start
    LOG.info("compiled %s in %.0f s", phase, seconds)
    stats = compiled.memory_analysis()
    memory = PhaseMemory(
        phase=phase,
        arguments=stats.argument_size_in_bytes,
        outputs=stats.output_size_in_bytes,
        aliased=stats.alias_size_in_bytes,
        temporaries=stats.temp_size_in_bytes,
        code=stats.generated_code_size_in_bytes,
        resident=resident,
        compile_s=seconds,
    )
    outputs = jax.tree.map(
        lambda a, s: _spec(a.shape, a.dtype, s), lowered.out_info, compiled.output_shardings
    )
    return memory, outputs


def plan_phases(
    cfg: ModelConfig,
    mesh: Mesh,
    shapes: Shapes,
    phases: tuple[str, ...] = PHASES,
    loss: LossConfig | None = None,
    optim: OptimConfig | None = None,
    scoring: ScoringConfig | None = None,
    sample_layout: tuple[Rules, Any] | None = None,
) -> list[PhaseMemory]:
    """Compiles the requested phases for `mesh` and returns their per-device memory.

    Training phases chain real shardings: the reference log-probs passed to grad have the
    compiled reference program's output shardings (when it was not compiled or the compiler
    refused it: the batch's); the gradient sum has the params' (update.accumulate_gradients
    pins it there).
    loss / optim / scoring: default LossConfig() / OptimConfig() / ScoringConfig() (KL weight
    0.001: reference params held).
    sample_layout: (rules, dtype) of the sampler's own copy of the params (what
    sharding.decode_layout chose for NativeEngine); the training params are then resident
    beside it. None: the sampler reads the training params.
    """
    unknown = set(phases) - set(PHASES)
    if unknown:
        raise ValueError(f"unknown phases {sorted(unknown)}; choose from {PHASES}")
    loss, optim = loss or LossConfig(), optim or OptimConfig()  # the paper's settings
    params = abstract_params(cfg, mesh)
    opt_state = abstract_opt_state(params, mesh, optim)
    with_ref = loss.kl_weight > 0
    p_bytes, o_bytes = per_device_bytes(params), per_device_bytes(opt_state)
    # the KL term's frozen params (trainer: update.reference_copy, bfloat16 under mixed precision)
    reference = jax.eval_shape(lambda p: reference_copy(p, cfg), params)
    reference = jax.tree.map(lambda r, p: _spec(r.shape, r.dtype, p.sharding), reference, params)
    ref_bytes = per_device_bytes(reference) if with_ref else 0
    temperature = _replicated(mesh, (), jnp.float32)
    out: list[PhaseMemory] = []

    if "sample" in phases:
        held, decode_params = o_bytes + ref_bytes, params
        if sample_layout is not None:
            decode_params = abstract_params(cfg, mesh, *sample_layout)
            held += p_bytes
        (args, statics), (chunk_args, chunk_statics) = engine_programs(
            cfg, mesh, shapes, decode_params
        )
        admit, _ = _analyse("sample", continuous.admit, args, statics, held)
        decode, _ = _analyse("sample", continuous.decode_chunk, chunk_args, chunk_statics, held)
        out.append(max(admit, decode, key=lambda m: m.program))

    if "score" in phases:
        b, t = shapes.score_rows, shapes.score_len
        _check_rows(b, mesh, "score_rows")
        args = (
            params,
            _rows(mesh, (b, t), jnp.int32),  # tokens
            _rows(mesh, (b, t), jnp.int32),  # step ids
            _rows(mesh, (b,), jnp.int32),  # think_end_step
            temperature,
        )
        statics = dict(cfg=cfg, config=scoring or ScoringConfig(), max_steps=shapes.score_steps)
        out.append(_analyse("score", score_batch, args, statics, o_bytes + ref_bytes)[0])

    if not {"reference", "grad", "apply"} & set(phases):
        return out
    batch = train_batch(mesh, shapes)
    ref_logp = None
    # The running sums (update.zero_sums): gradients shaped and sharded like the params.
    pin = tuple(x.sharding for x in jax.tree.leaves(params))
    sums = jax.eval_shape(lambda p: zero_sums(p, loss), params)
    sums = (
        jax.tree.map(lambda g, p: _spec(g.shape, g.dtype, p.sharding), sums[0], params),
        jax.tree.map(lambda a: _replicated(mesh, a.shape, a.dtype), sums[1]),
    )
    sum_bytes = per_device_bytes(sums)
    if with_ref and "reference" in phases:
        args = (reference, batch, temperature)
        resident = p_bytes + o_bytes + sum_bytes  # the sum so far is held meanwhile
        memory, ref_logp = _analyse("reference", reference_logprobs, args, {"cfg": cfg}, resident)
        out.append(memory)
    if with_ref and ref_logp is None:  # not compiled, or refused: row-split like the batch
        ref_logp = _rows(mesh, (shapes.train_rows, shapes.train_len), jnp.float32)
    if "grad" in phases:
        args = (sums, params, batch, temperature, ref_logp)
        statics = dict(cfg=cfg, loss=loss, pin=pin)
        out.append(_analyse("grad", accumulate_gradients, args, statics, o_bytes + ref_bytes)[0])
    if "apply" in phases:
        state_pin = pin + tuple(x.sharding for x in jax.tree.leaves(opt_state))
        args = (params, opt_state, sums[0], _replicated(mesh, (), jnp.float32))
        statics = {"optim": optim, "pin": state_pin}
        out.append(_analyse("apply", apply_gradients, args, statics, ref_bytes)[0])
    return out
