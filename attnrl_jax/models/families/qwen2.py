"""Qwen2 (Qwen2.5, DeepSeek-R1-Distill-Qwen): biases on q/k/v, no q/k norm."""

from __future__ import annotations

from typing import Any

from attnrl_jax.models.config import ModelConfig
from attnrl_jax.models.families.base import Family, common_fields, common_hf

ARCHITECTURE = "Qwen2ForCausalLM"


def from_hf(hf: dict[str, Any], source: str) -> ModelConfig:
    return ModelConfig(**common_fields(hf, source), architecture=ARCHITECTURE)


def to_hf(cfg: ModelConfig) -> dict[str, Any]:
    return {**common_hf(cfg, FAMILY), "use_sliding_window": False}


FAMILY = Family(
    ARCHITECTURE, "qwen2", attention_bias=True, qk_norm=False, from_hf=from_hf, to_hf=to_hf
)
