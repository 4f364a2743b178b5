"""Llama (Llama-3.x, DeepSeek-R1-Distill-Llama): no biases, no q/k norm, rope_scaling
"llama3" (Llama-3.1's frequency blend) or linear."""

from __future__ import annotations

from typing import Any

from attnrl_jax.models.config import ModelConfig
from attnrl_jax.models.families.base import Family, common_fields, common_hf, refuse_true

ARCHITECTURE = "LlamaForCausalLM"


def from_hf(hf: dict[str, Any], source: str) -> ModelConfig:
    refuse_true(hf, source, "attention_bias", "mlp_bias")  # biases on o_proj / the MLP
    return ModelConfig(**common_fields(hf, source), architecture=ARCHITECTURE)


def to_hf(cfg: ModelConfig) -> dict[str, Any]:
    return {**common_hf(cfg, FAMILY), "attention_bias": False, "mlp_bias": False}


FAMILY = Family(
    ARCHITECTURE, "llama", attention_bias=False, qk_norm=False, from_hf=from_hf, to_hf=to_hf
)
