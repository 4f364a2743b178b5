"""Static description of a Qwen2-family decoder, and its mapping to Hugging Face config.json."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class ModelConfigError(ValueError):
    """A config.json (or a config value) this implementation cannot honour."""


def dtype_name(dtype: Any) -> str:
    """'float32' for jnp.float32, np.dtype('float32') or the string itself."""
    name = jnp.dtype(dtype).name
    if name not in DTYPES:
        raise ModelConfigError(f"unsupported dtype {name!r}; use one of {sorted(DTYPES)}")
    return name


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture plus numerics. Frozen and hashable, so it can be a static jit argument.

    `dtype` is the computation dtype (activations, matmuls); `param_dtype` is how weights are
    stored. Softmax, log-softmax and RMSNorm statistics always run in float32.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_linear_factor: float = 1.0  # rope_scaling {"rope_type": "linear", "factor": f}
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 32768
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: bool = False  # rematerialise each layer in the backward pass (saves activation memory)

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ModelConfigError(
                f"num_attention_heads={self.num_heads} is not a multiple of "
                f"num_key_value_heads={self.num_kv_heads}"
            )
        if self.head_dim % 2:
            raise ModelConfigError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        dtype_name(self.dtype), dtype_name(self.param_dtype)

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]

    @property
    def weight_dtype(self):
        return DTYPES[self.param_dtype]

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf(cls, hf: dict[str, Any], source: str = "config.json") -> ModelConfig:
        """Reads a Hugging Face Qwen2 config.json dict; refuses what it cannot run faithfully."""
        model_type = hf.get("model_type")
        archs = hf.get("architectures") or []
        if model_type != "qwen2" or (archs and "Qwen2ForCausalLM" not in archs):
            raise ModelConfigError(
                f"{source}: unsupported architecture (model_type={model_type!r}, "
                f"architectures={archs}); only Qwen2ForCausalLM (model_type 'qwen2') is supported"
            )
        if hf.get("use_sliding_window"):
            raise ModelConfigError(
                f"{source}: use_sliding_window=true is not supported (full attention only)"
            )
        if hf.get("hidden_act", "silu") != "silu":
            raise ModelConfigError(f"{source}: hidden_act={hf['hidden_act']!r} (only silu)")
        missing = [
            k
            for k in (
                "vocab_size",
                "hidden_size",
                "intermediate_size",
                "num_hidden_layers",
                "num_attention_heads",
            )
            if k not in hf
        ]
        if missing:
            raise ModelConfigError(f"{source}: missing required fields {missing}")
        rope = dict(hf.get("rope_parameters") or {})  # transformers >= 5
        scaling = hf.get("rope_scaling") or {}  # transformers 4 configs
        rope.update({k: v for k, v in scaling.items() if v is not None})
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", "linear"):
            raise ModelConfigError(
                f"{source}: rope scaling type {rope_type!r} is not supported "
                "(supported: none/default, linear)"
            )
        factor = float(rope.get("factor", 1.0)) if rope_type == "linear" else 1.0
        heads = hf["num_attention_heads"]
        return cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=hf.get("num_key_value_heads") or heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_theta=float(hf.get("rope_theta", rope.get("rope_theta", 10000.0))),
            rope_linear_factor=factor,
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            max_position_embeddings=hf.get("max_position_embeddings", 32768),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=_as_ids(hf.get("eos_token_id")),
        )

    def to_hf(self) -> dict[str, Any]:
        """The config.json that transformers' Qwen2ForCausalLM loads back to this architecture."""
        rope: dict[str, Any] = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_linear_factor != 1.0:
            rope = {"rope_type": "linear", "rope_theta": self.rope_theta}
            rope["factor"] = self.rope_linear_factor
        eos = list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id
        return {
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_parameters": rope,
            "rope_scaling": None if self.rope_linear_factor == 1.0 else dict(rope),
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "use_sliding_window": False,
            "attention_dropout": 0.0,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "torch_dtype": self.param_dtype,
            "dtype": self.param_dtype,
        }


def _as_ids(value) -> int | tuple[int, ...] | None:
    return tuple(value) if isinstance(value, list) else value
