"""The causal-LM interface every compute module calls (never a family's module).

Pure functions on a params dict and a static ModelConfig, for jitted code:
    param_shapes(cfg) / logical_axes(cfg)      what parameters exist, their shapes and axes
    init_params(cfg, key)                      random weights
    forward_hidden(params, cfg, tokens, positions, attend, state) -> (hidden [B,T,E], state)
    logits_from_hidden(params, hidden) / lm_head_kernel(params)
    forward(params, cfg, tokens, ...)          logits with the default attention
    unstack_layers(params)                     per-layer buffers for decode loops
and `CausalLM`, the Flax NNX module users hold (`from_params` wraps existing params).
The architecture (ModelConfig.architecture) selects a family in models/families/, which owns
config.json parsing and Hugging Face tensor names; every family runs models/decoder.py.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from attnrl_jax.models import decoder
from attnrl_jax.models.attention import causal_attend
from attnrl_jax.models.config import ModelConfig
from attnrl_jax.models.decoder import Params, forward_hidden, lm_head_kernel, logits_from_hidden

__all__ = [
    "CausalLM",
    "Params",
    "default_positions",
    "flatten",
    "forward",
    "forward_hidden",
    "from_params",
    "init_params",
    "lm_head_kernel",
    "logical_axes",
    "logits_from_hidden",
    "param_shapes",
    "unflatten",
    "unstack_layers",
]


def param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Parameter path ('layers/q_proj/kernel') -> shape, for the parameters cfg has."""
    return decoder.param_shapes(cfg)


def logical_axes(cfg: ModelConfig) -> dict[str, tuple[str, ...]]:
    """Parameter path -> logical axis names (models/sharding.py maps them to mesh axes)."""
    return {path: decoder.LOGICAL_AXES[path] for path in param_shapes(cfg)}


def unflatten(flat: dict[str, Any]) -> Params:
    """{'a/b': x} -> {'a': {'b': x}}."""
    out: Params = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        node = out
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return out


def flatten(params: Params, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': x}} -> {'a/b': x}."""
    flat = {}
    for key, value in params.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, path + "/"))
        else:
            flat[path] = value
    return flat


def init_params(cfg: ModelConfig, key: jax.Array, std: float = 0.02) -> Params:
    """Random weights (normal(0, std) matrices, zero biases, unit norms) for tests and demos."""
    shapes = param_shapes(cfg)
    keys = dict(zip(shapes, jax.random.split(key, len(shapes)), strict=True))
    flat = {}
    for path, shape in shapes.items():
        if path.endswith("norm"):
            flat[path] = jnp.ones(shape, cfg.weight_dtype)
        elif path.endswith("bias"):
            flat[path] = jnp.zeros(shape, cfg.weight_dtype)
        else:
            flat[path] = (std * jax.random.normal(keys[path], shape)).astype(cfg.weight_dtype)
    return unflatten(flat)


def unstack_layers(params: Params) -> Params:
    """The same params with `layers` as a list of per-layer dicts (see `forward_hidden`)."""
    stacked = params["layers"]
    n = jax.tree.leaves(stacked)[0].shape[0]
    return {**params, "layers": [jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(n)]}


def default_positions(tokens: jax.Array) -> jax.Array:
    """[B, T] int32: 0..T-1 in every row."""
    return jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)


def forward(
    params: Params,
    cfg: ModelConfig,
    tokens: jax.Array,
    positions: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
    query_chunk: int | None = None,
) -> jax.Array:
    """Logits [B, T, V] float32 for tokens [B, T]. segment_ids [B, T]: 0 = padding, and
    different non-zero ids in one row are packed sequences that do not attend to each other."""
    positions = default_positions(tokens) if positions is None else positions
    segment_ids = jnp.ones_like(tokens) if segment_ids is None else segment_ids
    hidden, _ = forward_hidden(
        params, cfg, tokens, positions, causal_attend(segment_ids, query_chunk)
    )
    return logits_from_hidden(params, hidden)


class CausalLM(nnx.Module):
    """The policy model users hold: owns the params as nnx.Param leaves and the static config.

    `model(tokens)` returns logits; jitted library code works on `model.params()` instead.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.config = cfg
        tree = init_params(cfg, rngs.params())
        for name, value in tree.items():
            setattr(self, name, _to_variables(value))

    def params(self) -> Params:
        return nnx.to_pure_dict(nnx.state(self, nnx.Param))

    def __call__(self, tokens, positions=None, segment_ids=None) -> jax.Array:
        return forward(self.params(), self.config, tokens, positions, segment_ids)


def _to_variables(tree):
    if isinstance(tree, dict):
        return nnx.Dict({k: _to_variables(v) for k, v in tree.items()})
    return nnx.Param(tree)


def from_params(cfg: ModelConfig, params: Params) -> CausalLM:
    """Wraps existing params (already placed and sharded) without initialising new ones."""
    abstract = nnx.eval_shape(lambda: CausalLM(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)
