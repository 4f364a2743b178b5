"""The sampler: jitted KV-cache generation with fan-out and continuation from any prefix.

    from attnrl_jax.sampling import Request, SamplingOptions, sample

    samples = sample(params, cfg, [
        Request(prompt_ids, n=6),               # six fresh responses to one prompt
        Request(prompt_ids, prefix_ids, n=2),   # two continuations of a response prefix
    ], SamplingOptions(max_new_tokens=8192, temperature=1.0, eos_ids=(eos_id,)))

Files, one concept each: requests.py (validation; requests -> samples through one of two
schedulers), scheduler.py + continuous.py (continuous batching: slots, admission, compiled
decode chunks; the default), pages.py + paged_cache.py (the paged KV cache: page table and free
list on the host, the page pool on the device), shard_pages.py (a page table per batch shard on
a mesh), sampler.py (the lock-step scheduler: one
compiled prefill + decode loop per padded batch), fci_decode.py (FCI of fresh samples
accumulated while decoding by an attention observer, the `SamplingOptions.fci` option),
fci_rows.py (a call's FCI rows gathered and finished on the device, one array per call),
cache.py (the lock-step KV cache with a length per row, as attention hooks; it knows nothing of
FCI), token_choice.py (greedy / temperature / top-k / top-p and the behaviour log-prob),
buckets.py (the padded sizes that keep compiles few, from `attnrl_jax.buckets`).
"""

from attnrl_jax.sampling.buckets import Buckets
from attnrl_jax.sampling.fci_decode import SamplerFci
from attnrl_jax.sampling.requests import Request, Sample, SamplingOptions, check_request, sample
from attnrl_jax.sampling.sampler import DeviceBatch, DeviceResult, SamplerConfig, sample_batch
from attnrl_jax.sampling.scheduler import EngineStats
from attnrl_jax.sampling.token_choice import SamplingParams, choose_tokens

__all__ = [
    "Buckets",
    "DeviceBatch",
    "DeviceResult",
    "EngineStats",
    "Request",
    "Sample",
    "SamplerConfig",
    "SamplerFci",
    "SamplingOptions",
    "SamplingParams",
    "check_request",
    "choose_tokens",
    "sample",
    "sample_batch",
]
