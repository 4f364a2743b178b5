"""The continuous engine on a mesh of the 8 forced CPU devices: slots and the KV page pool split
over the batch shards (data x fsdp), each shard with its own pages (sampling/shard_pages.py).
Tokens, log-probs and FCI equal one device's; each device holds 1 / (batch shards x tensor) of
the pool; the compiled decode chunk moves no pool data between shards.

Tolerances: as tests/test_decode_layout.py (sums over `tensor` in another order: log-probs to
1e-5); FCI to 1e-4 relative as the engine's single-device tests.
"""

import dataclasses
import re

import jax
import numpy as np
import pytest
from test_decode_layout import CFG  # the same tiny mesh-friendly shape

from attnrl_jax.aot_phases import (
    Shapes,
    abstract_params,
    engine_programs,
    per_device_bytes,
    plan_phases,
)
from attnrl_jax.loop_collectives import device_groups, loop_collectives
from attnrl_jax.models import sharding
from attnrl_jax.models.lm import init_params, unstack_layers
from attnrl_jax.models.transfer import replicated_to_device, rows_to_device
from attnrl_jax.sampling import (
    Buckets,
    Request,
    SamplerConfig,
    SamplerFci,
    SamplingOptions,
    continuous,
    sample,
)
from attnrl_jax.sampling.continuous import Call
from attnrl_jax.sampling.scheduler import EngineStats
from attnrl_jax.scoring.fci import FciConfig
from attnrl_jax.scoring.steps import SeparatorIds

CONFIG = SamplerConfig(
    Buckets(rows=(8,), lengths=(16, 32, 64)),
    query_chunk=16,
    attention_chunk=16,
    decode_chunk=3,
    page_size=8,
)
SEPS = SeparatorIds(
    double_newline=tuple(range(0, 17)), newline=tuple(range(0, 34)), think_end=(60,)
)
FCI = SamplerFci(SEPS, FciConfig(), max_steps=16)
OPTIONS = SamplingOptions(max_new_tokens=12, temperature=0.9, seed=5, fci=FCI)


def _requests():
    """Uneven budgets, fan-out wider than a shard's slots (n = 5), a continuation, a prompt
    over a page."""
    rng = np.random.default_rng(3)
    a, b, c, prefix = (rng.integers(20, 96, size=n).tolist() for n in (5, 11, 19, 6))
    return [
        Request(a, n=2, max_new_tokens=20),
        Request(b, n=5, max_new_tokens=4),
        Request(c, n=1, max_new_tokens=30),
        Request(a, prefix, n=2, max_new_tokens=9, index=7),
        Request(b + a, n=3, max_new_tokens=2),
        Request(c, n=2),
    ]


@pytest.fixture(scope="module")
def params():
    return init_params(CFG, jax.random.key(4), std=0.3)


@pytest.fixture(scope="module")
def single(params):
    return sample(params, CFG, _requests(), OPTIONS, CONFIG)


def _on(mesh):
    return dataclasses.replace(CONFIG, mesh=mesh, rules=sharding.decode_rules())


@pytest.mark.parametrize("shape", [(1, 4, 2), (1, 8, 1)])
def test_sharded_pools_generate_like_one_device(params, single, shape):
    mesh = sharding.make_mesh(*shape)
    config = _on(mesh)
    placed = jax.device_put(params, sharding.decode_shardings(CFG, mesh))
    stats = EngineStats()
    ours = sample(placed, CFG, _requests(), OPTIONS, config, stats=stats)
    assert len(ours) == len(single) == 15
    for x, y in zip(ours, single, strict=True):
        assert (x.request, x.sample, x.finish_reason) == (y.request, y.sample, y.finish_reason)
        np.testing.assert_array_equal(x.token_ids, y.token_ids)
        np.testing.assert_allclose(x.logprobs, y.logprobs, rtol=1e-5, atol=1e-5)
        assert (x.fci is None) == (y.fci is None)
        if x.fci is not None:
            np.testing.assert_allclose(x.fci, y.fci, rtol=1e-4, atol=1e-7)
    assert any(s.fci is not None for s in ours)
    assert stats.leaked_pages == 0 and stats.token_steps > 0


