"""The decode layout (models/sharding.py): NativeEngine on a mesh of the 8 forced CPU devices puts
the params into it once per update, the compiled decode loop then gathers no weights and runs
its matmuls without collectives across the batch axes, and the tokens equal one device's.

Tolerances: sharded matmuls sum over `tensor` in another order than one device, so log-probs
agree to 1e-5, absolute or relative (float32 noise through two layers of std-0.3 weights:
seen up to 1.6e-5 on a log-prob of -2.6); tokens must be equal.
"""

import dataclasses
import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from attnrl_jax.compile_watch import CompileWatch
from attnrl_jax.loop_collectives import device_groups, loop_collectives
from attnrl_jax.models import sharding
from attnrl_jax.models.config import ModelConfig
from attnrl_jax.models.lm import init_params, param_shapes
from attnrl_jax.sampling import Buckets, Request, SamplerConfig, SamplingOptions, sample
from attnrl_jax.sampling.engine import NativeEngine
from attnrl_jax.sampling.requests import _pack, check_request
from attnrl_jax.sampling.sampler import sample_batch

# Sizes chosen so no weight dimension equals a row count: shapes in the HLO say what they are.
CFG = ModelConfig(
    vocab_size=96,
    hidden_size=48,
    intermediate_size=80,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=12,
    max_position_embeddings=64,
)
CONFIG = SamplerConfig(Buckets(rows=(8,), lengths=(16, 32)), query_chunk=16, attention_chunk=16)
REQUESTS = [Request([3, 9, 4, 1, 7], n=2), Request(list(range(20, 31)), n=2)]
REQUESTS += [Request([5, 2], n=4)]
OPTIONS = SamplingOptions(max_new_tokens=8, temperature=0.9, seed=7)


@pytest.fixture(scope="module")
def params():
    return init_params(CFG, jax.random.key(2), std=0.3)


@pytest.fixture(scope="module")
def mesh():
    assert jax.device_count() == 8, "conftest forces 8 CPU devices"
    return sharding.make_mesh(1, 4, 2)


def _same(ours, reference, tol=1e-5):
    for a, b in zip(ours, reference, strict=True):
        np.testing.assert_array_equal(a.token_ids, b.token_ids)
        np.testing.assert_allclose(a.logprobs, b.logprobs, rtol=tol, atol=tol)


