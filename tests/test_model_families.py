"""Every registered family (Qwen2, Qwen3 with an explicit head_dim, Llama with llama3 rope)
against transformers on tiny random checkpoints: logits, save/load both ways, greedy decoding
through the generate CLI, and the sampler's FCI against the scoring forward's."""

import json
import math

import numpy as np
import pytest
import torch
from hf_reference import hf_logits, make_hf_checkpoint

from attnrl_jax.data.tokenizer import build_tiny_tokenizer
from attnrl_jax.generate import main
from attnrl_jax.models import ModelConfig, RopeScaling, forward, load_pretrained, save_pretrained
from attnrl_jax.models.lm import param_shapes
from attnrl_jax.sampling import Buckets, Request, SamplerConfig, SamplerFci, SamplingOptions, sample
from attnrl_jax.sampling.eos import eos_ids
from attnrl_jax.scoring.fci import FciConfig
from attnrl_jax.scoring.forward import ScoringConfig, score_sequences
from attnrl_jax.scoring.steps import SeparatorIds

ARCHITECTURES = {
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "llama": "LlamaForCausalLM",
}
FAMILIES = list(ARCHITECTURES)
VOCAB = 300
MAX_POSITIONS = 256


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer(VOCAB)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tokenizer):
    """One checkpoint per family, with the tokenizer (so the generate CLI reads it too)."""
    root = tmp_path_factory.mktemp("families")
    eos = tokenizer.eos_token_id
    return {
        family: make_hf_checkpoint(
            root / family,
            seed=i,
            tokenizer=tokenizer,
            family=family,
            vocab_size=len(tokenizer),
            max_position_embeddings=MAX_POSITIONS,
            bos_token_id=eos,
            eos_token_id=eos,
        )  # fmt: skip
        for i, family in enumerate(FAMILIES)
    }


def _tokens(shape, seed=0):
    return np.random.default_rng(seed).integers(0, VOCAB, size=shape).astype(np.int32)


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers(checkpoints, family):
    model = load_pretrained(checkpoints[family])
    cfg = model.config
    assert cfg.architecture == ARCHITECTURES[family]
    tokens = _tokens((2, 13))
    # Offset positions reach past the llama3 original context (64), where scaling matters most.
    positions = np.arange(13, dtype=np.int32)[None].repeat(2, 0) + np.array([[0], [150]])
    ours = np.asarray(model(tokens, positions))
    ref = hf_logits(checkpoints[family], tokens, position_ids=positions)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    if family == "qwen3":
        assert cfg.head_dim == 16 != cfg.hidden_size // cfg.num_heads and cfg.qk_norm
    if family == "llama":
        assert cfg.rope_scaling.kind == "llama3" and not cfg.attention_bias
        # The test can see the rope scaling: without it the logits move far beyond 1e-4.
        plain = forward(model.params(), cfg.replace(rope_scaling=RopeScaling()), tokens, positions)
        assert np.abs(np.asarray(plain) - ref).max() > 1e-2


@pytest.mark.parametrize("family", FAMILIES)
def test_save_pretrained_round_trip(checkpoints, tmp_path, family):
    from transformers import AutoModelForCausalLM

    source = checkpoints[family]
    model = load_pretrained(source)
    out = save_pretrained(model, tmp_path / "saved")
    written = json.loads((out / "config.json").read_text())
    assert written["architectures"] == [ARCHITECTURES[family]]
    hf = AutoModelForCausalLM.from_pretrained(str(out))
    assert type(hf).__name__ == ARCHITECTURES[family]
    tokens = _tokens((1, 20), seed=1)
    positions = np.arange(100, 120, dtype=np.int32)[None]
    np.testing.assert_allclose(
        hf_logits(out, tokens, position_ids=positions),
        hf_logits(source, tokens, position_ids=positions),
        atol=1e-6,
        rtol=0,
    )
    again = load_pretrained(out)
    assert again.config == model.config
    np.testing.assert_array_equal(np.asarray(again(tokens)), np.asarray(model(tokens)))


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generate_cli_equals_transformers(checkpoints, tokenizer, tmp_path, family):
    from transformers import AutoModelForCausalLM

    path = checkpoints[family]
    prompts = [_tokens((n,), seed=n).tolist() for n in (5, 12)]
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps({"prompt_ids": p}) + "\n" for p in prompts))
    args = ["--temperature", "0", "--max_new_tokens", "16", "--batch_size", "2"]
    assert main(["--model", str(path), "--input", str(src), "--output", str(out), *args]) == 0
    results = [json.loads(line) for line in out.read_text().splitlines()]
    hf = AutoModelForCausalLM.from_pretrained(str(path)).eval()
    stop = list(eos_ids(tokenizer, path, hf.config.eos_token_id, chat=False))
    for prompt, r in zip(prompts, results, strict=True):
        ids = torch.tensor([prompt])
        with torch.no_grad():
            ref = hf.generate(
                ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=16,
                eos_token_id=stop, pad_token_id=tokenizer.eos_token_id,
            )  # fmt: skip
        assert r["token_ids"] == ref[0, len(prompt) :].tolist()


