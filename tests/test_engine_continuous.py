"""The continuous-batching engine (scheduler="continuous") against the lock-step sampler on a
tiny random Qwen2: same tokens, log-probs, finish reasons and FCI for the same seed, whatever
the slot count, chunk length or page pool; page accounting; compile counts; bad input.

Four slots and chunks of 3 steps make most rows wait for a slot and be admitted mid-call; the
buckets are shared by every test here so the programs compile once.
"""

import dataclasses

import jax
import numpy as np
import pytest
from hf_reference import make_hf_checkpoint

from attnrl_jax.models import load_pretrained
from attnrl_jax.sampling import Buckets, Request, SamplerConfig, SamplerFci, SamplingOptions, sample
from attnrl_jax.sampling.scheduler import EngineStats
from attnrl_jax.scoring.fci import FciConfig
from attnrl_jax.scoring.steps import SeparatorIds

VOCAB = 101
MAX_POSITIONS = 128
# ragged decode attention (the default) in items of one page: a slot's items span several
# blocks of 4
ENGINE = SamplerConfig(
    Buckets(rows=(2, 4), lengths=(16, 32, 64, 128)),
    query_chunk=16,
    attention_chunk=16,
    decode_chunk=3,
    page_size=16,
    ragged_chunk=16,
)
GATHERED = dataclasses.replace(ENGINE, decode_attention="gathered")
LOCKSTEP = dataclasses.replace(ENGINE, buckets=Buckets(rows=(8,), lengths=(16, 32, 64, 128)))
LOCKSTEP = dataclasses.replace(LOCKSTEP, scheduler="lockstep")
SEPS = SeparatorIds(
    double_newline=tuple(range(0, 17)), newline=tuple(range(0, 34)), think_end=(60,)
)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = make_hf_checkpoint(
        tmp_path_factory.mktemp("engine") / "model",
        seed=7,
        vocab_size=VOCAB,
        max_position_embeddings=MAX_POSITIONS,
    )
    return load_pretrained(path)


def _prompts(lengths, seed=0, low=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(low, VOCAB, size=n).tolist() for n in lengths]


def _mix():
    """Mixed budgets, fan-out (n up to 5 > 4 slots), continuations, a prompt longer than one
    page, and a row the position limit cuts."""
    a, b, c, d, prefix, long = _prompts([3, 11, 20, 5, 6, MAX_POSITIONS - 4])
    return [
        Request(a, n=2, max_new_tokens=20),
        Request(b, n=5, max_new_tokens=4),
        Request(c, n=1, max_new_tokens=40),
        Request(d, n=3, max_new_tokens=1),
        Request(a, prefix, n=2, max_new_tokens=12, index=9),
        Request(c + c, n=2, max_new_tokens=9),
        Request(long, n=1),  # 4 positions left
    ]


