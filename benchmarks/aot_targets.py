"""What the memory plan compiles for: model shapes, device targets and meshes on them.

Model shapes are the Hugging Face configs of DeepSeek-R1-Distill-Qwen-1.5B and -7B (Qwen2
architecture); only their shapes matter here, no weights are read. Targets are TPU slices,
whose devices come from libtpu's topology descriptions (jax ahead-of-time compilation for a
pod from a CPU host; needs `pip install "jax[tpu]==0.10.2"`), or N forced CPU devices, whose
compiled memory is the estimate for N GPUs (XLA:CPU, not XLA:GPU: fusion and layouts differ).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

from jax.sharding import Mesh

from attnrl_jax.models.config import ModelConfig
from attnrl_jax.models.sharding import make_mesh

GIB = 1024**3

# config.json of deepseek-ai/DeepSeek-R1-Distill-Qwen-{1.5B,7B}: both 28 layers, head_dim 128,
# rope_theta 10000, rms_norm_eps 1e-6, untied embeddings, max_position_embeddings 131072,
# bos 151646, eos 151643 (sliding_window is set but use_sliding_window is false).
_QWEN2_COMMON = dict(
    num_layers=28,
    head_dim=128,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    tie_word_embeddings=False,
    max_position_embeddings=131072,
    bos_token_id=151646,
    eos_token_id=151643,
)
MODELS: dict[str, ModelConfig] = {
    "1.5b": ModelConfig(
        vocab_size=151936,
        hidden_size=1536,
        intermediate_size=8960,
        num_heads=12,
        num_kv_heads=2,
        **_QWEN2_COMMON,
    ),
    "7b": ModelConfig(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_heads=28,
        num_kv_heads=4,
        **_QWEN2_COMMON,
    ),
    # A toy with the same structure, for tests and quick checks of the plan code itself.
    "tiny": ModelConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
    ),
}

# (computation dtype, parameter dtype). "f32" is what configs/base.py trains with today;
# "bf16" (bf16 matmuls, float32 weights and AdamW moments) is the usual mixed precision.
PRECISIONS = {"f32": ("float32", "float32"), "bf16": ("bfloat16", "float32")}


def model_config(name: str, precision: str = "bf16", remat: bool = False) -> ModelConfig:
    """The named model shape with the given numerics."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {sorted(PRECISIONS)}")
    dtype, param_dtype = PRECISIONS[precision]
    return MODELS[name].replace(dtype=dtype, param_dtype=param_dtype, remat=remat)


@dataclasses.dataclass(frozen=True)
class Target:
    """A set of devices to compile for. platform "tpu": `topology` names a libtpu topology
    (e.g. "v5e:2x4"); platform "cpu": the first `num_devices` CPU devices stand in for
    `hbm_gib`-sized accelerators (an estimate, see the module docstring)."""

    name: str
    platform: str
    num_devices: int
    hbm_gib: float
    topology: str = ""
    note: str = ""


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("v5e-8", "tpu", 8, 16.0, "v5e:2x4", "TPU v5e (v5litepod-8), 16 GiB HBM per chip"),
        Target("v5e-16", "tpu", 16, 16.0, "v5e:4x4", "TPU v5e (v5litepod-16), 16 GiB per chip"),
        Target("v5p-16", "tpu", 8, 95.0, "v5p:2x2x2", "TPU v5p-16 (8 chips), 95 GiB per chip"),
        Target("v5p-32", "tpu", 16, 95.0, "v5p:2x2x4", "TPU v5p-32 (16 chips), 95 GiB per chip"),
        Target("v6e-8", "tpu", 8, 32.0, "v6e:2x4", "TPU v6e (Trillium) 8 chips, 32 GiB per chip"),
        Target("h100x8", "cpu", 8, 80.0, "", "8 x H100 80 GB, estimated by XLA:CPU (8 devices)"),
        Target("cpu4", "cpu", 4, 80.0, "", "4 CPU devices (tests)"),
        # One real GPU and one CPU device: compiling the same program for both measures how far
        # the XLA:CPU estimate is from XLA:GPU.
        Target("gpu1", "gpu", 1, 80.0, "", "1 local GPU (XLA:GPU; run on a GPU machine)"),
        Target("cpu1", "cpu", 1, 80.0, "", "1 CPU device, the XLA:CPU twin of gpu1"),
    )
}

# Chips whose HBM a per-device total is compared against in the plan's table.
CHIP_HBM_GIB = {"v5e": 16.0, "v6e": 32.0, "H100": 80.0, "v5p": 95.0}


def quiet_libtpu() -> None:
    """Environment that keeps libtpu from probing for a local TPU (PITFALLS.md); call before
    the first topology query."""
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-8")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")


def target_devices(target: Target) -> list[Any]:
    """The target's devices: TPU topology devices (compile-only) or real CPU devices."""
    import jax

    if target.platform in ("cpu", "gpu"):
        devices = jax.devices(target.platform)
        if len(devices) < target.num_devices:
            raise RuntimeError(
                f"target {target.name} needs {target.num_devices} {target.platform} devices, "
                f"found {len(devices)} (CPU: set XLA_FLAGS=--xla_force_host_platform_device_count"
                f"={target.num_devices} before jax starts)"
            )
        return devices[: target.num_devices]
    quiet_libtpu()
    from jax.experimental import topologies

    try:
        topo = topologies.get_topology_desc(platform="tpu", topology_name=target.topology)
    except Exception as e:  # libtpu missing, or held by another process (its lockfile)
        raise RuntimeError(
            f"cannot describe TPU topology {target.topology!r} ({type(e).__name__}: {e}); "
            'ahead-of-time TPU compilation needs libtpu (pip install "jax[tpu]==0.10.2" in a '
            "separate virtual environment), and one process at a time may use it"
        ) from e
    devices = list(topo.devices)
    if len(devices) != target.num_devices:
        raise RuntimeError(
            f"topology {target.topology} has {len(devices)} devices, expected {target.num_devices}"
        )
    return devices


def parse_mesh(spec: str) -> tuple[int, int, int]:
    """'1x8x1' -> (data, fsdp, tensor)."""
    try:
        sizes = tuple(int(s) for s in spec.lower().split("x"))
    except ValueError:
        sizes = ()
    if len(sizes) != 3 or min(sizes) < 1:
        raise ValueError(f"mesh must be DATAxFSDPxTENSOR with positive sizes, got {spec!r}")
    return sizes  # type: ignore[return-value]


def target_mesh(target: Target, sizes: Sequence[int], devices: Sequence[Any]) -> Mesh:
    """The project's (data, fsdp, tensor) mesh over the target's devices."""
    data, fsdp, tensor = sizes
    if data * fsdp * tensor != target.num_devices:
        raise ValueError(
            f"mesh {data}x{fsdp}x{tensor} has {data * fsdp * tensor} devices; target "
            f"{target.name} has {target.num_devices}"
        )
    return make_mesh(data, fsdp, tensor, devices=devices)
