"""Tiny random Qwen2 checkpoints built locally with transformers + torch (the reference).

Nothing is downloaded: configs are written here, weights drawn from a seeded generator.
Biases and norm weights are randomised too, so a dropped bias or norm cannot go unnoticed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def tiny_hf_config(**overrides):
    from transformers import Qwen2Config

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
    fields.update(overrides)
    return Qwen2Config(**fields)


def make_hf_checkpoint(path: Path, seed: int = 0, tokenizer=None, **config_overrides) -> Path:
    """Saves a randomly initialised transformers Qwen2ForCausalLM (float32) to `path`."""
    import torch
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(tiny_hf_config(**config_overrides)).eval()
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
