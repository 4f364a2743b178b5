"""The abstract inputs of the project's device programs: each program's arguments as
jax.ShapeDtypeStructs carrying the NamedShardings the trainer and the engine give them, for
`aot_phases` to lower and compile. Nothing is allocated: 7B weights exist only as shapes.

`Shapes` holds the padded sizes (what the buckets make); the functions below build params,
AdamW state, the engine's admission and decode-chunk arguments and the training batch.
"""

from __future__ import annotations

import dataclasses
import math
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
from attnrl_jax.rl.run_config import OptimConfig
from attnrl_jax.rl.update import DEVICE_FIELDS, LOSS_FIELDS, make_optimizer
from attnrl_jax.sampling import continuous
from attnrl_jax.sampling.buckets import Buckets
from attnrl_jax.sampling.continuous import Admission, Call
from attnrl_jax.sampling.sampler import DeviceBatch, SamplerConfig
from attnrl_jax.sampling.token_choice import SamplingParams


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


def abstract_array(shape, dtype, sharding) -> jax.ShapeDtypeStruct:
    """A ShapeDtypeStruct of `shape` and `dtype` placed with `sharding`."""
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
    return jax.tree.map(lambda a, s: abstract_array(a.shape, a.dtype, s), plain, shardings)


def _is_shape(x) -> bool:
    return isinstance(x, tuple) and all(isinstance(i, int) for i in x)


def abstract_opt_state(params: dict, mesh: Mesh, optim: OptimConfig) -> Any:
    """AdamW state shaped by optax's init, sharded by optimizer_state_shardings."""
    state = jax.eval_shape(make_optimizer(optim).init, params)
    shardings = jax.tree.map(lambda a: a.sharding, params)
    placed = optimizer_state_shardings(state, params, shardings, mesh)
    return jax.tree.map(lambda a, s: abstract_array(a.shape, a.dtype, s), state, placed)


def row_split(mesh: Mesh, shape, dtype) -> jax.ShapeDtypeStruct:
    """An array whose leading (row) axis is split over data x fsdp, as the trainer places it."""
    return abstract_array(shape, dtype, batch_sharding(mesh, len(shape)))


def replicated(mesh: Mesh, shape, dtype) -> jax.ShapeDtypeStruct:
    """An array every device holds whole (seeds, EOS ids, scalars)."""
    return abstract_array(shape, dtype, NamedSharding(mesh, PartitionSpec()))


def check_rows(rows: int, mesh: Mesh, what: str) -> None:
    """A ValueError naming `what` unless `rows` splits evenly over data x fsdp."""
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if rows % shards:
        raise ValueError(f"{what}={rows} must be a multiple of mesh data x fsdp = {shards}")


def sampler_batch(mesh: Mesh, shapes: Shapes, max_eos_ids: int) -> DeviceBatch:
    """A DeviceBatch placed like sampling/requests._place: rows split, seed and EOS replicated."""
    r, c = shapes.sample_rows, shapes.context_len
    check_rows(r, mesh, "sample_rows")
    row = lambda dtype: row_split(mesh, (r,), dtype)  # noqa: E731
    return DeviceBatch(
        contexts=row_split(mesh, (r, c), jnp.int32),
        context_lengths=row(jnp.int32),
        source=row(jnp.int32),
        budget=row(jnp.int32),
        request_index=row(jnp.int32),
        sample_index=row(jnp.int32),
        sampling=SamplingParams(row(jnp.float32), row(jnp.float32), row(jnp.int32)),
        seed=replicated(mesh, (), jnp.int32),
        eos_ids=replicated(mesh, (max_eos_ids,), jnp.int32),
    )


def engine_programs(
    cfg: ModelConfig, mesh: Mesh, shapes: Shapes, params: dict
) -> tuple[tuple, tuple]:
    """Abstract arguments of continuous.admit and decode_chunk (params: stacked, as
    abstract_params; unstacked here as the scheduler does): slots = sample_rows, a pool of
    slots x cache_len positions plus a trash page per batch shard, split over the shards."""
    b, c = shapes.sample_rows, shapes.context_len
    check_rows(b, mesh, "sample_rows")
    config = SamplerConfig(
        buckets=Buckets(rows=(b,)), mesh=mesh, admit_rows=shapes.admit_rows or None
    )
    shards, page_size = config.batch_shards, config.page_size
    # the largest admission: every slot, or admit_rows per shard (padded as the scheduler pads)
    a = b if not shapes.admit_rows else shards * min(b // shards, power_of_two(shapes.admit_rows))
    per_slot = round_up(shapes.cache_len, page_size) // page_size
    num_pages = config.kv_pages or b * per_slot + shards
    call = Call(
        replicated(mesh, (), jnp.int32), replicated(mesh, (config.max_eos_ids,), jnp.int32), None
    )
    statics = dict(
        cfg=cfg, config=config, slots=b, num_pages=num_pages, page_size=page_size,
        cache_length=per_slot * page_size, fci=None,
    )  # fmt: skip
    lowered = continuous.empty_state.lower(call, **statics)
    shardings = lowered.compile().output_shardings
    state = jax.tree.map(
        lambda a, s: abstract_array(a.shape, a.dtype, s), lowered.out_info, shardings
    )

    def layer(a):  # one layer of a stacked param: its sharding without the layers axis
        spec = PartitionSpec(*tuple(a.sharding.spec)[1:])
        return abstract_array(a.shape[1:], a.dtype, NamedSharding(mesh, spec))

    unstacked = {**params, "layers": [jax.tree.map(layer, params["layers"])] * cfg.num_layers}
    rows = lambda shape, dtype: row_split(mesh, shape, dtype)  # noqa: E731
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
    target = replicated(mesh, (), jnp.int32)
    program = dict(cfg=cfg, config=config, fci=None)
    admit = ((unstacked, state, batch, table, call), program)
    decode = ((unstacked, state, table, target, call), {**program, "steps": config.decode_chunk})
    return admit, decode


def train_batch(mesh: Mesh, shapes: Shapes) -> dict:
    """The stack_rows arrays run_updates sends to the device (update._device_batch)."""
    m, t, k = shapes.train_rows, shapes.train_len, shapes.train_nodes
    check_rows(m, mesh, "train_rows")
    dtypes = {"ancestors": jnp.bool_, "weights": jnp.float32, "advantages": jnp.float32}
    dtypes["old_logp"] = jnp.float32
    out = {}
    for name in DEVICE_FIELDS + LOSS_FIELDS:
        shape = (m, k, k) if name == "ancestors" else (m, t)
        out[name] = row_split(mesh, shape, dtypes.get(name, jnp.int32))
    return out
