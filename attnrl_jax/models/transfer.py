"""Host <-> device transfers that work the same with one process or many.

With several JAX processes (multi-host), a mesh spans devices this process cannot address:
`jax.device_put(numpy, sharding)` and `np.asarray(array)` then fail for arrays that are split
over other hosts. Every process of this project holds the same host data (the full batch), so
`to_device` builds the global array from this process's copy (each device takes its slice) and
`to_host` gathers a global array to every process.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec, Sharding

from attnrl_jax.models.sharding import batch_sharding


def to_device(x: Any, sharding: Sharding) -> jax.Array:
    """The global array with value x (the same numpy value on every process) and `sharding`."""
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def to_host(tree: Any) -> Any:
    """Numpy copies of a pytree of arrays, gathered from every process when they are split."""

    def one(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable:
            return np.asarray(jax.device_get(x))
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(one, tree)


def mesh_of(tree: Any) -> Mesh | None:
    """The mesh of the first leaf placed with a NamedSharding over more than one device."""
    for leaf in jax.tree.leaves(tree):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, NamedSharding) and sharding.mesh.devices.size > 1:
            return sharding.mesh
    return None


def rows_to_device(tree: Any, mesh: Mesh | None) -> Any:
    """A pytree of [B, ...] host arrays (a batch): each one's rows split over the mesh's data x
    fsdp axes when they divide B, replicated otherwise; on the default device without a mesh."""
    if mesh is None:
        return jax.device_put(tree)
    shards = mesh.shape.get("data", 1) * mesh.shape.get("fsdp", 1)

    def one(x):
        x = np.asarray(x)
        if x.ndim == 0 or x.shape[0] % shards:
            return to_device(x, NamedSharding(mesh, PartitionSpec()))
        return to_device(x, batch_sharding(mesh, x.ndim))

    return jax.tree.map(one, tree)


def replicated_to_device(tree: Any, mesh: Mesh | None) -> Any:
    """A pytree of host arrays, whole on every device of the mesh (the default device without
    one)."""
    if mesh is None:
        return jax.device_put(tree)
    return jax.tree.map(lambda x: to_device(x, NamedSharding(mesh, PartitionSpec())), tree)
