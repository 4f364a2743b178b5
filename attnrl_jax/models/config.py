"""Static description of a decoder (architecture plus numerics); config.json parsing per family
lives in models/families/."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
ROPE_TYPES = ("default", "linear", "llama3")


class ModelConfigError(ValueError):
    """A config.json (or a config value) this implementation cannot honour."""


def dtype_name(dtype: Any) -> str:
    """'float32' for jnp.float32, np.dtype('float32') or the string itself."""
    name = jnp.dtype(dtype).name
    if name not in DTYPES:
        raise ModelConfigError(f"unsupported dtype {name!r}; use one of {sorted(DTYPES)}")
    return name


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Hugging Face's rope_scaling, hashable. `kind`: "default" (none), "linear" (positions
    divided by `factor`) or "llama3" (Llama-3.1's per-frequency blend; the other fields)."""

    kind: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def __post_init__(self):
        if self.kind not in ROPE_TYPES:
            raise ModelConfigError(
                f"rope_scaling type {self.kind!r} is not supported (supported: {ROPE_TYPES})"
            )
        if self.kind == "llama3" and self.high_freq_factor <= self.low_freq_factor:
            raise ModelConfigError(
                f"rope_scaling high_freq_factor={self.high_freq_factor} must exceed "
                f"low_freq_factor={self.low_freq_factor}"
            )


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture plus numerics. Frozen and hashable, so it can be a static jit argument.

    `architecture` is the Hugging Face class name ("Qwen2ForCausalLM", "Qwen3ForCausalLM",
    "LlamaForCausalLM"); `attention_bias` (q/k/v biases) and `qk_norm` (per-head RMSNorm of q
    and k before RoPE) default to that family's layout. `dtype` is the computation dtype
    (activations, matmuls); `param_dtype` is how weights are stored. Softmax, log-softmax and
    RMSNorm statistics always run in float32.
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
    rope_scaling: RopeScaling = RopeScaling()
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 32768
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: bool = False  # rematerialise each layer in the backward pass (saves activation memory)
    architecture: str = "Qwen2ForCausalLM"
    attention_bias: bool | None = None  # None: the family's layout
    qk_norm: bool | None = None  # None: the family's layout

    def __post_init__(self):
        from attnrl_jax.models.families import family  # the registry imports this module

        fam = family(self.architecture)
        for name in ("attention_bias", "qk_norm"):
            value, layout = getattr(self, name), getattr(fam, name)
            if value is None:  # frozen: fill the family's layout in once
                object.__setattr__(self, name, layout)
            elif value != layout:
                raise ModelConfigError(f"{self.architecture} has {name}={layout}, got {value}")
        if self.num_heads % self.num_kv_heads:
            raise ModelConfigError(
                f"num_attention_heads={self.num_heads} is not a multiple of "
                f"num_key_value_heads={self.num_kv_heads}"
            )
        if self.head_dim % 2:
            raise ModelConfigError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        if not isinstance(self.rope_scaling, RopeScaling):
            raise ModelConfigError(f"rope_scaling must be a RopeScaling, got {self.rope_scaling!r}")
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
        """Reads a Hugging Face config.json dict through its family (by `architectures`);
        refuses, naming the key, what it cannot run faithfully."""
        from attnrl_jax.models.families import family_of_hf

        return family_of_hf(hf, source).from_hf(hf, source)

    def to_hf(self) -> dict[str, Any]:
        """The config.json that transformers loads back as this architecture."""
        from attnrl_jax.models.families import family

        return family(self.architecture).to_hf(self)
