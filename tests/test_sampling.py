"""The sampler end to end on a tiny random Qwen2: transformers parity, continuation, fan-out,
log-probs, stopping, compile counts and sharding."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hf_reference import hf_logits, make_hf_checkpoint
from scipy.stats import chisquare

from attnrl_jax.models import forward, load_pretrained, make_mesh
from attnrl_jax.models.attention import causal_attend
from attnrl_jax.models.lm import forward_hidden, unstack_layers
from attnrl_jax.sampling import (
    Buckets,
    Request,
    SamplerConfig,
    SamplingOptions,
    sample,
)
from attnrl_jax.sampling.requests import _pack, check_request
from attnrl_jax.sampling.sampler import sample_batch

VOCAB = 101
MAX_POSITIONS = 64
# Small buckets shared by every test here, so the programs compile once. Chunks of 16 run the
# chunked paths: prefill attention for contexts of 32 and 64, decode attention for caches > 16.
CONFIG = SamplerConfig(
    Buckets(rows=(4, 8, 16), lengths=(16, 32, 64)), query_chunk=16, attention_chunk=16
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("sampler") / "model"
    return make_hf_checkpoint(path, seed=3, max_position_embeddings=MAX_POSITIONS)


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_pretrained(checkpoint)


def _prompts(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, VOCAB, size=n).tolist() for n in lengths]


def _run(model, requests, config=CONFIG, **options):
    return sample(model.params(), model.config, requests, SamplingOptions(**options), config)


_forward = jax.jit(forward, static_argnums=1)


def _score(model, context, tokens, temperature=1.0):
    """log p(token) for each generated token, from one full forward over context + tokens
    (right-padded to MAX_POSITIONS, so one compiled forward serves every test)."""
    sequence = np.zeros((1, MAX_POSITIONS), np.int32)
    n = len(context) + len(tokens)
    sequence[0, :n] = list(context) + list(tokens)
    logits = np.asarray(_forward(model.params(), model.config, jnp.asarray(sequence)))[0]
    logprobs = np.asarray(jax.nn.log_softmax(logits / temperature, axis=-1))
    start = len(context) - 1
    return logprobs[start + np.arange(len(tokens)), tokens]


def test_greedy_equals_transformers_generate(checkpoint, model):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(checkpoint)).eval()
    prompts = _prompts([3, 11, 20, 1])
    samples = _run(model, [Request(p) for p in prompts], max_new_tokens=24, temperature=0.0)
    for prompt, s in zip(prompts, samples, strict=True):
        ids = torch.tensor([prompt])
        with torch.no_grad():
            out = hf.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=24,
                eos_token_id=None,
                pad_token_id=0,
            )
        assert s.token_ids.tolist() == out[0, len(prompt) :].tolist()
        assert s.finish_reason == "length"
        np.testing.assert_allclose(s.logprobs, _score(model, prompt, s.token_ids), atol=1e-4)


def test_sampled_log_probs_equal_the_models_scoring(model):
    prompts = _prompts([5, 17, 9], seed=1)
    requests = [Request(p, n=2) for p in prompts]
    samples = _run(model, requests, max_new_tokens=16, temperature=0.7, top_k=10, seed=5)
    assert len(samples) == 6
    for s in samples:
        expected = _score(model, prompts[s.request], s.token_ids, temperature=0.7)
        np.testing.assert_allclose(s.logprobs, expected, atol=1e-4)


def test_continuation_equals_generating_from_prompt_plus_prefix(model):
    prompt, prefix, other = _prompts([7, 12, 30], seed=2)
    requests = [
        Request(prompt, prefix, n=2, index=42),  # continue a response prefix
        Request(other, n=3),  # fresh samples of another prompt, same batch
        Request(prompt + prefix, n=2, index=42),  # the same context as one prompt
        Request(prompt, n=1),  # a fresh sample of the first prompt
    ]
    samples = _run(model, requests, max_new_tokens=20, seed=9)
    by_request = {}
    for s in samples:
        by_request.setdefault(s.request, []).append(s)
    for continued, whole in zip(by_request[0], by_request[2], strict=True):
        np.testing.assert_array_equal(continued.token_ids, whole.token_ids)
        np.testing.assert_allclose(continued.logprobs, whole.logprobs, atol=1e-5)
    assert [len(by_request[i]) for i in range(4)] == [2, 3, 2, 1]


def test_fan_out_rows_reproduce_whatever_the_batch(model):
    prompt, *others = _prompts([9, 4, 25, 14, 6], seed=3)
    alone = _run(model, [Request(prompt, n=4, index=0)], max_new_tokens=12, seed=1)
    crowd = [Request(p, n=3) for p in others] + [Request(prompt, n=4, index=0)]
    mixed = [s for s in _run(model, crowd, max_new_tokens=30, seed=1) if s.request == 4]
    for a, b in zip(alone, mixed, strict=True):
        np.testing.assert_array_equal(a.token_ids, b.token_ids[:12])
        np.testing.assert_allclose(a.logprobs, b.logprobs[:12], atol=1e-5)
    assert len({tuple(s.token_ids) for s in alone}) == 4  # the four samples differ
    reseeded = _run(model, [Request(prompt, n=4, index=0)], max_new_tokens=12, seed=2)
    for a, b in zip(alone, reseeded, strict=True):
        assert not np.array_equal(a.token_ids, b.token_ids)


def test_rows_stop_at_eos_budget_or_the_model_limit(model):
    prompt, long_prompt = _prompts([6, MAX_POSITIONS - 5], seed=4)
    greedy, limited = _run(
        model, [Request(prompt), Request(long_prompt)], max_new_tokens=16, temperature=0.0
    )
    assert len(greedy.token_ids) == 16
    assert len(limited.token_ids) == 5 and limited.finish_reason == "length"  # 64 positions
    tokens = greedy.token_ids.tolist()
    first = next(i for i, t in enumerate(tokens) if i >= 3 and t not in tokens[:i])
    eos = tokens[first]  # first seen after the short row's budget of 3
    stopped, short = _run(
        model,
        [Request(prompt), Request(prompt, max_new_tokens=3)],
        max_new_tokens=16,
        temperature=0.0,
        eos_ids=(VOCAB - 1, eos),
    )
    assert stopped.token_ids.tolist() == tokens[: first + 1]
    assert stopped.finish_reason == "eos"
    assert short.token_ids.tolist() == tokens[:3]
    assert short.finish_reason == "length"


def test_first_token_frequencies_match_the_models_softmax(checkpoint, model):
    prompt = _prompts([8], seed=5)[0]
    samples = _run(model, [Request(prompt, n=2048)], max_new_tokens=1, seed=3)
    counts = np.bincount([int(s.token_ids[0]) for s in samples], minlength=VOCAB)
    logits = hf_logits(checkpoint, np.asarray([prompt]))[0, -1].astype(np.float64)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    expected = 2048 * probs
    big = expected >= 5  # pool the rare tokens into one bin
    observed = np.append(counts[big], counts[~big].sum())
    expected = np.append(expected[big], expected[~big].sum())
    assert chisquare(observed, expected).pvalue > 1e-3


def test_new_request_sizes_within_buckets_compile_nothing(model):
    # The lock-step scheduler (the continuous engine's steady state: test_engine_continuous.py).
    # Every call below pads to 4 contexts x 8 rows, context 16, 16 new tokens, cache 32.
    a, b, c, d = _prompts([10, 16, 3, 9])
    calls = [
        ([Request(a, n=3), Request(d, n=3)], dict(max_new_tokens=16)),
        ([Request(p, n=2) for p in (a, b, c, d)], dict(max_new_tokens=16, temperature=0.0)),
        ([Request(c, d[:4], n=3), Request(d[:5], c, n=3)], dict(max_new_tokens=12, top_p=0.9)),
        (
            [Request(a, n=2, max_new_tokens=9), Request(c, n=2), Request(b[:7], n=2)],
            dict(max_new_tokens=13, top_k=5, seed=7, eos_ids=(7, 8, 9)),
        ),
    ]
    compiles = []

    def listener(event, duration, **_):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)

    lockstep = dataclasses.replace(CONFIG, scheduler="lockstep")
    _run(model, calls[0][0], lockstep, **calls[0][1])  # warm-up: the one compile
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        for requests, options in calls:
            _run(model, requests, lockstep, **options)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert compiles == []


def test_unstacked_layers_compute_the_same_forward(model):
    tokens = jnp.asarray(_prompts([13, 13], seed=6))
    positions = jnp.broadcast_to(jnp.arange(13), tokens.shape)

    @jax.jit
    def hidden(params):
        attend = causal_attend(jnp.ones_like(tokens))
        return forward_hidden(params, model.config, tokens, positions, attend)[0]

    stacked = hidden(model.params())
    unstacked = hidden(unstack_layers(model.params()))
    np.testing.assert_allclose(np.asarray(unstacked), np.asarray(stacked), atol=1e-5)


def test_sharded_sampling_equals_one_device(checkpoint, model):
    assert jax.device_count() == 8, "conftest forces 8 CPU devices"
    mesh = make_mesh(2, 2, 2)
    sharded = load_pretrained(checkpoint, mesh=mesh)
    config = dataclasses.replace(CONFIG, mesh=mesh)
    requests = [Request(p, n=2) for p in _prompts([6, 13, 3], seed=7)]
    requests.append(Request(*_prompts([5, 9], seed=8), n=2))
    options = SamplingOptions(max_new_tokens=10, temperature=0.9, seed=11)
    ours = sample(sharded.params(), sharded.config, requests, options, config)
    single = sample(model.params(), model.config, requests, options, CONFIG)
    for a, b in zip(ours, single, strict=True):
        np.testing.assert_array_equal(a.token_ids, b.token_ids)
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)

    # The cache is sharded too: the compiled program holds only per-device blocks of it
    # (8 rows over data x fsdp = 4, 2 KV heads over tensor = 2), never a whole layer.
    contexts = [check_request(r, model.config) for r in requests]
    rows = [(i, s) for i in range(len(requests)) for s in range(2)]
    batch, new_tokens, length = _pack(rows, requests, contexts, [10] * 4, options, config)
    program = sample_batch.lower(
        sharded.params(), batch, sharded.config, config, new_tokens, length
    )
    hlo = program.compile().as_text()
    d = model.config.head_dim
    assert f"f32[2,1,{d},{length}]" in hlo and f"f32[2,1,{length},{d}]" in hlo
    assert f"f32[8,2,{d},{length}]" not in hlo and f"f32[8,2,{length},{d}]" not in hlo
