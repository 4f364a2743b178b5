"""The decoder shared by every registered family (Qwen2, Qwen3, Llama), readable top to bottom.

A pre-norm transformer with grouped-query attention, RoPE and a SwiGLU MLP; the families differ
only in what ModelConfig says: q/k/v biases (`attention_bias`), per-head q/k RMSNorm before RoPE
(`qk_norm`), head_dim, and the rope scaling. Parameters live in one nested dict (`Params`),
layers stacked on a leading axis so the decoder is a `lax.scan` (compile time does not grow
with depth):

    params = {
      "embed": [V, E],
      "layers": {
        "input_norm": [L, E], "post_norm": [L, E],
        "q_proj": {"kernel": [L, E, Hq*D], "bias": [L, Hq*D]},     # bias: attention_bias
        "k_proj": {"kernel": [L, E, Hkv*D], "bias": [L, Hkv*D]},
        "v_proj": {"kernel": [L, E, Hkv*D], "bias": [L, Hkv*D]},
        "q_norm": [L, D], "k_norm": [L, D],                         # qk_norm
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

from attnrl_jax.models.attention import Attend
from attnrl_jax.models.config import ModelConfig
from attnrl_jax.models.rope import apply_rope, rope_cos_sin

Params = dict[str, Any]

# Logical axis names of every parameter any configuration may have, by path;
# models/sharding.py maps them to mesh axes.
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
    "layers/q_norm": ("layers", "norm"),
    "layers/k_norm": ("layers", "norm"),
    "layers/o_proj/kernel": ("layers", "heads", "embed"),
    "layers/gate_proj/kernel": ("layers", "embed", "mlp"),
    "layers/up_proj/kernel": ("layers", "embed", "mlp"),
    "layers/down_proj/kernel": ("layers", "mlp", "embed"),
    "final_norm": ("norm",),
    "lm_head/kernel": ("embed", "vocab"),
}


def param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Shape of every parameter this configuration has, keyed like LOGICAL_AXES."""
    e, f, v, n = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_layers
    d = cfg.head_dim
    q, kv = cfg.num_heads * d, cfg.num_kv_heads * d
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
        "layers/q_norm": (n, d),
        "layers/k_norm": (n, d),
        "layers/o_proj/kernel": (n, q, e),
        "layers/gate_proj/kernel": (n, e, f),
        "layers/up_proj/kernel": (n, e, f),
        "layers/down_proj/kernel": (n, f, e),
        "final_norm": (e,),
        "lm_head/kernel": (e, v),
    }
    absent = []
    if not cfg.attention_bias:
        absent += [f"layers/{x}_proj/bias" for x in "qkv"]
    if not cfg.qk_norm:
        absent += ["layers/q_norm", "layers/k_norm"]
    if cfg.tie_word_embeddings:
        absent.append("lm_head/kernel")
    for path in absent:
        del shapes[path]
    return shapes


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """Statistics in float32, as Hugging Face's RMSNorm; result in x.dtype."""
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
    if cfg.qk_norm:  # Qwen3: RMSNorm over each head's D features, before RoPE
        q = rms_norm(q, p["q_norm"], cfg.rms_norm_eps)
        k = rms_norm(k, p["k_norm"], cfg.rms_norm_eps)
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
    cos, sin = rope_cos_sin(positions, cfg)

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


def lm_head_kernel(params: Params) -> jax.Array:
    """[E, V]: the untied head, or the transposed embedding when tied."""
    return params["lm_head"]["kernel"] if "lm_head" in params else params["embed"].T


def logits_from_hidden(params: Params, hidden: jax.Array) -> jax.Array:
    """hidden [..., E] -> logits [..., V] in float32 (matmul in the computation dtype)."""
    kernel = lm_head_kernel(params).astype(hidden.dtype)
    return jnp.matmul(hidden, kernel, preferred_element_type=jnp.float32)
