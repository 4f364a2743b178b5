"""Sampler throughput: attnrl_jax against transformers' generate, same weights, same machine.

    python benchmarks/sampler.py [--models small,medium] [--batches 1,16,64] [--prompt_len 64]
        [--new_tokens 256] [--dtype float32] [--repeats 3] [--json OUT]

For each random model (weights drawn once, written with save_pretrained, loaded by both
systems from that directory) and batch size: B prompts of prompt_len random tokens, each
sampled once with new_tokens new tokens (EOS disabled), temperature 1, full vocabulary (top_p 1,
top_k 0 for both). Generated tokens per second count the whole call, prefill included; each
system's best of --repeats runs after a warm-up, the systems alternating so that machine
noise hits all. attnrl_jax's compile time (first call minus a warm one) is reported apart.
attnrl_jax runs its default engine (continuous batching, paged KV) and, as "attnrl_jax_lockstep",
the lock-step scheduler (dense cache, one device batch run to its end) on the same requests:
with equal lengths and EOS off, the case where lock-step wastes nothing.

Models: small (hidden 256, 4 layers, vocab 8192), medium (hidden 512, 8 layers, vocab 16384),
both with 8 query / 2 KV heads and MLP width 4 x hidden; 1.5b: the shape of
DeepSeek-R1-Distill-Qwen-1.5B (28 layers, hidden 1536, MLP 8960, 12 / 2 heads, vocab 151936),
meant for a GPU in bfloat16 (--layers shrinks it for a quick check of this path).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

# On a GPU, let transformers have memory too: JAX would otherwise take 75% of it up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# Time this checkout's attnrl_jax, not whichever one the environment installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from attnrl_jax.models import ModelConfig, init_params, load_pretrained, save_pretrained  # noqa: E402
from attnrl_jax.models.lm import from_params  # noqa: E402
from attnrl_jax.sampling import Request, SamplerConfig, SamplingOptions, sample  # noqa: E402

MODELS = {
    "small": dict(hidden_size=256, num_layers=4, vocab_size=8192, num_heads=8, num_kv_heads=2),
    "medium": dict(hidden_size=512, num_layers=8, vocab_size=16384, num_heads=8, num_kv_heads=2),
    "1.5b": dict(
        hidden_size=1536,
        num_layers=28,
        vocab_size=151936,
        num_heads=12,
        num_kv_heads=2,
        intermediate_size=8960,
        rope_theta=10000.0,
    ),
}


def model_config(name: str, dtype: str, layers: int | None) -> ModelConfig:
    shape = dict(MODELS[name])
    shape.setdefault("intermediate_size", 4 * shape["hidden_size"])
    if layers is not None:
        shape["num_layers"] = layers
    head_dim = shape["hidden_size"] // shape["num_heads"]
    return ModelConfig(**shape, head_dim=head_dim, dtype=dtype, param_dtype=dtype)


def write_checkpoint(cfg: ModelConfig, path: Path) -> Path:
    params = init_params(cfg, jax.random.key(0))
    return save_pretrained(from_params(cfg, params), path)


def time_ours(
    model, prompts: np.ndarray, new_tokens: int, repeats: int, scheduler: str = "continuous"
) -> tuple[float, float]:
    """(best seconds per call, compile seconds) with the given scheduler."""
    config = SamplerConfig(scheduler=scheduler)
    requests = [Request(p.tolist()) for p in prompts]
    options = SamplingOptions(max_new_tokens=new_tokens, temperature=1.0, top_p=1.0, top_k=0)

    def call() -> float:
        start = time.perf_counter()
        samples = sample(model.params(), model.config, requests, options, config)
        elapsed = time.perf_counter() - start
        assert all(len(s.token_ids) == new_tokens for s in samples)
        return elapsed

    first = call()
    best = min(call() for _ in range(repeats))
    return best, first - best


def time_transformers(model, prompts: np.ndarray, new_tokens: int, repeats: int) -> float:
    import torch

    device = next(model.parameters()).device
    ids = torch.as_tensor(prompts, device=device)
    kwargs = dict(
        attention_mask=torch.ones_like(ids),
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        eos_token_id=None,
        pad_token_id=0,
    )

    def call(tokens: int) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, **kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        assert out.shape[1] == prompts.shape[1] + tokens
        return time.perf_counter() - start

    call(4)  # warm-up
    return min(call(new_tokens) for _ in range(repeats))


def load_transformers(path: Path, dtype: str):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
    version = tuple(int(v) for v in transformers.__version__.split(".")[:2])
    dtype_arg = "dtype" if version >= (4, 56) else "torch_dtype"  # renamed in 4.56
    model = AutoModelForCausalLM.from_pretrained(str(path), **{dtype_arg: getattr(torch, dtype)})
    return model.to(device).eval(), device


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="small,medium")
    parser.add_argument("--batches", default="1,16,64")
    parser.add_argument("--prompt_len", type=int, default=64)
    parser.add_argument("--new_tokens", type=int, default=256)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--layers", type=int, help="override the models' layer count")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the rows here as a JSON list")
    args = parser.parse_args(argv)

    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    print(
        f"# jax {jax.__version__} ({jax.default_backend()}, {jax.devices()[0].device_kind}), "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"transformers {transformers.__version__}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs",
        flush=True,
    )
    rows = []
    header = f"{'model':<8} {'batch':>5} {'attnrl_jax':>11} {'lockstep':>9} {'transformers':>13} "
    print(header + f"{'ratio':>6} {'compile s':>9}   (generated tokens/s)", flush=True)
    for name in args.models.split(","):
        cfg = model_config(name, args.dtype, args.layers)
        with tempfile.TemporaryDirectory() as tmp:
            path = write_checkpoint(cfg, Path(tmp) / name)
            ours = load_pretrained(path, dtype=cfg.compute_dtype)
            theirs, device = load_transformers(path, args.dtype)
        for batch in (int(b) for b in args.batches.split(",")):
            prompts = np.random.default_rng(batch).integers(
                0, cfg.vocab_size, size=(batch, args.prompt_len), dtype=np.int64
            )
            ours_s, compile_s = time_ours(ours, prompts, args.new_tokens, args.repeats)
            lock_s, _ = time_ours(ours, prompts, args.new_tokens, args.repeats, "lockstep")
            theirs_s = time_transformers(theirs, prompts, args.new_tokens, args.repeats)
            tokens = batch * args.new_tokens
            print(
                f"{name:<8} {batch:>5} {tokens / ours_s:>11.0f} {tokens / lock_s:>9.0f} "
                f"{tokens / theirs_s:>13.0f} "
                f"{theirs_s / ours_s:>5.2f}x {compile_s:>9.1f}",
                flush=True,
            )
            params = dict(
                model=name,
                layers=cfg.num_layers,
                hidden=cfg.hidden_size,
                vocab=cfg.vocab_size,
                batch=batch,
                prompt_len=args.prompt_len,
                new_tokens=args.new_tokens,
                dtype=args.dtype,
                device=device,
                repeats=args.repeats,
            )
            for system, metric, value, unit in [
                ("attnrl_jax", "generated_tokens_per_s", tokens / ours_s, "tokens/s"),
                ("attnrl_jax_lockstep", "generated_tokens_per_s", tokens / lock_s, "tokens/s"),
                ("transformers", "generated_tokens_per_s", tokens / theirs_s, "tokens/s"),
                ("attnrl_jax", "speedup_vs_transformers", theirs_s / ours_s, "x"),
                ("attnrl_jax", "compile_time", compile_s, "s"),
            ]:
                row = dict(benchmark="sampler", system=system, params=params, metric=metric)
                rows.append(row | dict(value=round(value, 3), unit=unit))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
