"""The Qwen2-family decoder, readable top to bottom.

Parameters live in one nested dict (`Params`), layers stacked on a leading axis so the decoder
is a `lax.scan` (compile time does not grow with depth). The pure functions below are what jitted
code calls; `Qwen2ForCausalLM` is the Flax NNX module users hold, a thin owner of those params.

    params = {
      "embed": [V, E],
      "layers": {
        "input_norm": [L, E], "post_norm": [L, E],
        "q_proj": {"kernel": [L, E, Hq*D], "bias": [L, Hq*D]},
        "k_proj": {"kernel": [L, E, Hkv*D], "bias": [L, Hkv*D]},
        "v_proj": {"kernel": [L, E, Hkv*D], "bias": [L, Hkv*D]},
        "o_proj": {"kernel": [L, Hq*D, E]},
        "gate_proj": {"kernel": [L, E, F]}, "up_proj": {"kernel": [L, E, F]},
        "down_proj": {"kernel": [L, F, E]},
      },
      "final_norm": [E],
      "lm_head": {"kernel": [E, V]},   # absent when embeddings are tied
    }
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from attnrl_jax.models.attention import Attend, apply_rope, causal_attend, rope_cos_sin
from attnrl_jax.models.config import ModelConfig

Params = dict[str, Any]

# Logical axis names of every parameter, by path; models/sharding.py maps them to mesh axes.
LOGICAL_AXES: dict[str, tuple[str, ...]] = {
    "embed": ("vocab", "embed"),
    "layers/input_norm": ("layers", "norm"),
    "layers/post_norm": ("layers", "norm"),
    "layers/q_proj/kernel": ("layers", "embed", "heads"),
    "layers/q_proj/bias": ("layers", "heads"),
    "layers/k_proj/kernel": ("layers", "embed", "kv_heads"),
    "layers/k_proj/bias": ("layers", "kv_heads"),
    "layers/v_proj/kernel": ("layers", "embed", "kv_heads"),
    "layers/v_proj/bias": ("layers", "kv_heads"),
    "layers/o_proj/kernel": ("layers", "heads", "embed"),
    "layers/gate_proj/kernel": ("layers", "embed", "mlp"),
    "layers/up_proj/kernel": ("layers", "embed", "mlp"),
    "layers/down_proj/kernel": ("layers", "mlp", "embed"),
    "final_norm": ("norm",),
    "lm_head/kernel": ("embed", "vocab"),
}


def param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Shape of every parameter, keyed like LOGICAL_AXES."""
    e, f, v, n = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_layers
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    shapes = {
        "embed": (v, e),
        "layers/input_norm": (n, e),
        "layers/post_norm": (n, e),
        "layers/q_proj/kernel": (n, e, q),
        "layers/q_proj/bias": (n, q),
        "layers/k_proj/kernel": (n, e, kv),
        "layers/k_proj/bias": (n, kv),
        "layers/v_proj/kernel": (n, e, kv),
        "layers/v_proj/bias": (n, kv),
        "layers/o_proj/kernel": (n, q, e),
        "layers/gate_proj/kernel": (n, e, f),
        "layers/up_proj/kernel": (n, e, f),
        "layers/down_proj/kernel": (n, f, e),
        "final_norm": (e,),
        "lm_head/kernel": (e, v),
    }
    if cfg.tie_word_embeddings:
        del shapes["lm_head/kernel"]
    return shapes


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


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """Statistics in float32, as Hugging Face's Qwen2RMSNorm; result in x.dtype."""
    xf = x.astype(jnp.float32)
    normed = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return weight.astype(x.dtype) * normed.astype(x.dtype)


def _dense(x: jax.Array, p: Params) -> jax.Array:
    y = x @ p["kernel"].astype(x.dtype)
    return y + p["bias"].astype(x.dtype) if "bias" in p else y


def decoder_layer(cfg, layer, p, x, cos, sin, attend: Attend, attn_state):
    """One pre-norm block: x [B, T, E] -> x [B, T, E], threading the attention state."""
    b, t, _ = x.shape
    h = rms_norm(x, p["input_norm"], cfg.rms_norm_eps)
    q = _dense(h, p["q_proj"]).reshape(b, t, cfg.num_heads, cfg.head_dim)
    k = _dense(h, p["k_proj"]).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
    v = _dense(h, p["v_proj"]).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    out, attn_state = attend(layer, q, k, v, attn_state)
    x = x + _dense(out.reshape(b, t, -1), p["o_proj"])
    h = rms_norm(x, p["post_norm"], cfg.rms_norm_eps)
    mlp = jax.nn.silu(_dense(h, p["gate_proj"])) * _dense(h, p["up_proj"])
    return x + _dense(mlp, p["down_proj"]), attn_state


def forward_hidden(
    params: Params,
    cfg: ModelConfig,
    tokens: jax.Array,
    positions: jax.Array,
    attend: Attend,
    attn_state: Any = None,
) -> tuple[jax.Array, Any]:
    """tokens, positions [B, T] int32 -> final-normed hidden states [B, T, E], attention state.

    `attend` and its `attn_state` are threaded through the layers: the default kernel keeps
    no state; a KV cache or attention-statistics accumulator keeps its arrays there.

    Stacked layers run as a `lax.scan` (the layer index is a traced int32). Layers given as a
    list (`unstack_layers`) run as a Python loop with a static int index: more to compile, but
    each layer's weights are separate buffers, so a decode loop does not re-slice them per step.
    """
    x = jnp.take(params["embed"], tokens, axis=0).astype(cfg.compute_dtype)
    cos, sin = rope_cos_sin(positions, cfg.head_dim, cfg.rope_theta, cfg.rope_linear_factor)

    def run_layer(layer, p, x, state):
        fn = functools.partial(decoder_layer, cfg, layer, attend=attend)
        if cfg.remat:
            fn = jax.checkpoint(fn, prevent_cse=False)
        return fn(p, x, cos, sin, attn_state=state)

    if isinstance(params["layers"], list):
        for layer, p in enumerate(params["layers"]):
            x, attn_state = run_layer(layer, p, x, attn_state)
    else:

        def body(carry, xs):
            return run_layer(*xs, *carry), None

        layers = jnp.arange(cfg.num_layers, dtype=jnp.int32)
        (x, attn_state), _ = jax.lax.scan(body, (x, attn_state), (layers, params["layers"]))
    return rms_norm(x, params["final_norm"], cfg.rms_norm_eps), attn_state


def unstack_layers(params: Params) -> Params:
    """The same params with `layers` as a list of per-layer dicts (see `forward_hidden`)."""
    stacked = params["layers"]
    n = jax.tree.leaves(stacked)[0].shape[0]
    return {**params, "layers": [jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(n)]}


def lm_head_kernel(params: Params) -> jax.Array:
    """[E, V]: the untied head, or the transposed embedding when tied."""
    return params["lm_head"]["kernel"] if "lm_head" in params else params["embed"].T


def logits_from_hidden(params: Params, hidden: jax.Array) -> jax.Array:
    """hidden [..., E] -> logits [..., V] in float32 (matmul in the computation dtype)."""
    kernel = lm_head_kernel(params).astype(hidden.dtype)
    return jnp.matmul(hidden, kernel, preferred_element_type=jnp.float32)


def default_positions(tokens: jax.Array) -> jax.Array:
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


class Qwen2ForCausalLM(nnx.Module):
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


def from_params(cfg: ModelConfig, params: Params) -> Qwen2ForCausalLM:
    """Wraps existing params (already placed and sharded) without initialising new ones."""
    abstract = nnx.eval_shape(lambda: Qwen2ForCausalLM(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)
