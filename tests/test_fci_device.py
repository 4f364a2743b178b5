"""The sampler's FCI stays on the device (sampling/fci_rows.py): the per-call buffer's scatter,
gather and merge against numpy; a sampler call (continuous engine and lock-step) reads no raw
FCI to the host, and reading Sample.fci makes one copy for the call; the device finish equals
the former host finish (kept here as the reference) on the rows a real call decoded.

A tiny random Qwen2 (2 layers) with a large separator set, so responses have many steps;
MAX_STEPS (24) is no other float array's last dimension, so a read of FCI shows in the shapes.
"""

import dataclasses

import jax
import numpy as np
import pytest
from hf_reference import make_hf_checkpoint
from jax.sharding import SingleDeviceSharding

from attnrl_jax.models import load_pretrained
from attnrl_jax.sampling import (
    Buckets,
    Request,
    SamplerConfig,
    SamplerFci,
    SamplingOptions,
    fci_rows,
    requests,
    sample,
    scheduler,
)
from attnrl_jax.sampling.fci_rows import FciBuffer
from attnrl_jax.scoring.fci import FciConfig, finish_fci
from attnrl_jax.scoring.steps import SeparatorIds, segment_batch

VOCAB = 101
MAX_STEPS = 24
SEPS = SeparatorIds(
    double_newline=tuple(range(0, 17)), newline=tuple(range(0, 34)), think_end=(60,)
)
ENGINE = SamplerConfig(
    Buckets(rows=(2, 4), lengths=(16, 32, 64, 128)),
    query_chunk=16,
    attention_chunk=16,
    decode_chunk=3,
    page_size=16,
)
LOCKSTEP = dataclasses.replace(
    ENGINE, buckets=Buckets(rows=(4,), lengths=(16, 32, 64, 128)), scheduler="lockstep"
)
CPU = SingleDeviceSharding(jax.devices()[0])


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = make_hf_checkpoint(
        tmp_path_factory.mktemp("fci_device") / "model",
        seed=3,
        vocab_size=VOCAB,
        num_hidden_layers=2,
        max_position_embeddings=128,
    )
    return load_pretrained(path)


def _requests():
    rng = np.random.default_rng(4)
    prompt = [rng.integers(34, VOCAB, n).tolist() for n in (3, 9, 14)]
    return [
        Request(prompt[0], n=3, max_new_tokens=30),
        Request(prompt[1], prefix_ids=prompt[2], n=2, max_new_tokens=12),  # a continuation
        Request(prompt[1], n=2, max_new_tokens=48),
        Request(prompt[2], n=2, max_new_tokens=2),  # short: rows without "\n\n"
    ]


def former_finish(raw, layouts, fresh, response_ids, option, num_layers):
    """The host finish the sampler used before its rows stayed on the device (numpy)."""
    rows, max_steps = raw.shape
    lengths = np.fromiter(map(len, response_ids), np.int64, rows)
    ids = np.concatenate([np.zeros(0, np.int64), *response_ids], dtype=np.int64, casting="unsafe")
    double = np.isin(ids, option.seps.double_newline)
    has_double = np.bincount(np.repeat(np.arange(rows), lengths)[double], minlength=rows) > 0
    counts = layouts.num_steps.astype(np.int64)
    exact = np.asarray(fresh, bool) & has_double & (counts + 1 <= max_steps)
    columns = np.arange(max_steps)
    mask = exact[:, None] & (columns <= counts[:, None])
    key_weight = np.ones((rows, max_steps), np.float32)
    if option.config.pooling == "mean":
        sizes = np.zeros((rows, max_steps), np.float32)
        sizes[:, 0] = layouts.prompt_len
        owner = np.repeat(np.arange(rows), counts)
        sizes[mask & (columns >= 1)] = layouts.step_sizes[exact[owner]]
        key_weight = np.where(mask, 1.0 / np.maximum(sizes, 1.0), 1.0).astype(np.float32)
    think = np.where(exact, layouts.think_end_step, -1).astype(np.int32)
    scores = finish_fci(raw * key_weight, think, option.config, num_layers)
    return np.where(mask, scores, 0.0).astype(np.float32), exact


