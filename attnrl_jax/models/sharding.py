"""Device meshes and the logical-axis rules that place parameters, optimizer state and batches.

Parameters carry logical axis names (lm.logical_axes(cfg)); `Rules` map each name to mesh axes.
The defaults give FSDP over `fsdp` (the embedding dimension of every matrix) and tensor
parallelism over `tensor` (heads, MLP and vocabulary); batches split over `data` x `fsdp`.
A dimension that does not divide evenly by its mesh axes is replicated instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from attnrl_jax.models.config import ModelConfig

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
