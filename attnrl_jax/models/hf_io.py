"""Hugging Face checkpoint directories <-> CausalLM, for every registered family.

Loading reads config.json and (sharded) safetensors lazily: every device receives only its own
slice of each tensor, read straight from the file, so no process holds a full copy per device.
Saving writes a directory that transformers' AutoModelForCausalLM (and vLLM) load as is.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from safetensors import safe_open
from safetensors.numpy import save_file

from attnrl_jax.models import lm, sharding
from attnrl_jax.models.config import ModelConfig, ModelConfigError, dtype_name
from attnrl_jax.models.families import family

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "generation_config.json",
)


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded: names the file and tensor at fault."""


_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some older exports carry


def read_config(path: str | os.PathLike) -> ModelConfig:
    """ModelConfig from DIR/config.json, with a clear error for a missing or bad file."""
    config_file = Path(path) / "config.json"
    if not Path(path).is_dir():
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    if not config_file.is_file():
        raise CheckpointError(f"{config_file} not found: not a Hugging Face model directory")
    try:
        hf = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config_file} is not valid JSON: {e}") from None
    try:
        return ModelConfig.from_hf(hf, source=str(config_file))
    except (ModelConfigError, TypeError) as e:
        raise CheckpointError(str(e)) from None


class _TensorFiles:
    """Name -> file index over one or many safetensors files, opened lazily."""

    def __init__(self, path: Path):
        index = path / INDEX_FILE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise CheckpointError(f"{index} is not a valid safetensors index: {e}") from None
            files = sorted(set(weight_map.values()))
        elif (path / SINGLE_FILE).is_file():
            files, weight_map = [SINGLE_FILE], None
        else:
            raise CheckpointError(f"no {SINGLE_FILE} or {INDEX_FILE} in {path}")
        self.handles: dict[str, Any] = {}
        self.where: dict[str, str] = {}
        for name in files:
            file = path / name
            if not file.is_file():
                raise CheckpointError(f"{file} is listed in {INDEX_FILE} but missing")
            try:
                handle = safe_open(str(file), framework="numpy")
            except Exception as e:  # safetensors raises its own error types for corrupt files
                raise CheckpointError(f"{file} is not a readable safetensors file: {e}") from None
            self.handles[str(file)] = handle
            for key in handle.keys():  # noqa: SIM118 (safe_open has keys(), not __iter__)
                self.where[key] = str(file)
        if weight_map is not None:
            for key, name in weight_map.items():
                if self.where.get(key) != str(path / name):
                    raise CheckpointError(f"{index} lists {key} in {name}, but it is not there")

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.handles[self.where[name]].get_slice(name).get_shape())

    def read(self, name: str, index: tuple[slice, ...]) -> np.ndarray:
        return self.handles[self.where[name]].get_slice(name)[index]


def _check_tensors(files: _TensorFiles, cfg: ModelConfig) -> None:
    """Every expected tensor present with its shape; nothing unexplained left over."""
    expected = {}
    names = family(cfg.architecture).hf_names
    for path, shape in lm.param_shapes(cfg).items():
        name, transpose = names[path]
        per_layer = path.startswith("layers/")
        hf_shape = shape[1:] if per_layer else shape
        hf_shape = hf_shape[::-1] if transpose else hf_shape
        for i in range(cfg.num_layers) if per_layer else [None]:
            expected[name.format(i=i)] = tuple(hf_shape)
    for name, shape in expected.items():
        if name not in files.where:
            raise CheckpointError(f"tensor {name} is missing from the checkpoint")
        found = files.shape(name)
        if found != shape:
            raise CheckpointError(
                f"tensor {name} in {files.where[name]} has shape {found}, expected {shape} "
                "from config.json"
            )
    tied_head = cfg.tie_word_embeddings and "lm_head.weight" in files.where
    extra = [
        n
        for n in files.where
        if n not in expected
        and not n.endswith(_IGNORED_SUFFIXES)
        and not (tied_head and n == "lm_head.weight")
    ]
    if extra:
        raise CheckpointError(
            f"unexpected tensors for a {cfg.architecture} model: {sorted(extra)[:5]} "
            f"(in {files.where[extra[0]]})"
        )