# A sixth of the vocabulary separates steps, so short responses have several FCI steps; delta 1
# lets every later step count.
SEPS = SeparatorIds(tuple(range(1, 50)), tuple(range(1, 100)), think_end=())
FCI = FciConfig(delta=1)
SAMPLER = SamplerConfig(
    Buckets(rows=(8,), lengths=(16, 32, 64)), query_chunk=16, attention_chunk=16
)


@pytest.mark.parametrize("family", FAMILIES)
def test_sampler_fci_equals_the_scoring_forward(checkpoints, family):
    model = load_pretrained(checkpoints[family])
    params, cfg = model.params(), model.config
    requests = [Request(_tokens((n,), seed=n).tolist(), n=2) for n in (4, 11, 7)]
    options = SamplingOptions(
        max_new_tokens=24, temperature=1.0, seed=2, fci=SamplerFci(SEPS, FCI, max_steps=16)
    )
    samples = sample(params, cfg, requests, options, SAMPLER)
    scored = score_sequences(
        params,
        cfg,
        ScoringConfig(fci=FCI, query_chunk=16, logit_chunk=16),
        [requests[s.request].prompt_ids for s in samples],
        [s.token_ids for s in samples],
        SEPS,
        batch_size=8,
    )
    with_fci = 0
    for s, ref in zip(samples, scored, strict=True):
        np.testing.assert_allclose(s.logprobs, ref.logprobs, atol=1e-4, rtol=0)
        if s.fci is not None:
            with_fci += 1
            np.testing.assert_allclose(s.fci, ref.fci, rtol=1e-4, atol=1e-7)
    assert with_fci >= 4
    assert max(np.count_nonzero(ref.fci) for ref in scored) >= 3


# The published config.json of DeepSeek-R1-Distill-Llama-8B and Qwen3-8B (fields that matter),
# with their published parameter counts.
REAL_CONFIGS = {
    "DeepSeek-R1-Distill-Llama-8B": (
        dict(
            architectures=["LlamaForCausalLM"], model_type="llama", attention_bias=False,
            mlp_bias=False, hidden_act="silu", hidden_size=4096, intermediate_size=14336,
            num_attention_heads=32, num_hidden_layers=32, num_key_value_heads=8,
            max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
            rope_scaling={
                "factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                "original_max_position_embeddings": 8192, "rope_type": "llama3",
            },
            tie_word_embeddings=False, vocab_size=128256, bos_token_id=128000,
            eos_token_id=128001, pretraining_tp=1,
        ),
        8_030_261_248,
    ),
    "Qwen3-8B": (
        dict(
            architectures=["Qwen3ForCausalLM"], model_type="qwen3", attention_bias=False,
            head_dim=128, hidden_act="silu", hidden_size=4096, intermediate_size=12288,
            num_attention_heads=32, num_hidden_layers=36, num_key_value_heads=8,
            max_position_embeddings=40960, max_window_layers=36, rms_norm_eps=1e-6,
            rope_scaling=None, rope_theta=1000000, sliding_window=None, use_sliding_window=False,
            tie_word_embeddings=False, vocab_size=151936, bos_token_id=151643,
            eos_token_id=151645,
        ),
        8_190_735_360,
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(REAL_CONFIGS))
def test_real_configs_parse_and_round_trip_through_transformers(name):
    from transformers import CONFIG_MAPPING

    hf, num_params = REAL_CONFIGS[name]
    cfg = ModelConfig.from_hf(hf)
    assert sum(math.prod(s) for s in param_shapes(cfg).values()) == num_params
    written = CONFIG_MAPPING[hf["model_type"]](**cfg.to_hf())  # as transformers reads it
    assert ModelConfig.from_hf(written.to_dict()) == cfg