def test_decode_rules_keep_only_the_tensor_split(mesh):
    rules = dict(sharding.decode_rules())
    assert rules["embed"] is None and rules["batch"] == sharding.BATCH_AXES
    assert rules["heads"] == rules["mlp"] == rules["vocab"] == "tensor"
    specs = sharding.logical_specs(CFG, mesh, sharding.decode_rules())
    assert all(a in (None, "tensor") for spec in specs.values() for a in spec)
    # Every matrix of CFG has one dimension split over tensor = 2; norms are replicated.
    whole = sum(np.prod(s) for s in param_shapes(CFG).values())
    norms = sum(np.prod(s) for p, s in param_shapes(CFG).items() if "norm" in p)
    expected = 4 * ((whole - norms) // 2 + norms)
    assert sharding.param_bytes_per_device(CFG, mesh, sharding.decode_rules()) == expected
    training = sharding.param_bytes_per_device(CFG, mesh)
    assert training < expected  # FSDP splits the embedding dimension 4 ways more


def test_auto_layout_falls_back_to_training_over_budget(mesh, caplog):
    mixed = CFG.replace(dtype="bfloat16", param_dtype="float32")
    rules, dtype = sharding.decode_layout(mixed, mesh)  # CPU reports no memory: no limit
    assert rules == sharding.decode_rules() and jnp.dtype(dtype) == jnp.bfloat16
    need = sharding.param_bytes_per_device(mixed, mesh, rules, dtype)
    assert sharding.decode_layout(mixed, mesh, budget_bytes=need)[0] == rules
    with caplog.at_level(logging.WARNING, "attnrl_jax.models.sharding"):
        rules, dtype = sharding.decode_layout(mixed, mesh, budget_bytes=need - 1)
    assert rules == sharding.DEFAULT_RULES and jnp.dtype(dtype) == jnp.float32
    assert "keeping the training layout" in caplog.text
    with pytest.raises(ValueError, match="decode layout 'fsdp': choose from"):
        sharding.decode_layout(CFG, mesh, layout="fsdp")


def test_engine_decodes_in_the_decode_layout_like_one_device(params, mesh):
    single = sample(params, CFG, REQUESTS, OPTIONS, CONFIG)
    trained = sharding.shard_params(params, CFG, mesh)  # the trainer's FSDP layout
    engine = NativeEngine(CFG, trained, dataclasses.replace(CONFIG, mesh=mesh))
    want = sharding.decode_shardings(CFG, mesh)
    for x, s in zip(jax.tree.leaves(engine.params), jax.tree.leaves(want), strict=True):
        assert x.sharding.is_equivalent_to(s, x.ndim)
    _same(engine.generate(REQUESTS, OPTIONS), single)

    # An update is placed the same way (by the program compiled for the first placement), and
    # decodes like one device with the new weights.
    newer = jax.tree.map(lambda x: 0.9 * x, params)
    update = sharding.shard_params(newer, CFG, mesh)
    with CompileWatch() as watch:
        engine.update_weights(update, version=1)
    assert watch.names == []
    for x, s in zip(jax.tree.leaves(engine.params), jax.tree.leaves(want), strict=True):
        assert x.sharding.is_equivalent_to(s, x.ndim)
    _same(engine.generate(REQUESTS, OPTIONS), sample(newer, CFG, REQUESTS, OPTIONS, CONFIG))
    # Params already in the layout (a rollout group's) are used as they are: no copy.
    engine.update_weights(engine.params, version=2)
    placed = engine.params
    engine.update_weights(placed, version=3)
    assert engine.params is placed


def test_decode_copy_in_the_computation_dtype_computes_the_same(params):
    # Rows over 8 devices, no tensor split: the same reductions as one device, so the only
    # difference is where float32 weights become bfloat16 (once, or at every matmul). Seen: a
    # few float32 ulps (XLA:CPU kernels for 1 row per device instead of 8); a cast that changed
    # the bits would show bfloat16-sized differences (~1e-2). Lock-step on both sides: the
    # continuous engine runs per batch shard under shard_map, whose bfloat16 programs XLA:CPU
    # rounds differently from one device's (1 bfloat16 ulp of the logits seen at token 0);
    # it is checked against one device in float32 (tests/test_engine_mesh.py).
    mixed = CFG.replace(dtype="bfloat16", param_dtype="float32")
    mesh = sharding.make_mesh(8, 1, 1)
    config = dataclasses.replace(CONFIG, scheduler="lockstep")
    engine = NativeEngine(mixed, params, dataclasses.replace(config, mesh=mesh))
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(engine.params))
    _same(
        engine.generate(REQUESTS, OPTIONS), sample(params, mixed, REQUESTS, OPTIONS, config), 1e-6
    )


def _decode_loop(params, mesh, rules):
    """The collectives of the compiled decode loop with params laid out by `rules`."""
    config = dataclasses.replace(CONFIG, mesh=mesh)
    contexts = [check_request(r, CFG) for r in REQUESTS]
    rows = [(i, s) for i, r in enumerate(REQUESTS) for s in range(r.n)]
    budgets = [OPTIONS.max_new_tokens] * len(rows)
    batch, new, length = _pack(rows, REQUESTS, contexts, budgets, OPTIONS, config)
    placed = sharding.shard_params(params, CFG, mesh, rules)
    text = sample_batch.lower(placed, batch, CFG, config, new, length).compile().as_text()
    return loop_collectives(text, mesh)


def test_decode_loop_gathers_no_weights(params, mesh):
    decode = _decode_loop(params, mesh, sharding.decode_rules())
    assert decode, "the loop's collectives were not found"
    assert not [c for c in decode if c.invariant and c.kind != "all-reduce"]
    matmuls = [c for c in decode if c.op_name.endswith("dot_general")]
    assert matmuls and not [c for c in matmuls if c.batch_axes]  # tensor-parallel only
    # The training layout makes the matmuls talk across fsdp every step (XLA:CPU moves the
    # activations to the weight shards rather than gathering weights): the check sees it.
    training = _decode_loop(params, mesh, sharding.DEFAULT_RULES)
    assert [c for c in training if c.op_name.endswith("dot_general") and c.batch_axes]


