"""Qwen3 (dense): no q/k/v biases, RMSNorm of each q and k head before RoPE, an explicit
head_dim that need not be hidden_size / num_attention_heads."""

from __future__ import annotations

from typing import Any

from attnrl_jax.models.config import ModelConfig
from attnrl_jax.models.families.base import Family, common_fields, common_hf, refuse_true

ARCHITECTURE = "Qwen3ForCausalLM"


def from_hf(hf: dict[str, Any], source: str) -> ModelConfig:
    refuse_true(hf, source, "attention_bias")  # its o_proj would carry a bias too
    return ModelConfig(**common_fields(hf, source), architecture=ARCHITECTURE)


def to_hf(cfg: ModelConfig) -> dict[str, Any]:
    return {**common_hf(cfg, FAMILY), "attention_bias": False, "use_sliding_window": False}


FAMILY = Family(
    ARCHITECTURE, "qwen3", attention_bias=False, qk_norm=True, from_hf=from_hf, to_hf=to_hf
)
