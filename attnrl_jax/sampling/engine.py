"""The rollout-engine seam: what the trainer, evaluation and the CLIs ask of a generator.

    engine = NativeEngine(model_cfg, params, SamplerConfig())
    samples = engine.generate([Request(prompt_ids, n=6)], SamplingOptions(max_new_tokens=64))
    engine.update_weights(new_params, version=1)   # after every optimizer update
    engine.close()

An engine returns, per request in request order, its n `Sample`s: the generated token ids, the
behaviour log-prob of each under softmax(logits / temperature) of the UNtruncated distribution
(top-p / top-k change which tokens can be drawn, not the log-prob), and a finish reason ("eos"
or "length"). FCI (`Sample.fci`) is optional: an engine that cannot accumulate it while
decoding returns None and the training config uses `rollout.fci_source="scoring"`, so FCI
comes from the scoring forward. Row (request i, sample s) must draw from the random stream
(options.seed, Request.index or i, s) for results that do not depend on batching; an external
engine that cannot promise this still trains correctly, only not bit-reproducibly.

`NativeEngine` is the project's jitted KV-cache sampler (sampling/requests.py + sampler.py).
On a mesh it keeps its own copy of the params in the decode layout (models/sharding.py
decode_layout: replicated over data x fsdp, split over tensor), put there once per weight
update. `place_on` moves the trainer's params onto another device group (mesh.rollout_devices).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import jax
from jax.sharding import NamedSharding, PartitionSpec

from attnrl_jax.models import sharding
from attnrl_jax.models.config import ModelConfig
from attnrl_jax.models.lm import Params
from attnrl_jax.sampling.requests import Request, Sample, SamplingOptions, sample
from attnrl_jax.sampling.sampler import SamplerConfig


@runtime_checkable
class RolloutEngine(Protocol):
    """A generator of samples for the current policy (see the module docstring)."""

    @property
    def max_positions(self) -> int:
        """The most tokens (prompt + prefix + generated) one row may hold."""
        ...

    def generate(
        self,
        requests: Sequence[Request],
        options: SamplingOptions,
        progress: Callable[[int], None] | None = None,
    ) -> list[Sample]:
        """Every request's n samples, in request then sample order; progress(k) as k finish."""
        ...

    def update_weights(self, params: Params, version: int) -> None:
        """Use `params` (policy version `version`) for every later generate call."""
        ...

    def close(self) -> None: ...


class NativeEngine:
    """The native sampler behind the RolloutEngine protocol.

    One device (config.mesh None): holds a reference to the params (update_weights swaps it: no
    copy). On a mesh: the params are placed once per update into the decode layout chosen by
    `decode_layout` ("auto" | "replicated" | "training", against `decode_budget_bytes` per
    device; see sharding.decode_layout), so the decode loop reads local weights.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        params: Params | None,
        config: SamplerConfig | None = None,
        decode_layout: str = "auto",
        decode_budget_bytes: int | None = None,
    ):
        self.cfg, self.config = cfg, config or SamplerConfig()
        self.layout: tuple[sharding.Rules, Any] | None = None  # (rules, dtype) on a mesh
        if self.config.mesh is not None:
            self.layout = sharding.decode_layout(
                cfg, self.config.mesh, self.config.rules, decode_layout, decode_budget_bytes
            )
            rules, dtype = self.layout
            self._target = sharding.param_shardings(cfg, self.config.mesh, rules)
            # compiled once per engine: every update reuses it
            self._relayout = jax.jit(
                functools.partial(_astype, dtype=dtype), out_shardings=self._target
            )
        self.params = None if params is None else self._place(params)
        self.version = 0

    @property
    def max_positions(self) -> int:
        return self.cfg.max_position_embeddings

    def generate(
        self,
        requests: Sequence[Request],
        options: SamplingOptions,
        progress: Callable[[int], None] | None = None,
    ) -> list[Sample]:
        if not requests:
            return []
        return sample(self.params, self.cfg, requests, options, self.config, progress)

    def update_weights(self, params: Params, version: int) -> None:
        self.params = None  # the old decode copy is freed before the new one is made
        self.params, self.version = self._place(params), version

    def close(self) -> None:
        self.params = None

    def _place(self, params: Params) -> Params:
        """params in the engine's layout (module docstring); unchanged without a mesh or when
        they are in it already (a rollout group's params placed by the trainer)."""
        if self.layout is None:
            return params
        dtype, leaves = self.layout[1], jax.tree.leaves(params)
        targets = jax.tree.leaves(self._target)
        if all(
            isinstance(x, jax.Array) and x.dtype == dtype and x.sharding.is_equivalent_to(t, x.ndim)
            for x, t in zip(leaves, targets, strict=True)
        ):
            return params
        devices = set(self.config.mesh.devices.flat)
        if all(not isinstance(x, jax.Array) or x.sharding.device_set == devices for x in leaves):
            return self._relayout(params)  # an all-gather over fsdp (when split) and the cast
        # Another device group: cast where the params are (less to move), then move them.
        return place_on(_cast(params, dtype), self._target)


def _astype(params: Params, dtype: Any) -> Params:
    return jax.tree.map(lambda x: x.astype(dtype), params)


_cast = jax.jit(_astype, static_argnames="dtype")


def place_on(tree: Any, shardings: Any) -> Any:
    """`tree` (arrays on one device group) placed with `shardings` (another group's).

    One process: a device_put. Several: multi-controller JAX cannot reshard between disjoint
    device sets, so the tree is first replicated over its own mesh (one all-gather: every
    process then holds each array whole, for a moment) and each process copies the slices its
    devices of the target own.
    """
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)
    replicated = jax.tree.map(lambda x: NamedSharding(x.sharding.mesh, PartitionSpec()), tree)
    whole = jax.jit(lambda t: t, out_shardings=replicated)(tree)

    def one(x: jax.Array, sharding) -> jax.Array:
        local = x.addressable_data(0)
        parts = [
            jax.device_put(local[index], device)
            for device, index in sharding.addressable_devices_indices_map(x.shape).items()
        ]
        return jax.make_array_from_single_device_arrays(x.shape, sharding, parts)

    return jax.tree.map(one, whole, shardings)
