"""What the plan compiles for: a topology named on the command line ("v5e:2x4", "cpu:8",
"h100:8"), its devices (compile-only TPU devices from libtpu, or this machine's CPU / GPU
devices), the environment its backend needs, and the config's mesh on it. Bad input is a
PlanError naming it, raised before anything compiles."""

from __future__ import annotations

import dataclasses
import math
import os
import re

# HBM per chip (GiB) of the TPU generations libtpu can describe.
TPU_HBM_GIB = {"v4": 32.0, "v5e": 16.0, "v5p": 95.0, "v6e": 32.0}
# Memory per GPU (GiB) of the GPU kinds a plan may name ("h100:8"): NVIDIA's published product
# figures (H100 SXM and PCIe 80 GB, H200 141 GB, A100 40 GB and 80 GB, L4 24 GB), checked
# 2026-12 against NVIDIA's MLCommons system descriptions ("NVIDIA H200-SXM-141GB") and spec
# pages citing NVIDIA's datasheets. CUDA exposes a little less than the product figure; the
# plan's 90% limit leaves room for that. A kind compiles for this machine's GPUs (XLA:GPU).
GPU_HBM_GIB = {"h100": 80.0, "h200": 141.0, "a100-40": 40.0, "a100-80": 80.0, "l4": 24.0}
CPU_HBM_GIB = 80.0  # cpu:N stands in for N 80 GB GPUs unless --hbm_gib says otherwise
LOCAL = ("cpu", "gpu")  # this machine's devices, counted, not a TPU topology


class PlanError(ValueError):
    """Bad input to the plan: named in one line, found before anything compiles."""


@dataclasses.dataclass(frozen=True)
class Topology:
    """`name` as given ("v5e:2x4", "cpu:8", "h100:8"); platform "tpu", "cpu" or "gpu"."""

    name: str
    platform: str
    num_devices: int
    hbm_gib: float


def parse_topology(name: str, hbm_gib: float | None = None) -> Topology:
    """'v5e:2x4' (a TPU generation and its chip grid), 'cpu:8', a GPU kind and count ('h100:8',
    GPU_HBM_GIB), or 'gpu:1' with hbm_gib (a GPU of another kind)."""
    found = re.fullmatch(r"([a-z0-9-]+):(\d+(?:x\d+)*)", name.strip().lower())
    if found is None:
        raise PlanError(
            f"topology {name!r}: expected GENERATION:AxB[xC] (v5e:2x4), cpu:N or a GPU kind:N "
            f"({', '.join(GPU_HBM_GIB)})"
        )
    kind, dims = found.group(1), [int(d) for d in found.group(2).split("x")]
    devices = math.prod(dims)
    if kind in LOCAL or kind in GPU_HBM_GIB:
        if len(dims) != 1 or devices < 1:
            raise PlanError(f"topology {name!r}: {kind} takes one device count, e.g. {kind}:8")
        if kind == "gpu" and hbm_gib is None:  # 80 GiB was assumed before: wrong for most
            raise PlanError(
                f"topology {name!r}: name the GPU kind for its memory "
                f"({', '.join(f'{k}:{devices}' for k in GPU_HBM_GIB)}) or give --hbm_gib"
            )
        memory = GPU_HBM_GIB.get(kind, CPU_HBM_GIB)
        return Topology(name, "cpu" if kind == "cpu" else "gpu", devices, hbm_gib or memory)
    if kind not in TPU_HBM_GIB:
        raise PlanError(
            f"unknown TPU generation {kind!r} in topology {name!r}; known: {sorted(TPU_HBM_GIB)} "
            f"(or cpu:N, a GPU kind:N: {', '.join(GPU_HBM_GIB)})"
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
