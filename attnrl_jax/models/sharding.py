"""Device meshes and the logical-axis rules that place parameters, optimizer state and batches.

Parameters carry logical axis names (lm.logical_axes(cfg)); `Rules` map each name to mesh axes.
The defaults give FSDP over `fsdp` (the embedding dimension of every matrix) and tensor
parallelism over `tensor` (heads, MLP and vocabulary); batches split over `data` x `fsdp`.
A dimension that does not divide evenly by its mesh axes is replicated instead.

The decode layout (`decode_rules`, `decode_shardings`, `decode_layout`) is what the sampler
wants instead: every weight whole on each batch shard (replicated over data x fsdp), split over
`tensor` only, so the decode loop reads local weights and never all-gathers them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from attnrl_jax.models.config import ModelConfig

LOG = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]
DEFAULT_RULES: Rules = (
    ("batch", BATCH_AXES),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("layers", None),
    ("norm", None),
)


def make_mesh(
    data: int = 1, fsdp: int = 1, tensor: int = 1, devices: Sequence[Any] | None = None
) -> Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (default: all). One size may be -1 (the rest).

    Built with jax.sharding.Mesh, whose axes are Auto: the compiler propagates shardings from
    the parameters and batch placement.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(
            f"at most one mesh axis may be -1, got data={data} fsdp={fsdp} tensor={tensor}"
        )
    if -1 in sizes:
        known = math.prod(s for s in sizes if s != -1)
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices) or min(sizes) < 1:
        raise ValueError(
            f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} does not match "
            f"{len(devices)} devices"
        )
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def spec_for(
    logical_axes: Sequence[str | None],
    shape: Sequence[int],
    mesh: Mesh,
    rules: Rules = DEFAULT_RULES,
) -> PartitionSpec:
    """PartitionSpec for one array: each logical axis -> its mesh axes, if they divide it."""
    table = dict(rules)
    used: set[str] = set()
    parts = []
    for name, size in zip(logical_axes, shape, strict=True):
        axes = table.get(name) if name else None
        axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
        axes = tuple(a for a in axes if a in mesh.shape and mesh.shape[a] > 1 and a not in used)
        if axes and size % math.prod(mesh.shape[a] for a in axes) == 0:
            used.update(axes)
            parts.append(axes[0] if len(axes) == 1 else axes)
        else:
            parts.append(None)
    return PartitionSpec(*parts)


def logical_specs(
    cfg: ModelConfig, mesh: Mesh, rules: Rules = DEFAULT_RULES
) -> dict[str, PartitionSpec]:
    """Parameter path -> PartitionSpec for every parameter of cfg (lm.param_shapes' paths)."""
    from attnrl_jax.models import lm  # lazily: transfer.py (imported by kernels) imports this

    axes = lm.logical_axes(cfg)
    return {p: spec_for(axes[p], s, mesh, rules) for p, s in lm.param_shapes(cfg).items()}


def param_shardings(cfg: ModelConfig, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> dict:
    """NamedSharding for every parameter of cfg, nested like its params dict."""
    from attnrl_jax.models import lm

    specs = logical_specs(cfg, mesh, rules)
    return lm.unflatten({p: NamedSharding(mesh, s) for p, s in specs.items()})


def shard_params(params: dict, cfg: ModelConfig, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> dict:
    return jax.device_put(params, param_shardings(cfg, mesh, rules))


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Leading (batch) dimension over data x fsdp, the rest replicated."""
    axes = tuple(a for a in BATCH_AXES if mesh.shape.get(a, 1) > 1)
    lead = axes[0] if len(axes) == 1 else (axes or None)
    return NamedSharding(mesh, PartitionSpec(lead, *([None] * (ndim - 1))))


def optimizer_state_shardings(opt_state: Any, params: dict, shardings: dict, mesh: Mesh) -> Any:
    """Shardings for an optax state: every sub-tree shaped like the params (Adam's mu, nu, ...)
    is sharded like the params; everything else (step counts) is replicated."""
    params_def = jax.tree.structure(params)
    replicated = NamedSharding(mesh, PartitionSpec())

    def is_param_like(node):
        return jax.tree.structure(node) == params_def

    return jax.tree.map(
        lambda node: shardings if is_param_like(node) else replicated,
        opt_state,
        is_leaf=is_param_like,
    )


# ----- the decode layout -----

DECODE_LAYOUTS = ("auto", "replicated", "training")


def decode_rules(rules: Rules = DEFAULT_RULES) -> Rules:
    """`rules` with the batch axes (data, fsdp) taken out of every parameter axis: weights are
    replicated over the batch shards and keep only their `tensor` split. The `batch` rule
    itself (rows, KV cache) is unchanged."""

    def strip(axes):
        axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
        kept = tuple(a for a in axes if a not in BATCH_AXES)
        return kept[0] if len(kept) == 1 else (kept or None)

    return tuple((name, axes if name == "batch" else strip(axes)) for name, axes in rules)


def decode_dtype(cfg: ModelConfig) -> Any:
    """The dtype of the decode copy: the computation dtype when it is narrower than the weights'
    (every matmul, norm and embedding lookup casts weights to it first, so a copy cast once
    computes the same bits), else the weights' own."""
    compute, weights = jax.numpy.dtype(cfg.compute_dtype), jax.numpy.dtype(cfg.weight_dtype)
    return compute if compute.itemsize < weights.itemsize else weights


def decode_shardings(cfg: ModelConfig, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> dict:
    """NamedSharding for every parameter of cfg in the decode layout, nested like its params."""
    return param_shardings(cfg, mesh, decode_rules(rules))


def param_bytes_per_device(
    cfg: ModelConfig, mesh: Mesh, rules: Rules = DEFAULT_RULES, dtype: Any = None
) -> int:
    """Bytes of cfg's parameters one device holds under `rules` (the largest shard of each), in
    `dtype` (default: the weights' dtype)."""
    from attnrl_jax.models import lm

    itemsize = jax.numpy.dtype(dtype or cfg.weight_dtype).itemsize
    specs, total = logical_specs(cfg, mesh, rules), 0
    for path, shape in lm.param_shapes(cfg).items():
        shard = NamedSharding(mesh, specs[path]).shard_shape(shape)
        total += math.prod(shard) * itemsize
    return total


def decode_layout(
    cfg: ModelConfig,
    mesh: Mesh,
    rules: Rules = DEFAULT_RULES,
    layout: str = "auto",
    budget_bytes: int | None = None,
) -> tuple[Rules, Any]:
    """(rules, dtype) the sampler's parameters are placed with on `mesh`.

    "replicated": decode_rules(rules) in decode_dtype(cfg). Each device holds param_bytes /
    tensor in that dtype (DeepSeek-R1-Distill-Qwen in bfloat16: 1.5B 3.55 GB / tensor, 7B
    15.2 GB / tensor) on top of what else it holds (in training on shared devices: its FSDP
    share of the params, AdamW moments and reference, and the KV cache). "training": `rules`
    and the weights' dtype unchanged (weights split over fsdp: every decode step then gathers
    weights, or moves activations to the weight shards, across the batch axes). "auto":
    replicated when that costs at most `budget_bytes` per device (default: a quarter of the
    first device's memory when the backend reports it, else no limit), otherwise training,
    with one log line saying why. On 16 GiB v5e chips (a 4 GiB budget) the 1.5B model is
    replicated at any tensor size; the 7B needs tensor >= 4 (tensor 2: 7.1 GiB per device).
    """
    if layout not in DECODE_LAYOUTS:
        raise ValueError(f"decode layout {layout!r}: choose from {DECODE_LAYOUTS}")
    if layout == "training":
        return rules, cfg.weight_dtype
    dtype = decode_dtype(cfg)
    replicated = (decode_rules(rules), dtype)
    if layout == "replicated":
        return replicated
    if budget_bytes is None:
        try:
            stats = mesh.devices.flat[0].memory_stats() or {}
        except Exception:  # compile-only (topology) devices report nothing
            stats = {}
        limit = stats.get("bytes_limit")
        budget_bytes = limit // 4 if limit else None
    need = param_bytes_per_device(cfg, mesh, decode_rules(rules), dtype)
    if budget_bytes is not None and need > budget_bytes:
        LOG.warning(
            "decode layout: keeping the training layout (weights split over fsdp): replicated "
            "weights need %.2f GiB per device, over the budget of %.2f GiB",
            need / 2**30,
            budget_bytes / 2**30,
        )
        return rules, cfg.weight_dtype
    return replicated
