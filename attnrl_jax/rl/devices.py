"""The run's devices: the training mesh and, with mesh.rollout_devices, the rollout group's own
mesh (built from a RunConfig after jax has started; ConfigError before anything compiles)."""

from __future__ import annotations

import math

from attnrl_jax.rl.run_config import ConfigError, RunConfig


def split_devices(run: RunConfig) -> tuple[list, list]:
    """(training devices, rollout devices): with mesh.rollout_devices = n > 0, each process gives
    its last n / process_count devices to the rollout group (so both groups span every process
    and every process runs both halves of the loop); ([all], []) with n = 0. A ConfigError for a
    split the devices or the mesh axes cannot make, before anything compiles."""
    import jax

    n, devices = run.mesh.rollout_devices, jax.devices()
    if n == 0:
        return devices, []
    count, processes = len(devices), jax.process_count()
    if n >= count:
        raise ConfigError(
            f"mesh.rollout_devices={n} leaves no training device ({count} devices in all)"
        )
    if n % processes:
        raise ConfigError(
            f"mesh.rollout_devices={n} must be a multiple of the process count {processes} "
            "(each process gives the same number of its devices to sampling)"
        )
    rollout = []
    for p in range(processes):
        local = [d for d in devices if d.process_index == p]
        rollout += local[len(local) - n // processes :]
    return [d for d in devices if d not in rollout], rollout


def mesh_sizes(run: RunConfig, num_devices: int) -> dict[str, int]:
    """run.mesh's axes with a -1 axis resolved against num_devices (the training devices); a
    ConfigError when the sizes do not fit them (the message gives the configured and resolved
    sizes)."""
    sizes = run.mesh.axes
    known = math.prod(s for s in sizes.values() if s != -1)
    resolved = {k: (num_devices // known if v == -1 else v) for k, v in sizes.items()}
    product = math.prod(resolved.values())
    fits = product == num_devices if -1 in sizes.values() else product <= num_devices
    if not fits or min(resolved.values()) < 1:
        split = run.mesh.rollout_devices
        where = (
            f"{num_devices} training devices (mesh.rollout_devices={split})"
            if split
            else f"{num_devices} visible devices"
        )
        shown = " x ".join(f"{k}={v}" for k, v in sizes.items())
        got = " x ".join(f"{k}={v}" for k, v in resolved.items())
        raise ConfigError(
            f"mesh {shown} (resolved: {got} = {product} devices) cannot use the {where}"
        )
    return resolved


def build_mesh(run: RunConfig):
    """The training mesh of run.mesh over the training devices (split_devices); a ConfigError for
    sizes that do not fit them, or a multi-host mesh that leaves devices out."""
    import jax

    from attnrl_jax.models import make_mesh

    train, rollout = split_devices(run)
    sizes = mesh_sizes(run, len(train))
    devices = train[: math.prod(sizes.values())]
    if jax.process_count() > 1 and len(devices) + len(rollout) != jax.device_count():
        raise ConfigError(
            f"mesh {sizes} uses {len(devices)} of the {jax.device_count()} devices of "
            f"{jax.process_count()} processes; a multi-host mesh must use every device (set "
            "one axis to -1)"
        )
    return make_mesh(**sizes, devices=devices)


def build_rollout_mesh(run: RunConfig):
    """The rollout group's mesh (rows over data, heads over mesh.tensor: the decode layout, no
    fsdp axis), or None with mesh.rollout_devices = 0."""
    from attnrl_jax.models import make_mesh

    _, rollout = split_devices(run)
    if not rollout:
        return None
    return make_mesh(data=-1, fsdp=1, tensor=max(run.mesh.tensor, 1), devices=rollout)