def _same(ours, reference, fci=False, atol=1e-5):
    assert len(ours) == len(reference)
    for x, y in zip(ours, reference, strict=True):
        assert (x.request, x.sample) == (y.request, y.sample)
        np.testing.assert_array_equal(x.token_ids, y.token_ids)
        np.testing.assert_allclose(x.logprobs, y.logprobs, rtol=0, atol=atol)
        assert x.finish_reason == y.finish_reason
        if fci:
            assert (x.fci is None) == (y.fci is None)
            if x.fci is not None:
                np.testing.assert_allclose(x.fci, y.fci, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize(
    "options",
    [
        dict(max_new_tokens=24, temperature=0.0),
        dict(max_new_tokens=24, temperature=0.8, top_p=0.9, top_k=20, seed=3),
        dict(max_new_tokens=24, seed=5, eos_ids=(1, 2, 3, 4, 5)),
    ],
    ids=["greedy", "sampled", "eos"],
)
def test_equals_the_lockstep_sampler(model, options):
    requests = _mix()
    stats = EngineStats()
    ours = sample(
        model.params(), model.config, requests, SamplingOptions(**options), ENGINE, stats=stats
    )
    reference = sample(model.params(), model.config, requests, SamplingOptions(**options), LOCKSTEP)
    _same(ours, reference)
    assert len(ours[-1].token_ids) <= 4 and ours[-1].finish_reason in ("length", "eos")
    if "eos_ids" in options:
        assert {s.finish_reason for s in ours} == {"eos", "length"}
    assert stats.leaked_pages == 0
    assert stats.chunks > 5  # rows really waited for slots
    assert 0 < stats.token_steps <= stats.slot_steps


def test_fci_equals_the_lockstep_sampler(model):
    """FCI of fresh samples (fan-out split over admissions, rows that finish at admission)
    equals the lock-step sampler's, which test_sampler_fci checks against the scoring forward."""
    prompts = _prompts([3, 9, 14], seed=1, low=34)
    requests = [
        Request(prompts[0], n=5, max_new_tokens=40),
        Request(prompts[1], n=2, max_new_tokens=56),
        Request(prompts[2], n=3, max_new_tokens=1),
        Request(prompts[1], prefix_ids=prompts[2], n=2, max_new_tokens=20),
    ]
    fci = SamplerFci(SEPS, FciConfig(), max_steps=16)
    options = SamplingOptions(max_new_tokens=64, seed=11, fci=fci)
    ours = sample(model.params(), model.config, requests, options, ENGINE)
    reference = sample(model.params(), model.config, requests, options, LOCKSTEP)
    _same(ours, reference, fci=True)
    assert sum(s.fci is not None for s in ours) >= 4


def test_gathered_decode_attention_equals_the_lockstep_sampler_with_fci(model):
    """Tokens, log-probs and FCI as the lock-step sampler's with the gathered reader (every
    slot's pages up to the furthest slot's position), the option beside the ragged default."""
    prompts = _prompts([3, 9, 40], seed=1, low=34)
    requests = _mix()[:5] + [
        Request(prompts[0], n=3, max_new_tokens=40),
        Request(prompts[2], n=2, max_new_tokens=56),
    ]
    fci = SamplerFci(SEPS, FciConfig(), max_steps=16)
    options = SamplingOptions(max_new_tokens=64, temperature=0.8, seed=11, fci=fci)
    ours = sample(model.params(), model.config, requests, options, GATHERED)
    reference = sample(model.params(), model.config, requests, options, LOCKSTEP)
    _same(ours, reference, fci=True)
    assert sum(s.fci is not None for s in ours) >= 4


def test_prompt_pages_are_shared_and_all_returned(model):
    # A 40-token prompt: 2 full pages shared by the 4 samples, and each sample's own copy of
    # the partly filled third page, which its 8 new tokens fit in: 2 + 4 pages, not 4 x 3.
    prompt = _prompts([40], seed=2)[0]
    stats = EngineStats()
    options = SamplingOptions(max_new_tokens=8, seed=1)
    ours = sample(
        model.params(), model.config, [Request(prompt, n=4)], options, ENGINE, stats=stats
    )
    assert stats.peak_pages == 6 and stats.leaked_pages == 0
    assert stats.peak_needed == 40 + 4 * 8
    reference = sample(model.params(), model.config, [Request(prompt, n=4)], options, LOCKSTEP)
    _same(ours, reference)


def test_a_small_page_pool_makes_rows_wait_not_fail(model):
    requests = _mix()[:3]
    options = SamplingOptions(max_new_tokens=16, seed=2)
    small = dataclasses.replace(ENGINE, kv_pages=5)  # 4 usable: one or two rows at a time
    stats = EngineStats()
    ours = sample(model.params(), model.config, requests, options, small, stats=stats)
    _same(ours, sample(model.params(), model.config, requests, options, LOCKSTEP))
    assert stats.peak_pages <= 4 and stats.leaked_pages == 0
    with pytest.raises(
        ValueError,
        match=r"request 0: needs 6 KV pages of 16 positions; SamplerConfig.kv_pages=5 holds 4",
    ):
        sample(model.params(), model.config, [Request([1] * 70)], options, small)


def test_admit_rows_caps_each_admission_and_changes_no_token(model):
    requests = _mix()[:4]
    options = SamplingOptions(max_new_tokens=12, seed=4)
    capped, stats = dataclasses.replace(ENGINE, admit_rows=1), EngineStats()
    ours = sample(model.params(), model.config, requests, options, capped, stats=stats)
    # one-row prefills round differently in float32 (seen: 1.0e-5); tokens stay equal
    _same(ours, sample(model.params(), model.config, requests, options, LOCKSTEP), atol=5e-5)
    assert stats.most_admitted == 1 and stats.leaked_pages == 0
    uncapped = EngineStats()
    sample(model.params(), model.config, requests, options, ENGINE, stats=uncapped)
    assert uncapped.most_admitted == 4  # every slot at once without the cap


def test_a_call_of_few_rows_decodes_few_slots_with_the_same_tokens(model):
    # Slots: the smallest row bucket (2, 4) holding the call's rows, at most 4.
    a, b = _prompts([10, 5], seed=6)
    options = SamplingOptions(max_new_tokens=12, seed=8)
    alone, few = EngineStats(), EngineStats()
    ours = sample(model.params(), model.config, [Request(a)], options, ENGINE, stats=few)
    assert few.slots == 2 and few.slot_steps == 2 * 11  # token 0 comes from the prefill
    more = [Request(a), Request(b, n=2), Request(b, n=5, index=7)]  # 8 rows: 4 slots
    wide = sample(model.params(), model.config, more, options, ENGINE, stats=alone)
    assert alone.slots == 4
    _same(ours, wide[:1])
    _same(ours, sample(model.params(), model.config, [Request(a)], options, LOCKSTEP))


def test_steady_state_compiles_nothing(model):
    """Calls whose sizes fall in the buckets already used (any request count, budgets, n,
    settings) reuse the compiled admission and decode programs."""
    a, b, c, d = _prompts([10, 16, 3, 7], seed=4)
    # Warm-up: each admission shape (contexts x rows, powers of two up to the slots) once for
    # each slot count (2 slots: calls of 1-2 rows; 4 slots: 3 or more). Every call here has a
    # cache length of 32 (its longest row needs 17 to 32 positions). Rows of one budget
    # finish together, so the rows waiting behind them are admitted in one later admission.
    for requests in (
        [Request(a)],  # 2 slots: 1 x 1
        [Request(a, n=2)],  # 1 x 2
        [Request(a), Request(b)],  # 2 x 2
        [Request(a, n=4), Request(b, max_new_tokens=2)],  # 4 slots: 1 x 4, then 1 x 1
        [Request(a, n=4), Request(b, n=2, max_new_tokens=2)],  # 1 x 2
        [Request(a, n=4), Request(b, max_new_tokens=2), Request(c, max_new_tokens=2)],  # 2 x 2
        [Request(a, n=3), Request(b)],  # 2 x 4
        [Request(p) for p in (a, b, c, d)],  # 4 x 4
    ):
        sample(model.params(), model.config, requests, SamplingOptions(16), ENGINE)
    calls = [
        ([Request(c, n=2), Request(a, n=3, max_new_tokens=9)], dict(max_new_tokens=16)),
        ([Request(p, n=2) for p in (a, b, c)], dict(max_new_tokens=12, temperature=0.0)),
        ([Request(c, a[:4], n=1), Request(b[:5], n=5)], dict(max_new_tokens=12, top_p=0.9)),
        ([Request(d, n=7, max_new_tokens=2), Request(b)], dict(max_new_tokens=3, eos_ids=(1,))),
        ([Request(b, n=2)], dict(max_new_tokens=10, seed=2)),
        ([Request(c), Request(d, max_new_tokens=5)], dict(max_new_tokens=14)),
    ]
    compiles = []

    def listener(event, duration, **_):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        for requests, options in calls:
            sample(model.params(), model.config, requests, SamplingOptions(**options), ENGINE)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert compiles == []


@pytest.mark.parametrize(
    "request_, options, message",
    [
        (Request([1, 2], n=0), {}, "request 1: n must be >= 1"),
        (Request([]), {}, "request 1: the prompt is empty"),
        (Request([1] * MAX_POSITIONS), {}, r"request 1: prompt \+ prefix is 128 tokens"),
        (Request([1], max_new_tokens=0), {}, "request 1: max_new_tokens must be >= 1"),
        (Request([1]), dict(eos_ids=tuple(range(9))), "9 EOS ids, more than .*max_eos_ids=8"),
    ],
)
def test_bad_input_is_named_before_anything_compiles(model, request_, options, message):
    compiles = []

    def listener(event, duration, **_):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        with pytest.raises(ValueError, match=message):
            requests = [Request([5, 6]), request_]
            sample(model.params(), model.config, requests, SamplingOptions(**options), ENGINE)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert compiles == []


def test_bad_engine_settings_raise():
    with pytest.raises(ValueError, match="scheduler must be continuous or lockstep"):
        SamplerConfig(scheduler="fifo")
    with pytest.raises(ValueError, match="decode_chunk must be >= 1"):
        SamplerConfig(decode_chunk=0)
    with pytest.raises(ValueError, match="kv_pages must be >= 2"):
        SamplerConfig(kv_pages=1)
    with pytest.raises(ValueError, match="decode_attention must be gathered or ragged, got 'de"):
        SamplerConfig(decode_attention="dense")
    assert SamplerConfig().decode_attention == "ragged"  # faster in idle runs (BENCHMARKS.md)
