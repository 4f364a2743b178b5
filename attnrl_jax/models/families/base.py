"""What a model family registers, and the config.json fields every family shares.

A family is the Hugging Face face of the decoder: its architecture name and model_type, its
layout flags (ModelConfig.attention_bias / qk_norm defaults), how its config.json maps to a
ModelConfig and back, and its tensor names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from attnrl_jax.models.config import ROPE_TYPES, ModelConfig, ModelConfigError, RopeScaling

# Our parameter path -> (Hugging Face name with {i} for the layer, transpose?). The names
# transformers' Qwen2, Qwen3 and Llama modules share (a family may give its own).
HF_NAMES: dict[str, tuple[str, bool]] = {
    "embed": ("model.embed_tokens.weight", False),
    "layers/input_norm": ("model.layers.{i}.input_layernorm.weight", False),
    "layers/post_norm": ("model.layers.{i}.post_attention_layernorm.weight", False),
    "layers/q_proj/kernel": ("model.layers.{i}.self_attn.q_proj.weight", True),
    "layers/q_proj/bias": ("model.layers.{i}.self_attn.q_proj.bias", False),
    "layers/k_proj/kernel": ("model.layers.{i}.self_attn.k_proj.weight", True),
    "layers/k_proj/bias": ("model.layers.{i}.self_attn.k_proj.bias", False),
    "layers/v_proj/kernel": ("model.layers.{i}.self_attn.v_proj.weight", True),
    "layers/v_proj/bias": ("model.layers.{i}.self_attn.v_proj.bias", False),
    "layers/q_norm": ("model.layers.{i}.self_attn.q_norm.weight", False),
    "layers/k_norm": ("model.layers.{i}.self_attn.k_norm.weight", False),
    "layers/o_proj/kernel": ("model.layers.{i}.self_attn.o_proj.weight", True),
    "layers/gate_proj/kernel": ("model.layers.{i}.mlp.gate_proj.weight", True),
    "layers/up_proj/kernel": ("model.layers.{i}.mlp.up_proj.weight", True),
    "layers/down_proj/kernel": ("model.layers.{i}.mlp.down_proj.weight", True),
    "final_norm": ("model.norm.weight", False),
    "lm_head/kernel": ("lm_head.weight", True),
}


@dataclasses.dataclass(frozen=True)
class Family:
    """One registered architecture. from_hf(hf, source) -> ModelConfig raises ModelConfigError
    naming the key it refuses; to_hf(cfg) -> the config.json dict transformers loads back."""

    architecture: str  # "Qwen2ForCausalLM": the key of the registry
    model_type: str  # "qwen2"
    attention_bias: bool  # q/k/v projections carry biases
    qk_norm: bool  # per-head RMSNorm of q and k before RoPE
    from_hf: Callable[[dict[str, Any], str], ModelConfig]
    to_hf: Callable[[ModelConfig], dict[str, Any]]
    hf_names: Mapping[str, tuple[str, bool]] = dataclasses.field(default_factory=lambda: HF_NAMES)


def refuse_true(hf: dict[str, Any], source: str, *keys: str) -> None:
    """ModelConfigError naming the first of `keys` that is set to true."""
    for key in keys:
        if hf.get(key):
            raise ModelConfigError(f"{source}: {key}={hf[key]!r} is not supported")


def common_fields(hf: dict[str, Any], source: str) -> dict[str, Any]:
    """ModelConfig fields read the same way for every family; refuses sliding-window layers,
    activations other than silu, and rope scaling other than none/linear/llama3."""
    if hf.get("use_sliding_window"):
        raise ModelConfigError(
            f"{source}: use_sliding_window=true is not supported (full attention only)"
        )
    layer_types = set(hf.get("layer_types") or ()) - {"full_attention"}
    if layer_types:
        raise ModelConfigError(
            f"{source}: layer_types {sorted(layer_types)} are not supported (full attention only)"
        )
    if hf.get("hidden_act", "silu") != "silu":
        raise ModelConfigError(f"{source}: hidden_act={hf['hidden_act']!r} (only silu)")
    required = (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
    )
    missing = [k for k in required if k not in hf]
    if missing:
        raise ModelConfigError(f"{source}: missing required fields {missing}")
    rope = dict(hf.get("rope_parameters") or {})  # transformers >= 5
    scaling = hf.get("rope_scaling") or {}  # transformers 4 configs
    rope.update({k: v for k, v in scaling.items() if v is not None})
    heads = hf["num_attention_heads"]
    return dict(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
        rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=float(hf.get("rope_theta", rope.get("rope_theta", 10000.0))),
        rope_scaling=_rope_scaling(rope, source),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        max_position_embeddings=hf.get("max_position_embeddings", 32768),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=_as_ids(hf.get("eos_token_id")),
    )


def _rope_scaling(rope: dict[str, Any], source: str) -> RopeScaling:
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in ROPE_TYPES:
        raise ModelConfigError(
            f"{source}: rope_scaling type {kind!r} is not supported "
            f"(supported: none/{', '.join(ROPE_TYPES)})"
        )
    if kind == "default":
        return RopeScaling()
    if kind == "linear":
        return RopeScaling("linear", float(rope.get("factor", 1.0)))
    try:
        return RopeScaling(
            "llama3",
            factor=float(rope["factor"]),
            low_freq_factor=float(rope["low_freq_factor"]),
            high_freq_factor=float(rope["high_freq_factor"]),
            original_max_position_embeddings=int(rope["original_max_position_embeddings"]),
        )
    except KeyError as e:
        raise ModelConfigError(f"{source}: rope_scaling type 'llama3' needs {e.args[0]}") from None
    except ModelConfigError as e:
        raise ModelConfigError(f"{source}: {e}") from None


def common_hf(cfg: ModelConfig, family: Family) -> dict[str, Any]:
    """The config.json fields every family writes the same way."""
    rope: dict[str, Any] = {"rope_type": cfg.rope_scaling.kind, "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling.kind != "default":
        rope["factor"] = cfg.rope_scaling.factor
    if cfg.rope_scaling.kind == "llama3":
        s = cfg.rope_scaling
        rope.update(
            low_freq_factor=s.low_freq_factor,
            high_freq_factor=s.high_freq_factor,
            original_max_position_embeddings=s.original_max_position_embeddings,
        )
    eos = list(cfg.eos_token_id) if isinstance(cfg.eos_token_id, tuple) else cfg.eos_token_id
    return {
        "architectures": [family.architecture],
        "model_type": family.model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": rope,
        "rope_scaling": None if cfg.rope_scaling.kind == "default" else dict(rope),
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "max_position_embeddings": cfg.max_position_embeddings,
        "attention_dropout": 0.0,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": eos,
        "torch_dtype": cfg.param_dtype,
        "dtype": cfg.param_dtype,
    }


def _as_ids(value) -> int | tuple[int, ...] | None:
    return tuple(value) if isinstance(value, list) else value
