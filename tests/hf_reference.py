"""Tiny random checkpoints of each family (Qwen2, Qwen3, Llama) built locally with transformers
+ torch (the reference).

Nothing is downloaded: configs are written here, weights drawn from a seeded generator.
Biases and norm weights are randomised too, so a dropped bias or norm cannot go unnoticed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# family -> (transformers config class, model class, what the family's tiny default adds)
FAMILIES = {
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    # head_dim 16 != hidden_size / heads = 12, as Qwen3's explicit head_dim allows
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=16)),
    # Llama-3.1 / DeepSeek-R1-Distill-Llama rope; with head_dim 12 and an original context of
    # 64 the frequencies fall in all three bands (kept, blended, divided by factor)
    "llama": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(
            rope_theta=500000.0,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        ),
    ),
}


def tiny_hf_config(family: str = "qwen2", **overrides):
    import transformers

    config_class, _, family_fields = FAMILIES[family]
    fields = dict(
        vocab_size=101,
        hidden_size=48,
        intermediate_size=72,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        rms_norm_eps=1e-6,
    )
    fields.update(family_fields)
    fields.update(overrides)
    return getattr(transformers, config_class)(**fields)


def make_hf_checkpoint(
    path: Path, seed: int = 0, tokenizer=None, family: str = "qwen2", **config_overrides
) -> Path:
    """Saves a randomly initialised transformers model of `family` (float32) to `path`."""
    import torch
    import transformers

    torch.manual_seed(seed)
    model_class = getattr(transformers, FAMILIES[family][1])
    model = model_class(tiny_hf_config(family, **config_overrides)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
    model.save_pretrained(str(path))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
    return Path(path)


def saved_checkpoint(root: Path, tokenizer, seed: int, max_position_embeddings: int) -> Path:
    """A checkpoint as training writes it: a random transformers checkpoint (make_hf_checkpoint)
    loaded, then written by save_pretrained with the tokenizer, under `root`/model."""
    from attnrl_jax.models import load_pretrained, save_pretrained

    source = make_hf_checkpoint(
        root / "hf", seed=seed, vocab_size=len(tokenizer),
        max_position_embeddings=max_position_embeddings, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    return save_pretrained(load_pretrained(source), root / "model", tokenizer=tokenizer)


def hf_logits(
    path: Path,
    tokens: np.ndarray,
    attention_mask: np.ndarray | None = None,
    position_ids: np.ndarray | None = None,
    dtype: str = "float32",
) -> np.ndarray:
    """Logits [B, T, V] (as float32) from transformers' eager PyTorch implementation."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=getattr(torch, dtype), attn_implementation="eager"
    ).eval()
    kwargs = {}
    if attention_mask is not None:
        kwargs["attention_mask"] = torch.as_tensor(attention_mask)
    if position_ids is not None:
        kwargs["position_ids"] = torch.as_tensor(position_ids)
    with torch.no_grad():
        out = model(torch.as_tensor(tokens), **kwargs)
    return out.logits.float().numpy()
