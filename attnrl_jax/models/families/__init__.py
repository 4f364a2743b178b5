"""The registry of model families, keyed by the Hugging Face architecture name.

Adding a family: write families/<name>.py (its config.json parsing, to_hf, layout flags, tensor
names: see base.Family) and list its FAMILY below.
"""

from __future__ import annotations

from typing import Any

from attnrl_jax.models.config import ModelConfigError
from attnrl_jax.models.families import llama, qwen2, qwen3
from attnrl_jax.models.families.base import Family

FAMILIES: dict[str, Family] = {
    f.architecture: f for f in (qwen2.FAMILY, qwen3.FAMILY, llama.FAMILY)
}


def family(architecture: str) -> Family:
    """The registered family of a Hugging Face architecture name ("Qwen2ForCausalLM")."""
    if architecture not in FAMILIES:
        raise ModelConfigError(
            f"unsupported architecture {architecture!r}; supported: {sorted(FAMILIES)}"
        )
    return FAMILIES[architecture]


def family_of_hf(hf: dict[str, Any], source: str = "config.json") -> Family:
    """The family a config.json names in `architectures` (or, without it, `model_type`)."""
    archs = hf.get("architectures") or []
    model_type = hf.get("model_type")
    known = [FAMILIES[a] for a in archs if a in FAMILIES]
    if not archs:
        known = [f for f in FAMILIES.values() if f.model_type == model_type]
    if not known or known[0].model_type != model_type:
        raise ModelConfigError(
            f"{source}: unsupported architecture (architectures={archs}, "
            f"model_type={model_type!r}); supported: {sorted(FAMILIES)}"
        )
    return known[0]


__all__ = ["FAMILIES", "Family", "family", "family_of_hf"]