def _load_param(files: _TensorFiles, cfg: ModelConfig, path: str, shape, target: jax.Sharding):
    name, transpose = family(cfg.architecture).hf_names[path]
    dtype = cfg.weight_dtype
    per_layer = path.startswith("layers/")

    def read(index: tuple[slice, ...]) -> np.ndarray:
        # index: this device's slice of our layout; map it to the file's (transposed) layout.
        layers, inner = (index[0], index[1:]) if per_layer else (None, index)
        file_index = tuple(reversed(inner)) if transpose else inner
        blocks = []
        for i in range(cfg.num_layers)[layers] if per_layer else [None]:
            block = files.read(name.format(i=i), file_index)
            blocks.append(block.T if transpose else block)
        out = np.stack(blocks) if per_layer else blocks[0]
        return out.astype(dtype)

    return jax.make_array_from_callback(shape, target, read)


def load_pretrained(
    path: str | os.PathLike,
    dtype: Any = jnp.float32,
    mesh: Mesh | None = None,
    param_dtype: Any = None,
    rules: sharding.Rules = sharding.DEFAULT_RULES,
) -> lm.CausalLM:
    """Loads a Hugging Face checkpoint directory of a registered family as a Flax NNX module.

    dtype: computation dtype; param_dtype: storage dtype (default: dtype). With a mesh, every
    parameter is created directly with its sharding from `rules` (models/sharding.py).
    """
    path = Path(path)
    cfg = read_config(path).replace(
        dtype=dtype_name(dtype), param_dtype=dtype_name(param_dtype or dtype)
    )
    files = _TensorFiles(path)
    _check_tensors(files, cfg)
    shapes = lm.param_shapes(cfg)
    if mesh is None:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        targets = dict.fromkeys(shapes, device)
    else:
        specs = sharding.logical_specs(cfg, mesh, rules)
        targets = {p: NamedSharding(mesh, specs[p]) for p in shapes}
    flat = {p: _load_param(files, cfg, p, shapes[p], targets[p]) for p in shapes}
    return lm.from_params(cfg, lm.unflatten(flat))


def _to_host(x: jax.Array) -> np.ndarray:
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def hf_state_dict(model: lm.CausalLM, dtype: Any = None) -> dict[str, np.ndarray]:
    """Hugging Face tensor name -> numpy array (gathered to this host)."""
    cfg = model.config
    out_dtype = jnp.dtype(dtype or cfg.weight_dtype)
    tensors = {}
    names = family(cfg.architecture).hf_names
    for path, value in lm.flatten(model.params()).items():
        name, transpose = names[path]
        array = _to_host(value).astype(out_dtype)
        for i, block in enumerate(array) if path.startswith("layers/") else [(None, array)]:
            tensors[name.format(i=i)] = np.ascontiguousarray(block.T if transpose else block)
    return tensors


def save_pretrained(
    model: lm.CausalLM,
    path: str | os.PathLike,
    tokenizer: Any = None,
    dtype: Any = None,
    max_shard_bytes: int = 5 * 2**30,
    overwrite: bool = False,
) -> Path:
    """Writes config.json + safetensors (+ the tokenizer) that transformers loads as is.

    Written into a temporary directory beside `path`, then renamed into place, so a failure
    never leaves a half-written checkpoint. On several hosts every process must call this
    (gathering is collective); only process 0 writes.
    """
    path = Path(path)
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(f"{path} exists and is not empty (pass overwrite=True to replace)")
    tensors = hf_state_dict(model, dtype)
    if jax.process_index() != 0:
        return path
    cfg = model.config.replace(param_dtype=dtype_name(dtype or model.config.weight_dtype))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        (tmp / "config.json").write_text(json.dumps(cfg.to_hf(), indent=2) + "\n")
        _write_shards(tensors, tmp, max_shard_bytes)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _write_shards(tensors: dict[str, np.ndarray], out: Path, max_shard_bytes: int) -> None:
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, array in tensors.items():
        if shards[-1] and size + array.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = array
        size += array.nbytes
    metadata = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], str(out / SINGLE_FILE), metadata=metadata)
        return
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / name), metadata=metadata)
        weight_map.update(dict.fromkeys(shard, name))
    index = {"metadata": {"total_size": sum(a.nbytes for a in tensors.values())}}
    index["weight_map"] = weight_map
    (out / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


def copy_tokenizer_files(src: str | os.PathLike, dst: str | os.PathLike) -> list[str]:
    """Copies the tokenizer files present in src into dst (for checkpoints written by training)."""
    copied = []
    for name in TOKENIZER_FILES:
        if (Path(src) / name).is_file():
            shutil.copy2(Path(src) / name, Path(dst) / name)
            copied.append(name)
    return copied


__all__ = [
    "CheckpointError",
    "copy_tokenizer_files",
    "hf_state_dict",
    "load_pretrained",
    "read_config",
    "save_pretrained",
]