def test_loop_collectives_finds_weight_gathers_in_a_loop(mesh):
    # A scan over stacked layers whose weights are split over fsdp and gathered per layer:
    # every decode step gathers each layer again (XLA cannot hoist a gather that depends on
    # the inner loop's counter).
    @jax.jit
    def steps(w, x):
        def layer(x, wl):
            whole = jax.lax.with_sharding_constraint(wl, NamedSharding(mesh, PartitionSpec()))
            return jnp.tanh(x @ whole), None

        def body(carry):
            i, x = carry
            return i + 1, jax.lax.scan(layer, x, w)[0]

        return jax.lax.while_loop(lambda c: c[0] < 5, body, (0, x))[1]

    w = jax.device_put(jnp.ones((3, 64, 64)), NamedSharding(mesh, PartitionSpec(None, "fsdp")))
    x = jax.device_put(jnp.ones((8, 64)), NamedSharding(mesh, PartitionSpec(("data", "fsdp"))))
    found = loop_collectives(steps.lower(w, x).compile().as_text(), mesh)
    gathers = [c for c in found if c.kind == "all-gather" and c.invariant]
    assert gathers and all(c.batch_axes for c in gathers)
    assert sum(c.bytes for c in gathers) == 64 * 64 * 4  # one whole layer, float32


@pytest.mark.parametrize(
    "attrs, groups",
    [
        ("replica_groups={{0,1},{2,3}}, x", [[0, 1], [2, 3]]),
        ("replica_groups=[2,2]<=[4], x", [[0, 1], [2, 3]]),
        ("replica_groups=[2,2]<=[2,2]T(1,0), x", [[0, 2], [1, 3]]),
        ("replica_groups=mesh['axis_0'=2,'axis_1'=2] {'axis_0'}, x", [[0, 2], [1, 3]]),
        (
            "replica_groups=mesh['axis_0'=2,'axis_1'=2], device_ids=([2,2]T(1,0)) {'axis_1'}",
            [[0, 2], [1, 3]],
        ),
        ("channel_id=3, x", None),
    ],
)
def test_device_groups_reads_every_format(attrs, groups):
    assert device_groups(attrs) == groups


def test_benchmark_script_writes_rows_the_table_reads(tmp_path, capsys):
    from benchmarks import decode_layout
    from benchmarks.aot_targets import model_config
    from benchmarks.table_defs import decode_layout_table

    out = tmp_path / "decode_layout.json"
    args = ["--target", "cpu4", "--model", "tiny", "--mesh", "1x2x2", "--rows", "4"]
    args += ["--context", "16", "--new_tokens", "8", "--json", str(out)]
    assert decode_layout.main(args) == 0
    rows = json.loads(out.read_text())
    assert [r["layout"] for r in rows] == ["training", "replicated"]
    training, replicated = rows
    assert replicated["invariant_gathers"] == 0 and replicated["param_dtype"] == "bfloat16"
    assert replicated["batch_axis_collectives"] < training["batch_axis_collectives"]
    tiny = model_config("tiny")  # bfloat16 matmuls over float32 weights
    small = sharding.make_mesh(1, 2, 2, devices=jax.devices()[:4])
    for row, rules, dtype in (
        (training, sharding.DEFAULT_RULES, jnp.float32),
        (replicated, sharding.decode_rules(), jnp.bfloat16),
    ):
        held = sharding.param_bytes_per_device(tiny, small, rules, dtype)
        assert row["param_gib_per_device"] == held / 2**30
    assert decode_layout_table(rows) in capsys.readouterr().out
    # A second run of the same settings replaces its rows instead of adding to them.
    assert decode_layout.main(args) == 0
    assert len(json.loads(out.read_text())) == 2
