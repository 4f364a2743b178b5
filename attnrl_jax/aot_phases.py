"""Compiles the project's device programs for abstract inputs and reads their per-device memory.

Each phase lowers the real jitted function (no re-implementation) with jax.ShapeDtypeStruct
inputs carrying the NamedShardings the trainer gives them (built in aot_inputs.py), compiles it
for the mesh's devices and reads `compiled.memory_analysis()`. Nothing is allocated: 7B weights
exist only as shapes.

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
import re
import time
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from attnrl_jax.aot_inputs import (
    Shapes,
    abstract_array,
    abstract_opt_state,
    abstract_params,
    check_rows,
    engine_programs,
    per_device_bytes,
    replicated,
    row_split,
    train_batch,
)
from attnrl_jax.models.config import ModelConfig
from attnrl_jax.models.sharding import Rules
from attnrl_jax.rl.loss import LossConfig
from attnrl_jax.rl.run_config import OptimConfig
from attnrl_jax.rl.update import (
    accumulate_gradients,
    apply_gradients,
    reference_copy,
    reference_logprobs,
    zero_sums,
)
from attnrl_jax.sampling import continuous
from attnrl_jax.scoring.forward import ScoringConfig, score_batch

# Importable from here as before aot_inputs.py was split off (tests, the plan CLI).
__all__ = [
    "PHASES",
    "PhaseMemory",
    "Shapes",
    "abstract_opt_state",
    "abstract_params",
    "engine_programs",
    "exhausted_temporaries",
    "per_device_bytes",
    "plan_phases",
    "train_batch",
]

LOG = logging.getLogger(__name__)
PHASES = ("sample", "score", "reference", "grad", "apply")


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
        lambda a, s: abstract_array(a.shape, a.dtype, s),
        lowered.out_info,
        compiled.output_shardings,
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
    reference = jax.tree.map(
        lambda r, p: abstract_array(r.shape, r.dtype, p.sharding), reference, params
    )
    ref_bytes = per_device_bytes(reference) if with_ref else 0
    temperature = replicated(mesh, (), jnp.float32)
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
        check_rows(b, mesh, "score_rows")
        args = (
            params,
            row_split(mesh, (b, t), jnp.int32),  # tokens
            row_split(mesh, (b, t), jnp.int32),  # step ids
            row_split(mesh, (b,), jnp.int32),  # think_end_step
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
        jax.tree.map(lambda g, p: abstract_array(g.shape, g.dtype, p.sharding), sums[0], params),
        jax.tree.map(lambda a: replicated(mesh, a.shape, a.dtype), sums[1]),
    )
    sum_bytes = per_device_bytes(sums)
    if with_ref and "reference" in phases:
        args = (reference, batch, temperature)
        resident = p_bytes + o_bytes + sum_bytes  # the sum so far is held meanwhile
        memory, ref_logp = _analyse("reference", reference_logprobs, args, {"cfg": cfg}, resident)
        out.append(memory)
    if with_ref and ref_logp is None:  # not compiled, or refused: row-split like the batch
        ref_logp = row_split(mesh, (shapes.train_rows, shapes.train_len), jnp.float32)
    if "grad" in phases:
        args = (sums, params, batch, temperature, ref_logp)
        statics = dict(cfg=cfg, loss=loss, pin=pin)
        out.append(_analyse("grad", accumulate_gradients, args, statics, o_bytes + ref_bytes)[0])
    if "apply" in phases:
        state_pin = pin + tuple(x.sharding for x in jax.tree.leaves(opt_state))
        args = (params, opt_state, sums[0], replicated(mesh, (), jnp.float32))
        statics = {"optim": optim, "pin": state_pin}
        out.append(_analyse("apply", apply_gradients, args, statics, ref_bytes)[0])
    return out
