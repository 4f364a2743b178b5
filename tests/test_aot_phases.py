"""The ahead-of-time phases of the plan (attnrl_jax/aot_phases.py, aot_inputs.py) on a tiny model
and 4 CPU devices: every phase compiles from abstract inputs, and the per-device accounting
matches the shards. The plan CLI itself: tests/test_plan.py."""

import math

import pytest

from attnrl_jax.aot_phases import (
    PHASES,
    Shapes,
    abstract_opt_state,
    abstract_params,
    exhausted_temporaries,
    per_device_bytes,
    plan_phases,
    train_batch,
)
from attnrl_jax.models.lm import logical_axes, param_shapes
from attnrl_jax.rl.settings import OptimConfig
from attnrl_jax.rl.update import DEVICE_FIELDS
from benchmarks.aot_targets import TARGETS, model_config, parse_mesh, target_devices, target_mesh

TINY = Shapes(
    sample_rows=4,
    context_len=16,
    new_tokens=16,
    cache_len=32,
    score_rows=2,
    score_len=32,
    score_steps=8,
    train_rows=2,
    train_len=32,
    train_nodes=8,
)


@pytest.fixture(scope="module")
def mesh():
    return target_mesh(TARGETS["cpu4"], (1, 2, 2), target_devices(TARGETS["cpu4"]))


@pytest.fixture(scope="module")
def cfg():
    return model_config("tiny", "f32", remat=True)


@pytest.fixture(scope="module")
def plan(cfg, mesh):
    return {m.phase: m for m in plan_phases(cfg, mesh, TINY)}


def test_per_device_bytes_is_the_shard_size(cfg, mesh):
    params = abstract_params(cfg, mesh)
    # Hand count for mesh fsdp=2, tensor=2: "embed" dims split over fsdp, heads/mlp/vocab over
    # tensor, layers and norms whole; every tiny dimension divides evenly.
    split = {"vocab": 2, "embed": 2, "heads": 2, "kv_heads": 2, "mlp": 2}
    axes = logical_axes(cfg)
    expected = sum(
        4 * math.prod(n // split.get(a, 1) for n, a in zip(shape, axes[path], strict=True))
        for path, shape in param_shapes(cfg).items()
    )
    assert per_device_bytes(params) == expected
    total = 4 * sum(math.prod(s) for s in param_shapes(cfg).values())
    assert expected < total  # sharded, not replicated


def test_every_phase_compiles_and_counts_its_arguments(cfg, mesh, plan):
    assert tuple(plan) == PHASES
    params = abstract_params(cfg, mesh)
    p_bytes = per_device_bytes(params)
    o_bytes = per_device_bytes(abstract_opt_state(params, mesh, OptimConfig()))
    batch = train_batch(mesh, TINY)
    # The compiler's argument sizes are our shard sizes: params + the inputs the program reads
    # (jit drops unused ones: the reference forward reads no loss fields), + the temperature.
    model_inputs = per_device_bytes({k: batch[k] for k in DEVICE_FIELDS})
    assert plan["reference"].arguments == p_bytes + model_inputs + 4
    # score: tokens and step ids [2, 32] int32 and think_end [2], rows split in 2; temperature.
    assert plan["score"].arguments == p_bytes + 2 * (4 * 32) + 4 + 4
    for m in plan.values():
        assert not m.exhausted and m.temporaries >= 0 and m.outputs > 0
        assert m.total == m.arguments + m.outputs - m.aliased + m.temporaries + m.resident
    # AdamW donates params and moments: the compiler aliases (most of) them to the outputs.
    apply = plan["apply"]
    assert p_bytes <= apply.aliased <= p_bytes + o_bytes
    # Resident while sampling: the AdamW moments and the KL reference params (kl_weight 0.001;
    # float32 compute here, so the reference copy is float32 too).
    assert plan["sample"].resident == o_bytes + p_bytes
    # The gradient program adds into the running sum, an argument it donates: the new sum
    # takes its buffers (aliased), sharded like the params, so it costs p_bytes once.
    grad = plan["grad"]
    assert grad.resident == o_bytes + p_bytes
    assert grad.aliased >= p_bytes
    assert grad.arguments >= 2 * p_bytes + per_device_bytes({k: batch[k] for k in DEVICE_FIELDS})
    # (XLA's output size also counts the output tuple's table, 8 bytes per output array.)
    assert 0 <= grad.outputs - grad.aliased <= 8 * 32
    # The reference forward runs while the sum so far is held.
    assert plan["reference"].resident - p_bytes - o_bytes == pytest.approx(p_bytes, abs=64)


def test_exhausted_compile_message_is_parsed():
    msg = (
        "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
        "temporaries (44.38G) exceeds available HBM (15.75G)."
    )
    assert exhausted_temporaries(msg) == int(44.38 * 1024**3)
    assert exhausted_temporaries("INTERNAL: something else") is None


def test_bad_mesh_and_rows_are_refused(cfg, mesh):
    with pytest.raises(ValueError, match="DATAxFSDPxTENSOR"):
        parse_mesh("8x1")
    with pytest.raises(ValueError, match="has 8 devices; target cpu4 has 4"):
        target_mesh(TARGETS["cpu4"], (1, 8, 1), target_devices(TARGETS["cpu4"]))
    with pytest.raises(ValueError, match="score_rows=3 must be a multiple of mesh data x fsdp"):
        plan_phases(cfg, mesh, Shapes(score_rows=3, score_len=32), phases=("score",))
