"""Checksums that tell a damaged checkpoint from an intact one, and the finiteness check.

Orbax/tensorstore detect a missing or truncated file only sometimes, and a flipped bit in an
uncompressed chunk never: restore then returns wrong numbers silently. So every save records
- one uint32 checksum per array of the training state, computed on the devices where the array
  lives (a weighted sum of the raw bits, weight 2 * flat_index + 1: any single flipped bit changes
  the sum, since an odd weight times 2^k is never 0 mod 2^32); no array is gathered or reshaped,
  so sharded arrays stay sharded and several hosts compute the same global value;
- a SHA-256 of every host-side numpy array (the pending Generation) and of the host JSON itself;
and restore recomputes and compares them, and refuses non-finite params or optimizer state.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

VERSION = 1
_UINT = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}


class DamagedCheckpoint(RuntimeError):
    """A checkpoint step whose files cannot be read or whose contents fail verification."""

    def __init__(self, step: int, directory, reason: str, message: str | None = None):
        super().__init__(message or f"checkpoint {directory}/{step} is damaged: {reason}")
        self.step, self.reason = step, reason


def _bits(x: jax.Array) -> jax.Array:
    """The raw bits of x as uint32 (same shape)."""
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    width = jnp.dtype(x.dtype).itemsize
    if width > 4:  # 64-bit values: fold the two halves
        u = jax.lax.bitcast_convert_type(x, jnp.uint64)
        return (u ^ (u >> 32)).astype(jnp.uint32)
    return jax.lax.bitcast_convert_type(x, _UINT[width]).astype(jnp.uint32)


def _flat_index(shape: tuple[int, ...]) -> jax.Array:
    """uint32 row-major index of every element, built per dimension (no reshape of sharded data)."""
    index = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for dim in reversed(range(len(shape))):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, dim) * jnp.uint32(stride)
        stride = (stride * shape[dim]) % 2**32
    return index


def _leaf_sum(x: jax.Array) -> jax.Array:
    weights = _flat_index(x.shape) * jnp.uint32(2) + jnp.uint32(1)
    return jnp.sum(_bits(x) * weights, dtype=jnp.uint32)


def _leaf_finite(x: jax.Array) -> jax.Array:
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.all(jnp.isfinite(x))
    return jnp.array(True)


@jax.jit
def _device_finite(tree: Any) -> jax.Array:
    return jnp.all(jnp.stack([_leaf_finite(x) for x in jax.tree.leaves(tree)] or [True]))


@jax.jit
def _device_summary(tree: Any) -> tuple[Any, jax.Array]:
    return jax.tree.map(_leaf_sum, tree), _device_finite(tree)


def array_checksums(tree: Any) -> tuple[dict[str, int], bool]:
    """({key path: uint32 checksum} of every array leaf of `tree`, whether all are finite)."""
    sums, finite = _device_summary(tree)
    flat = jax.tree_util.tree_flatten_with_path(jax.device_get(sums))[0]
    return {jax.tree_util.keystr(path): int(v) for path, v in flat}, bool(finite)


def all_finite(tree: Any) -> bool:
    """Whether every floating-point array of `tree` is finite (one device reduction)."""
    return bool(_device_finite(tree))


def numpy_digests(arrays: dict | None, prefix: str = "") -> dict[str, str]:
    """SHA-256 of each host array's dtype, shape and bytes, keyed by its path ("0/responses":
    nested dicts, such as several pending batches, are walked)."""
    out = {}
    for name, a in (arrays or {}).items():
        if isinstance(a, dict):
            out.update(numpy_digests(a, f"{prefix}{name}/"))
            continue
        name = prefix + name
        a = np.ascontiguousarray(a)
        h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
        out[name] = h.hexdigest()
    return out


def json_digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def record(state: Any, host: dict, pending: dict | None) -> dict:
    """The integrity record saved with a checkpoint (host must not yet hold one)."""
    sums, finite = array_checksums(state)
    if not finite:
        raise ValueError("refusing to save non-finite params or optimizer state")
    return {
        "version": VERSION,
        "state": sums,
        "pending": numpy_digests(pending),
        "host": json_digest(host),
    }


def verify_host(host: dict) -> str | None:
    """None when the host JSON matches its record (or has none: an older checkpoint), else why."""
    rec = host.get("integrity")
    if rec is None:
        return None
    rest = {k: v for k, v in host.items() if k != "integrity"}
    if json_digest(rest) != rec.get("host"):
        return "the host state (host JSON) does not match its checksum"
    return None


def verify_state(state: Any, host: dict, prefix: str = "") -> str | None:
    """None when every array of `state` matches the record (keys under `prefix` only when the
    state is a part, e.g. the params alone) and is finite; else why not."""
    sums, finite = array_checksums(state)
    if not finite:
        return "non-finite values in the params or optimizer state"
    rec = host.get("integrity")
    if rec is None:
        return None
    expected = {k: v for k, v in rec["state"].items() if k.startswith(prefix)}
    if set(sums) != set(expected):
        missing = sorted(set(expected) ^ set(sums))[:3]
        return f"the arrays differ from those saved: {missing}"
    bad = [k for k in expected if sums[k] != expected[k]]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        return f"checksum mismatch in {', '.join(bad[:3])}{more}"
    return None


def verify_pending(arrays: dict | None, host: dict) -> str | None:
    rec = host.get("integrity")
    if rec is None or arrays is None:
        return None
    got = numpy_digests(arrays)
    bad = sorted(k for k in rec["pending"] if got.get(k) != rec["pending"][k])
    return f"checksum mismatch in the pending batch ({', '.join(bad)})" if bad else None
