"""The scoring forward against materialised references.

FCI: transformers' eager attention maps (output_attentions) fed to a literal numpy version of
ALGORITHM.md section 2 (step matrix a = W A W^T, then sums over j >= k + delta), and a
hand-computed case. Log-probs and entropies: transformers' logits.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from hf_reference import make_hf_checkpoint

from attnrl_jax.models import load_pretrained
from attnrl_jax.scoring.fci import FciConfig, fci_attend, finish_fci, initial_state
from attnrl_jax.scoring.forward import (
    ScoringConfig,
    length_bucket,
    score_batch,
    score_sequences,
)
from attnrl_jax.scoring.steps import SeparatorIds, pad_step_ids, segment_steps

NL2, NL, THINK = 7, 8, 9
SEPS = SeparatorIds(double_newline=(NL2,), newline=(NL2, NL), think_end=(THINK,))
VOCAB = 101
CHUNKS = dict(query_chunk=16, logit_chunk=16)  # several chunks per 64-token row


def _prompt(rng, length):
    return rng.integers(10, VOCAB, length).tolist()


def _response(rng, length, separators=(), newlines=(), think=None):
    ids = rng.integers(10, VOCAB, length)
    ids[list(separators)] = NL2
    ids[list(newlines)] = NL
    if think is not None:
        ids[think] = THINK
    return ids.tolist()


@pytest.fixture(scope="module")
def cases():
    """(prompt, response) pairs covering the step layouts; 14 to 45 tokens (one 64 bucket)."""
    rng = np.random.default_rng(0)
    return [
        # "\n\n" steps, </think> in step 7
        (_prompt(rng, 5), _response(rng, 30, [3, 6, 9, 13, 15, 20, 24], [], 22)),
        # no "\n\n": "\n" fallback
        (_prompt(rng, 3), _response(rng, 12, [], [2, 5, 6, 10])),
        # no separator at all: every token is a step
        (_prompt(rng, 8), _response(rng, 6)),
        # many steps, </think> early (in step 2): everything from step 2 on is masked
        (_prompt(rng, 2), _response(rng, 43, range(1, 43, 3), [], 4)),
        # many steps, no </think>, a final step without separator
        (_prompt(rng, 6), _response(rng, 34, range(0, 30, 2))),
    ]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = make_hf_checkpoint(
        tmp_path_factory.mktemp("scoring") / "gqa", seed=3, vocab_size=VOCAB, num_hidden_layers=3
    )
    return path, load_pretrained(path)


@pytest.fixture(scope="module")
def reference(model, cases):
    """Per case: eager attention maps [L, H, T, T] and logits [T, V], float64, unpadded."""
    import torch
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(model[0]), attn_implementation="eager").eval()
    out = []
    with torch.no_grad():
        for prompt, response in cases:
            o = hf(torch.tensor([prompt + response]), output_attentions=True)
            attn = np.stack([a[0].double().numpy() for a in o.attentions])
            out.append((attn, o.logits[0].double().numpy()))
    return out


def reference_fci(attn: np.ndarray, layout, config: FciConfig) -> np.ndarray:
    """ALGORITHM.md section 2 literally, from attention maps attn [L, H, T, T]."""
    n_steps, t = len(layout.bounds), attn.shape[-1]
    w = np.zeros((n_steps, t))
    for k, (start, end) in enumerate(layout.bounds):
        w[k, start:end] = 1.0 / (end - start) if config.pooling == "mean" else 1.0
    a = np.einsum("jt,lhtu,ku->lhjk", w, attn, w)
    y = np.stack([a[:, :, k + config.delta :, k].sum(-1) for k in range(n_steps)], axis=-1)
    if config.layers is not None:
        y = y[list(config.layers)]
    fci = y.max(axis=(0, 1)) if config.aggregation == "max" else y.mean(axis=(0, 1))
    fci[:2] = 0.0
    if layout.think_end_step is not None:
        fci[layout.think_end_step :] = 0.0
    return fci


@pytest.fixture(scope="module")
def scored(model, cases):
    params, cfg = model[1].params(), model[1].config
    prompts, responses = zip(*cases, strict=True)
    return score_sequences(params, cfg, ScoringConfig(**CHUNKS), prompts, responses, SEPS, 8)


def test_layouts_cover_the_fallbacks(scored, cases):
    layouts = [s.layout for s in scored]
    assert layouts[0].num_steps == 8 and layouts[0].think_end_step == 7
    assert layouts[1].num_steps == 5  # "\n" fallback
    assert layouts[2].num_steps == 6  # every token a step
    assert layouts[3].think_end_step == 2


def test_fci_matches_eager_attention_reference(scored, reference):
    for s, (attn, _) in zip(scored, reference, strict=True):
        expected = reference_fci(attn, s.layout, FciConfig())
        assert s.fci.shape == (s.layout.num_steps + 1,)
        np.testing.assert_allclose(s.fci, expected, rtol=1e-4, atol=1e-7)
    assert any((s.fci > 0).sum() >= 3 for s in scored)  # not trivially all masked


def test_logprobs_and_entropies_match_transformers(scored, cases, reference):
    for s, (prompt, response), (_, logits) in zip(scored, cases, reference, strict=True):
        logp = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
        predictors = np.arange(len(prompt) - 1, len(prompt) + len(response) - 1)
        np.testing.assert_allclose(s.logprobs, logp[predictors, response], rtol=1e-4, atol=1e-5)
        entropy = -(np.exp(logp) * logp).sum(-1)[predictors]
        np.testing.assert_allclose(s.entropies, entropy, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "fci",
    [
        FciConfig(pooling="sum"),
        FciConfig(aggregation="mean"),
        FciConfig(layers=(0, 2)),
        FciConfig(delta=1),
        FciConfig(pooling="sum", aggregation="mean", delta=2, layers=(1,)),
    ],
    ids=["sum", "mean_agg", "layers_0_2", "delta1", "combined"],
)
def test_fci_variants_match_reference(model, cases, reference, fci):
    params, cfg = model[1].params(), model[1].config
    prompts, responses = zip(*cases, strict=True)
    config = ScoringConfig(fci=fci, **CHUNKS)
    for s, (attn, _) in zip(
        score_sequences(params, cfg, config, prompts, responses, SEPS, 8), reference, strict=True
    ):
        np.testing.assert_allclose(s.fci, reference_fci(attn, s.layout, fci), rtol=1e-4, atol=1e-7)


def test_chunk_sizes_and_batching_do_not_change_results(model, cases, scored):
    params, cfg = model[1].params(), model[1].config
    prompts, responses = zip(*cases, strict=True)
    config = ScoringConfig(query_chunk=512, logit_chunk=4)  # one query chunk; tiny logit chunks
    for a, b in zip(
        scored, score_sequences(params, cfg, config, prompts, responses, SEPS, 2), strict=True
    ):
        np.testing.assert_allclose(a.fci, b.fci, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(a.logprobs, b.logprobs, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a.entropies, b.entropies, rtol=1e-5, atol=1e-6)


def test_without_fci_gives_the_same_logprobs(model, cases, scored):
    params, cfg = model[1].params(), model[1].config
    prompts, responses = zip(*cases, strict=True)
    config = ScoringConfig(with_fci=False, **CHUNKS)
    for a, b in zip(
        scored, score_sequences(params, cfg, config, prompts, responses, SEPS, 8), strict=True
    ):
        assert b.fci is None
        np.testing.assert_allclose(a.logprobs, b.logprobs, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(a.entropies, b.entropies, rtol=1e-6, atol=1e-6)


def test_temperature_scales_logits(model, cases, reference):
    """Log-probs and entropies of softmax(logits / T), the sampler's distribution at T."""
    params, cfg = model[1].params(), model[1].config
    prompts, responses = zip(*cases, strict=True)
    config = ScoringConfig(with_fci=False, **CHUNKS)  # compiled by the test above
    scored = score_sequences(params, cfg, config, prompts, responses, SEPS, 8, temperature=0.7)
    for s, (prompt, response), (_, logits) in zip(scored, cases, reference, strict=True):
        scaled = logits / 0.7
        logp = scaled - np.logaddexp.reduce(scaled, axis=-1, keepdims=True)
        predictors = np.arange(len(prompt) - 1, len(prompt) + len(response) - 1)
        np.testing.assert_allclose(s.logprobs, logp[predictors, response], rtol=1e-4, atol=1e-5)
        entropy = -(np.exp(logp) * logp).sum(-1)[predictors]
        np.testing.assert_allclose(s.entropies, entropy, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        score_sequences(params, cfg, config, prompts, responses, SEPS, 8, temperature=0.0)


def test_no_recompilation_within_buckets(model):
    params, cfg = model[1].params(), model[1].config
    rng = np.random.default_rng(1)
    sizes = []
    for length in (40, 45, 50):  # one 64-token bucket, 64 step slots (every token is a step)
        response = _response(rng, length)
        score_sequences(params, cfg, ScoringConfig(**CHUNKS), [[11, 12]], [response], SEPS, 8)
        sizes.append(score_batch._cache_size())
    assert sizes[0] == sizes[1] == sizes[2]


def test_length_buckets_are_powers_of_two_then_multiples():
    lengths = (1, 17, 1000, 1025, 9216, 9217)
    assert [length_bucket(n) for n in lengths] == [16, 32, 1024, 2048, 9216, 10240]
    assert length_bucket(3000, granule=2048) == 4096


def test_uniform_attention_hand_computed():
    """q = k = 0 gives A[i, t] = 1 / (i + 1) for t <= i; steps of 1, 1, 2, 1, 2, 1 tokens."""
    layout = segment_steps(1, [NL2, 20, NL2, NL2, 20, NL2, 20], SEPS)
    assert layout.bounds == ((0, 1), (1, 2), (2, 4), (4, 5), (5, 7), (7, 8))
    steps = pad_step_ids([layout])
    zeros = jnp.zeros((1, 8, 2, 4), jnp.float32)  # 2 query heads share 1 kv head
    expected = {
        # k = 2: a[4,2] = 1/4 (2/6 + 2/7), a[5,2] = 1/2 (2/8); k = 3: a[5,3] = 1/8
        FciConfig(delta=2): [0, 0, 13 / 84 + 1 / 8, 1 / 8, 0, 0],
        # k = 2: sum over i in 5..7 of 2/(i+1); k = 3: 1/8
        FciConfig(delta=2, pooling="sum"): [0, 0, 2 / 6 + 2 / 7 + 2 / 8, 1 / 8, 0, 0],
    }
    for config, values in expected.items():
        attend = fci_attend(jnp.asarray(steps.step_ids), config, 1, steps.max_steps, 4)
        _, state = attend(0, zeros, zeros[:, :, :1], zeros[:, :, :1], initial_state(1, 8))
        fci = finish_fci(state, jnp.asarray([-1]), config, 1)
        np.testing.assert_allclose(np.asarray(fci)[0, :6], values, rtol=1e-6)
        with_think = finish_fci(state, jnp.asarray([3]), config, 1)
        np.testing.assert_allclose(np.asarray(with_think)[0, :6], values[:3] + [0] * 3, rtol=1e-6)
