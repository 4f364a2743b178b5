"""The Qwen2-family policy model, its Hugging Face checkpoint I/O, and mesh sharding."""

from attnrl_jax.models.config import ModelConfig, ModelConfigError
from attnrl_jax.models.hf_io import CheckpointError, load_pretrained, read_config, save_pretrained
from attnrl_jax.models.qwen2 import Params, Qwen2ForCausalLM, forward, forward_hidden, init_params
from attnrl_jax.models.sharding import DEFAULT_RULES, make_mesh, param_shardings, shard_params

__all__ = [
    "DEFAULT_RULES",
    "CheckpointError",
    "ModelConfig",
    "ModelConfigError",
    "Params",
    "Qwen2ForCausalLM",
    "forward",
    "forward_hidden",
    "init_params",
    "load_pretrained",
    "make_mesh",
    "param_shardings",
    "read_config",
    "save_pretrained",
    "shard_params",
]
