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
`place_on` moves the trainer's params onto another device group (mesh.rollout_devices).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import jax
from jax.sharding import NamedSharding, PartitionSpec

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
    """The native sampler behind the RolloutEngine protocol; holds a reference to the params
    (update_weights swaps the reference: no copy, no transfer)."""

    def __init__(self, cfg: ModelConfig, params: Params, config: SamplerConfig | None = None):
        self.cfg, self.params, self.config = cfg, params, config or SamplerConfig()
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
        self.params, self.version = params, version

    def close(self) -> None:
        self.params = None


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
