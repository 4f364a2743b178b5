"""The model a run starts from: `model.path`, or the project's tiny random Qwen2 written once
into <workdir>/initial_model (seeded by `seed`, shaped by `model.tiny_*`)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from attnrl_jax import storage
from attnrl_jax.models.config import ModelConfig
from attnrl_jax.rl.run_config import RunConfig


def tiny_model_config(run: RunConfig, vocab_size: int) -> ModelConfig:
    """The ModelConfig of the project's tiny random Qwen2 (run.model.tiny)."""
    t = run.model.tiny
    return ModelConfig(
        vocab_size=vocab_size,
        hidden_size=t.hidden_size,
        intermediate_size=t.intermediate_size,
        num_layers=t.layers,
        num_heads=t.heads,
        num_kv_heads=t.kv_heads,
        head_dim=t.hidden_size // t.heads,
        tie_word_embeddings=True,
        max_position_embeddings=4096,
        dtype=run.model.dtype,
        param_dtype=run.model.param_dtype,
    )


def initial_model_path(c: RunConfig) -> Path:
    """The local HF directory to start from: config.model.path, or the project's tiny random
    model written once to <workdir>/initial_model (seeded by config.seed); a gs:// one is copied
    to a local cache (storage.local_copy)."""
    path = c.initial_model_dir
    if c.model.path:
        return storage.local_copy(path)
    import jax

    if jax.process_index() == 0 and not (path / "config.json").exists():
        _write_tiny_model(c, path)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("attnrl_jax.train initial_model")
        if not (path / "config.json").exists():  # a workdir not shared between hosts
            _write_tiny_model(c, path)
    return storage.local_copy(path)


def _write_tiny_model(c: RunConfig, path: Path) -> None:
    import jax
    from flax import nnx

    from attnrl_jax.data.tokenizer import build_tiny_tokenizer
    from attnrl_jax.models import CausalLM, save_pretrained

    tokenizer = build_tiny_tokenizer(c.model.tiny.vocab_size)
    cfg = tiny_model_config(c, len(tokenizer))
    with jax.default_device(jax.local_devices(backend="cpu")[0]):
        model = CausalLM(cfg, rngs=nnx.Rngs(c.seed))
    if not storage.is_remote(path):
        save_pretrained(model, path, tokenizer=tokenizer, overwrite=True)
        return
    with tempfile.TemporaryDirectory() as tmp:  # config.json, read first, is uploaded last
        save_pretrained(model, Path(tmp) / "model", tokenizer=tokenizer)
        storage.upload_dir(Path(tmp) / "model", path, marker="config.json")