def test_buffer_scatter_gather_and_merge_equal_numpy():
    option = SamplerFci(SEPS, FciConfig(), max_steps=6)
    calls = [Request([5], n=3), Request([5], prefix_ids=[7], n=2), Request([6], n=4)]
    buffer = FciBuffer.for_call(calls, option, floor=4, sharding=CPU)
    assert buffer.rows == 8 and buffer.raw.shape == (8, 6)  # 7 fresh rows -> 8
    assert FciBuffer.for_call(calls[1:2], option, 4, CPU) is None  # only continuations
    rng = np.random.default_rng(0)
    want = np.zeros((8, 6), np.float32)
    harvests = [[(0, 1), None, (1, 0), (2, 3)], [(2, 0), (0, 0), None, None], [None] * 4]
    for rows in harvests:  # slots of a chunk: the finished rows (continuations are dropped)
        raw = rng.random((4, 6)).astype(np.float32)
        dest = buffer.dest(rows)
        buffer.add(jax.device_put(raw, CPU), dest)
        for b, row in enumerate(rows):
            if row is not None and row[0] != 1:
                want[buffer.fresh_rows[row]] = raw[b]
    np.testing.assert_array_equal(np.asarray(buffer.raw), want)
    assert buffer.fresh_rows == {(0, 0): 0, (0, 1): 1, (0, 2): 2, (2, 0): 3, (2, 1): 4,
                                 (2, 2): 5, (2, 3): 6}  # fmt: skip
    scores = jax.device_put(want)
    np.testing.assert_array_equal(
        np.asarray(fci_rows.gather_rows(scores, [4, 0, 4])),
        np.r_[want[[4, 0, 4]], np.zeros((5, 6))],
    )
    values = [np.arange(1, 9, dtype=np.float32), np.ones(2, np.float32)]
    merged = np.asarray(fci_rows.with_rows(scores, [5, 1], values))
    expect = np.pad(want, ((0, 0), (0, 2)))
    expect[5], expect[1] = values[0], np.r_[values[1], np.zeros(6)]
    np.testing.assert_array_equal(merged, expect)


def _spy_reads(monkeypatch):
    """Every tree the sampler reads to the host, per module, and each CallFci host copy."""
    reads = {"sampler": [], "call_fci": 0}
    for module in (scheduler, requests):
        real = module.to_host

        def spy(tree, real=real):
            reads["sampler"].extend(jax.tree.leaves(tree))
            return real(tree)

        monkeypatch.setattr(module, "to_host", spy)
    real_host = fci_rows.to_host

    def spy_host(tree):
        reads["call_fci"] += 1
        return real_host(tree)

    monkeypatch.setattr(fci_rows, "to_host", spy_host)
    return reads


@pytest.mark.parametrize("config", [ENGINE, LOCKSTEP], ids=["continuous", "lockstep"])
def test_sampler_keeps_fci_on_the_device(model, monkeypatch, config):
    """No raw or finished FCI is read during the call; `Sample.fci` reads the call's one copy;
    the finished rows equal the former host finish of the same raw rows."""
    option = SamplerFci(SEPS, FciConfig(), max_steps=MAX_STEPS)
    raws = []
    real_finish = FciBuffer.finish

    def keep_raw(self, *args):
        raws.append(self.raw)  # the device buffer itself: read below, after the checks
        return real_finish(self, *args)

    monkeypatch.setattr(FciBuffer, "finish", keep_raw)
    reads = _spy_reads(monkeypatch)
    calls = _requests()
    options = SamplingOptions(max_new_tokens=48, seed=5, fci=option)
    samples = sample(model.params(), model.config, calls, options, config)
    fci_shaped = [
        x.shape for x in reads["sampler"] if np.ndim(x) == 2 and np.shape(x)[1] == MAX_STEPS
    ]
    assert reads["call_fci"] == 0 and fci_shaped == []
    call = samples[0].fci_row.call
    assert isinstance(call.scores, jax.Array) and call.scores.shape == (8, MAX_STEPS)
    fresh = [s for s in samples if not calls[s.request].prefix_ids]
    assert all(s.fci_row.call is call for s in fresh)
    assert all(s.fci_row is None and not s.has_fci for s in samples if s not in fresh)
    assert [s.fci_row.row for s in fresh] == list(range(7))  # request then sample order
    assert 2 <= sum(s.has_fci for s in fresh) < len(fresh)  # exact rows and fallback rows
    host = [s.fci for s in samples]
    assert reads["call_fci"] == 1  # one copy for the whole call
    assert [f is not None for f in host] == [s.has_fci for s in samples]

    raw = np.asarray(raws[0])[: len(fresh)]
    ids = [s.token_ids for s in fresh]
    layouts = segment_batch([len(calls[s.request].prompt_ids) for s in fresh], ids, SEPS)
    want, exact = former_finish(raw, layouts, np.ones(len(fresh), bool), ids, option, 2)
    assert exact.tolist() == [s.has_fci for s in fresh]
    assert np.count_nonzero(want) >= 5
    # the same float32 operations in the same order: equal up to XLA's rounding (1e-6)
    np.testing.assert_allclose(call.host()[: len(fresh)], want, rtol=1e-6, atol=0)
    assert not call.host()[len(fresh) :].any()