def test_each_device_holds_its_shard_of_the_pool_and_decodes_without_moving_it(params):
    mesh = sharding.make_mesh(1, 4, 2)
    config = _on(mesh)
    slots, per_slot, page_size, shards = 8, 8, 8, 4
    num_pages = slots * per_slot + shards  # each shard: its slots' pages and a trash page
    eos = np.full(config.max_eos_ids, -1, np.int32)
    call = Call(*replicated_to_device((np.int32(5), eos, FCI.separator_table(96)), mesh))
    static = FCI.static()
    state = continuous.empty_state(
        call, CFG, config, slots, num_pages, page_size, per_slot * page_size, static
    )
    placed = jax.jit(unstack_layers)(jax.device_put(params, sharding.decode_shardings(CFG, mesh)))
    table = rows_to_device(np.zeros((slots, per_slot), np.int32), mesh)
    target = replicated_to_device(np.int32(slots), mesh)
    decode = continuous.decode_chunk.lower(
        placed, state, table, target, call, CFG, config, 3, static
    ).compile()
    total = sum(x.nbytes for x in jax.tree.leaves(state.pool))

    def check(pool):  # pages over the 4 batch shards, heads over tensor = 2
        for device in mesh.devices.flat:
            held = sum(
                s.data.nbytes
                for x in jax.tree.leaves(pool)
                for s in x.addressable_shards
                if s.device == device
            )
            assert held == total // (shards * 2)

    check(state.pool)
    check(decode(placed, state, table, target, call)[0].pool)  # state is donated

    # In the decode loop the batch shards exchange one scalar (the finished-slot count that
    # ends the chunk); every other collective stays within a tensor group (matmul partial sums,
    # top-p's vocabulary sums), and none moves pool data.
    loop = re.compile(r'op_name="jit\(decode_chunk\)/shard_map/while"')
    found = loop_collectives(decode.as_text(), mesh, loop)
    assert found, "the loop's collectives were not found"
    across = [c for c in found if c.batch_axes]
    assert [(c.kind, c.shape) for c in across] == [("all-reduce", "s32[]")]
    # The largest is a hidden state per local slot (2 x 48 float32); one key page of each local
    # slot (2 x 12 x 8 float32 per device) would be twice that, a shard's pool 17x more.
    assert max(c.bytes for c in found) == (slots // shards) * CFG.hidden_size * 4


def test_the_memory_plan_compiles_the_engine_with_a_pool_per_shard():
    # aot_phases' "sample" phase: the engine's programs for 8 slots on 4 batch shards x tensor 2,
    # from abstract inputs; each device's part of the pool is 1/8 of it.
    mesh = sharding.make_mesh(1, 4, 2)
    shapes = Shapes(sample_rows=8, context_len=16, new_tokens=16, cache_len=32)
    params = abstract_params(CFG, mesh, sharding.decode_rules())
    (admit, _), (decode, _) = engine_programs(CFG, mesh, shapes, params)
    pool = admit[1].pool
    pages = 8 * 32 // 16 + 4  # 8 slots x 2 pages of 16 positions, a trash page per shard
    assert pool.keys[0].shape == (pages, CFG.num_kv_heads, CFG.head_dim, 16)
    total = sum(x.size * 4 for x in jax.tree.leaves(pool))
    assert per_device_bytes(pool) == total // 8
    (memory,) = plan_phases(
        CFG, mesh, shapes, ("sample",), sample_layout=(sharding.decode_rules(), None)
    )
    # Both programs read the whole state (donated: aliased to their outputs).
    state = per_device_bytes(decode[1])
    assert memory.arguments >= per_device_bytes(params) + state
    assert memory.aliased >= state

    # Admission prefills each shard's contexts into its own pages: its collectives (tensor
    # partial sums) all stay within one batch shard (device positions 2k, 2k + 1).
    text = continuous.admit.lower(*admit, cfg=CFG, config=_on(mesh), fci=None).compile().as_text()
    kinds = "all-gather|all-reduce|collective-permute|all-to-all|reduce-scatter"
    lines = [x for x in text.splitlines() if re.search(rf" ({kinds})(-start)?\(", x)]
    assert lines
    for line in lines:
        pairs = re.findall(r"\{(\d+),(\d+)\}", line) if "source_target_pairs" in line else []
        groups = [list(map(int, p)) for p in pairs] or device_groups(line) or [list(range(8))]
        assert all(len({d // 2 for d in g}) == 1 for g in groups), line
