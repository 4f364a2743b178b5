"""The policy model: one decoder behind the causal-LM interface (lm.py), model families
registered by Hugging Face architecture (families/), checkpoint I/O, and mesh sharding."""

from attnrl_jax.models.config import ModelConfig, ModelConfigError, RopeScaling
from attnrl_jax.models.families import FAMILIES, family
from attnrl_jax.models.hf_io import CheckpointError, load_pretrained, read_config, save_pretrained
from attnrl_jax.models.lm import CausalLM, Params, forward, forward_hidden, from_params, init_params
from attnrl_jax.models.sharding import DEFAULT_RULES, make_mesh, param_shardings, shard_params

__all__ = [
    "DEFAULT_RULES",
    "FAMILIES",
    "CausalLM",
    "CheckpointError",
    "ModelConfig",
    "ModelConfigError",
    "Params",
    "RopeScaling",
    "family",
    "forward",
    "forward_hidden",
    "from_params",
    "init_params",
    "load_pretrained",
    "make_mesh",
    "param_shardings",
    "read_config",
    "save_pretrained",
    "shard_params",
]
