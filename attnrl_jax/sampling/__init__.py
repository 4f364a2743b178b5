"""The sampler: jitted KV-cache generation with fan-out and continuation from any prefix."""

from attnrl_jax.sampling.buckets import Buckets
from attnrl_jax.sampling.requests import Request, Sample, SamplingOptions, check_request, sample
from attnrl_jax.sampling.sampler import DeviceBatch, DeviceResult, SamplerConfig, sample_batch
from attnrl_jax.sampling.token_choice import SamplingParams, choose_tokens

__all__ = [
    "Buckets",
    "DeviceBatch",
    "DeviceResult",
    "Request",
    "Sample",
    "SamplerConfig",
    "SamplingOptions",
    "SamplingParams",
    "check_request",
    "choose_tokens",
    "sample",
    "sample_batch",
]
