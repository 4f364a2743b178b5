"""The decoder (Qwen2 layout) against transformers' PyTorch implementation, HF I/O, sharding,
and clear errors for configs no family supports (tests/test_model_families.py: Qwen3, Llama)."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hf_reference import hf_logits, make_hf_checkpoint

from attnrl_jax.models import (
    CheckpointError,
    ModelConfig,
    ModelConfigError,
    RopeScaling,
    forward,
    load_pretrained,
    make_mesh,
    save_pretrained,
)
from attnrl_jax.models.sharding import optimizer_state_shardings, param_shardings

CONFIGS = {
    "untied_gqa2": {},
    "tied_gqa4": dict(tie_word_embeddings=True, num_attention_heads=8, num_key_value_heads=2),
    "mha_odd_sizes": dict(
        vocab_size=53,
        hidden_size=40,
        intermediate_size=37,
        num_attention_heads=5,
        num_key_value_heads=5,
        num_hidden_layers=3,
        rope_theta=500.0,
    ),
    "head_dim_override": dict(head_dim=16, num_attention_heads=2, num_key_value_heads=1),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return {
        name: make_hf_checkpoint(root / name, seed=i, **overrides)
        for i, (name, overrides) in enumerate(CONFIGS.items())
    }


def _tokens(vocab, shape, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, size=shape).astype(np.int32)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_match_transformers(checkpoints, name):
    model = load_pretrained(checkpoints[name])
    tokens = _tokens(model.config.vocab_size, (2, 13))
    ours = np.asarray(model(jnp.asarray(tokens)))
    ref = hf_logits(checkpoints[name], tokens)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_left_padded_batch_matches_transformers(checkpoints):
    path = checkpoints["untied_gqa2"]
    model = load_pretrained(path)
    tokens = _tokens(model.config.vocab_size, (3, 10), seed=1)
    mask = np.ones_like(tokens)
    mask[0, :4] = 0
    mask[1, :1] = 0
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
    ours = np.asarray(model(jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(mask)))
    ref = hf_logits(path, tokens, attention_mask=mask, position_ids=positions)
    valid = mask.astype(bool)
    np.testing.assert_allclose(ours[valid], ref[valid], atol=1e-4, rtol=0)
    assert np.isfinite(ours).all()  # fully masked padding rows stay finite


def test_packed_rows_equal_separate_sequences(checkpoints):
    model = load_pretrained(checkpoints["tied_gqa4"])
    a = _tokens(model.config.vocab_size, (1, 7), seed=2)
    b = _tokens(model.config.vocab_size, (1, 5), seed=3)
    packed = np.concatenate([a, b, np.zeros((1, 4), np.int32)], axis=1)
    segments = np.array([[1] * 7 + [2] * 5 + [0] * 4])
    positions = np.array([list(range(7)) + list(range(5)) + [0] * 4], np.int32)
    out = np.asarray(model(jnp.asarray(packed), jnp.asarray(positions), jnp.asarray(segments)))
    np.testing.assert_allclose(out[0, :7], np.asarray(model(jnp.asarray(a)))[0], atol=1e-5)
    np.testing.assert_allclose(out[0, 7:12], np.asarray(model(jnp.asarray(b)))[0], atol=1e-5)


def test_query_chunking_does_not_change_logits(checkpoints):
    model = load_pretrained(checkpoints["untied_gqa2"])
    tokens = jnp.asarray(_tokens(model.config.vocab_size, (2, 16), seed=4))
    full = forward(model.params(), model.config, tokens)
    chunked = forward(model.params(), model.config, tokens, query_chunk=4)
    np.testing.assert_allclose(np.asarray(full), np.asarray(chunked), atol=1e-5)


@pytest.mark.parametrize("name", ["untied_gqa2", "tied_gqa4"])
def test_save_pretrained_round_trip(checkpoints, tmp_path, name):
    model = load_pretrained(checkpoints[name])
    out = save_pretrained(model, tmp_path / "saved", max_shard_bytes=20_000)
    assert (out / "model.safetensors.index.json").is_file()  # small shards: index written
    tokens = _tokens(model.config.vocab_size, (1, 9), seed=5)
    np.testing.assert_allclose(
        hf_logits(out, tokens), hf_logits(checkpoints[name], tokens), atol=1e-6, rtol=0
    )
    again = load_pretrained(out)
    np.testing.assert_array_equal(np.asarray(again(tokens)), np.asarray(model(tokens)))
    with pytest.raises(FileExistsError, match="not empty"):
        save_pretrained(model, out)


def test_bfloat16_path_within_tolerance(checkpoints, tmp_path):
    path = checkpoints["untied_gqa2"]
    f32 = load_pretrained(path)
    bf16 = load_pretrained(path, dtype=jnp.bfloat16)
    assert bf16.params()["embed"].dtype == jnp.bfloat16
    tokens = _tokens(f32.config.vocab_size, (2, 12), seed=6)
    ref, out = np.asarray(f32(tokens)), np.asarray(bf16(tokens))
    assert out.dtype == np.float32  # logits and softmax stay float32
    # bf16 rounding error is inherent; ours must be no worse than transformers' own bf16 path.
    hf_error = np.abs(hf_logits(path, tokens, dtype="bfloat16") - ref)
    our_error = np.abs(out - ref)
    assert our_error.mean() <= 1.25 * hf_error.mean()
    assert our_error.max() <= 1.5 * hf_error.max()
    saved = save_pretrained(bf16, tmp_path / "bf16")
    assert json.loads((saved / "config.json").read_text())["torch_dtype"] == "bfloat16"
    np.testing.assert_array_equal(np.asarray(load_pretrained(saved, jnp.bfloat16)(tokens)), out)


@pytest.mark.parametrize("shape", [(2, 2, 2), (1, 1, 8), (8, 1, 1)])
def test_sharded_forward_equals_single_device(checkpoints, shape):
    assert jax.device_count() == 8, "conftest forces 8 CPU devices"
    path = checkpoints["tied_gqa4"]
    mesh = make_mesh(*shape)
    sharded = load_pretrained(path, mesh=mesh)
    params = sharded.params()
    q_spec = params["layers"]["q_proj"]["kernel"].sharding.spec
    expected_tensor = "tensor" if shape[2] > 1 else None
    assert tuple(q_spec)[2] == expected_tensor
    single = load_pretrained(path)
    tokens = _tokens(single.config.vocab_size, (8, 11), seed=7)
    batch = jax.device_put(
        tokens, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
    )
    out = jax.jit(forward, static_argnums=1)(params, sharded.config, batch)
    np.testing.assert_allclose(np.asarray(out), np.asarray(single(tokens)), atol=1e-5, rtol=0)


def test_optimizer_state_is_sharded_like_params(checkpoints):
    mesh = make_mesh(2, 2, 2)
    model = load_pretrained(checkpoints["untied_gqa2"], mesh=mesh)
    params = model.params()
    shardings = param_shardings(model.config, mesh)
    tx = optax.adamw(1e-3)
    state_shardings = optimizer_state_shardings(
        jax.eval_shape(tx.init, params), params, shardings, mesh
    )
    state = jax.jit(tx.init, out_shardings=state_shardings)(params)
    mu = state[0].mu
    for path in (("layers", "q_proj", "kernel"), ("embed",)):
        leaf, ref = mu, params
        for key in path:
            leaf, ref = leaf[key], ref[key]
        assert leaf.sharding.is_equivalent_to(ref.sharding, leaf.ndim)
    assert state[0].count.sharding.is_fully_replicated


def _corrupt(src, dst, edit):
    shutil.copytree(src, dst)
    edit(dst)
    return dst


def _set_config(**changes):
    def edit(path):
        cfg = json.loads((path / "config.json").read_text())
        cfg.update(changes)
        (path / "config.json").write_text(json.dumps(cfg))

    return edit


def _replace_tensor(name, array=None, extra=None):
    def edit(path):
        from safetensors.numpy import load_file, save_file

        tensors = load_file(str(path / "model.safetensors"))
        if array is None:
            del tensors[name]
        else:
            tensors[name] = array
        tensors.update(extra or {})
        save_file(tensors, str(path / "model.safetensors"))

    return edit


BAD_CHECKPOINTS = {
    "no_config": (lambda p: (p / "config.json").unlink(), "config.json not found"),
    "bad_json": (lambda p: (p / "config.json").write_text("{"), "not valid JSON"),
    "mistral": (
        _set_config(model_type="mistral", architectures=["MistralForCausalLM"]),
        r"unsupported architecture \(architectures=\['MistralForCausalLM'\]",
    ),
    "type_mismatch": (
        _set_config(model_type="llama"),
        r"unsupported architecture \(architectures=\['Qwen2ForCausalLM'\], model_type='llama'",
    ),
    "sliding": (_set_config(use_sliding_window=True), "use_sliding_window=true"),
    "sliding_layers": (
        _set_config(layer_types=["full_attention", "sliding_attention"]),
        r"layer_types \['sliding_attention'\] are not supported",
    ),
    "yarn": (
        _set_config(rope_scaling={"rope_type": "yarn", "factor": 4.0}),
        "rope_scaling type 'yarn' is not supported",
    ),
    "llama3_incomplete": (
        _set_config(rope_scaling={"rope_type": "llama3", "factor": 8.0}),
        "rope_scaling type 'llama3' needs low_freq_factor",
    ),
    "gelu": (_set_config(hidden_act="gelu"), "hidden_act='gelu'"),
    "llama_attention_bias": (
        _set_config(model_type="llama", architectures=["LlamaForCausalLM"], attention_bias=True),
        "attention_bias=True is not supported",
    ),
    "qwen3_attention_bias": (
        _set_config(model_type="qwen3", architectures=["Qwen3ForCausalLM"], attention_bias=True),
        "attention_bias=True is not supported",
    ),
    "llama_mlp_bias": (
        _set_config(model_type="llama", architectures=["LlamaForCausalLM"], mlp_bias=True),
        "mlp_bias=True is not supported",
    ),
    "no_weights": (lambda p: (p / "model.safetensors").unlink(), "no model.safetensors"),
    "corrupt": (
        lambda p: (p / "model.safetensors").write_bytes(b"\x00" * 64),
        "not a readable safetensors",
    ),
    "missing_tensor": (
        _replace_tensor("model.layers.1.mlp.up_proj.weight"),
        "model.layers.1.mlp.up_proj.weight is missing",
    ),
    "bad_shape": (
        _replace_tensor("model.layers.0.self_attn.k_proj.bias", np.zeros(7, np.float32)),
        r"k_proj.bias in .*model.safetensors has shape \(7,\), expected \(24,\)",
    ),
    "unexpected": (
        _replace_tensor(
            "model.norm.weight", np.ones(48, np.float32), {"vision.proj": np.zeros(2, np.float32)}
        ),
        "unexpected tensors .*vision.proj",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CHECKPOINTS))
def test_bad_checkpoint_gives_clear_error(checkpoints, tmp_path, case):
    edit, message = BAD_CHECKPOINTS[case]
    path = _corrupt(checkpoints["untied_gqa2"], tmp_path / case, edit)
    with pytest.raises(CheckpointError, match=message):
        load_pretrained(path)


def test_missing_directory_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_pretrained(tmp_path / "nowhere")


def test_model_config_checks_the_family_layout():
    sizes = dict(vocab_size=8, hidden_size=8, intermediate_size=8, num_layers=1, num_heads=2)
    sizes.update(num_kv_heads=1, head_dim=4)
    qwen3 = ModelConfig(**sizes, architecture="Qwen3ForCausalLM")
    assert (qwen3.attention_bias, qwen3.qk_norm) == (False, True)  # the family's layout
    assert ModelConfig(**sizes).attention_bias  # default: Qwen2
    with pytest.raises(ModelConfigError, match="unsupported architecture 'GPT2LMHeadModel'"):
        ModelConfig(**sizes, architecture="GPT2LMHeadModel")
    with pytest.raises(ModelConfigError, match="LlamaForCausalLM has qk_norm=False, got True"):
        ModelConfig(**sizes, architecture="LlamaForCausalLM", qk_norm=True)
    with pytest.raises(ModelConfigError, match="rope_scaling type 'ntk' is not supported"):
        RopeScaling("ntk")
