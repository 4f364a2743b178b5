"""`make demo`: the smallest honest end-to-end run of what exists today.

1. builds the project's tiny tokenizer and a random Qwen2, writes a Hugging Face checkpoint and
   reloads it sharded over every local device;
2. samples responses with the jitted KV-cache sampler;
3. scores them in one forward (log-probs, entropies, FCI) and picks ATB branch points;
4. grades answers with the project's verifier;
5. runs a few steps of the one-step off-policy trainer on the built-in arithmetic task
   (configs/demo.py).

The policy is random and trains for only a few steps, so its reward stays near zero: this
shows the pipeline running, not learning. The learning demo (warm start, visible accuracy gain)
is not implemented yet.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from attnrl_jax.data.prompts import encode_prompts
from attnrl_jax.data.tokenizer import build_tiny_tokenizer
from attnrl_jax.models import (
    ModelConfig,
    Qwen2ForCausalLM,
    forward,
    load_pretrained,
    make_mesh,
    save_pretrained,
)
from attnrl_jax.rewards.math import grade
from attnrl_jax.sampling import Request, SamplingOptions, sample
from attnrl_jax.scoring.forward import ScoringConfig, score_sequences
from attnrl_jax.scoring.selection import SelectionConfig, select_branch_points
from attnrl_jax.scoring.steps import SeparatorIds

REPO = Path(__file__).resolve().parents[1]


def tiny_config(vocab_size: int) -> ModelConfig:
    return ModelConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        tie_word_embeddings=True,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="the attnrl-jax demo")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a new temp dir")
    parser.add_argument("--train_steps", type=int, default=4)
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="attnrl_demo_"))

    tokenizer = build_tiny_tokenizer()
    cfg = tiny_config(len(tokenizer))
    model = Qwen2ForCausalLM(cfg, rngs=nnx.Rngs(0))
    path = save_pretrained(model, workdir / "tiny-qwen2", tokenizer=tokenizer, overwrite=True)
    mesh = make_mesh(data=-1)
    loaded = load_pretrained(path, mesh=mesh)
    prompt_ids = encode_prompts(tokenizer, ["What is 6 times 7?"])[0]
    tokens = jnp.asarray([prompt_ids], dtype=jnp.int32)
    logits = jax.jit(forward, static_argnums=1)(loaded.params(), loaded.config, tokens)
    drift = float(np.abs(np.asarray(logits) - np.asarray(model(tokens))).max())
    print(f"1. checkpoint: random {cfg.num_layers}-layer Qwen2 written to {path}, reloaded on a")
    print(f"   {dict(mesh.shape)} mesh; max |logit difference| after the round trip: {drift:.1e}")

    options = SamplingOptions(max_new_tokens=48, temperature=1.0, seed=0, eos_ids=(0,))
    samples = sample(loaded.params(), loaded.config, [Request(prompt_ids, n=4)], options)
    lengths = [len(s.token_ids) for s in samples]
    print(f"2. sampler: 4 samples of one prompt (prefilled once), lengths {lengths}; sample 0:")
    print("   " + repr(tokenizer.decode(samples[0].token_ids))[:100] + " (random weights)")

    seps = SeparatorIds.from_tokenizer(tokenizer)
    responses = [s.token_ids.tolist() for s in samples]
    scored = score_sequences(
        loaded.params(), loaded.config, ScoringConfig(), [prompt_ids] * 4, responses, seps
    )
    first = scored[0]
    selection = SelectionConfig(min_token_distance=0)
    points = select_branch_points(first.layout, selection, fci=first.fci)
    gap = float(np.abs(first.logprobs - samples[0].logprobs).max())
    print(f"3. scoring: sample 0 has {first.layout.num_steps} steps, FCI per step")
    print(f"   {np.round(first.fci, 3).tolist()}, ATB branch points (token offsets) {points};")
    print(f"   scoring log-probs equal the sampler's to {gap:.1e}")

    print("4. reward: the project's verifier")
    for response, gold in [
        ("... so the answer is \\boxed{\\frac{1}{2}}", "0.5"),
        ("</think> The answer is \\boxed{42}.", "42"),
        ("I think it is \\boxed{41}", "42"),
        ("no boxed answer here", "7"),
    ]:
        result = grade(response, gold)
        print(f"   gold {gold!r:6} {response!r:44} -> correct={result.correct} ({result.reason})")

    train_dir = workdir / "train"
    print(f"5. trainer: {args.train_steps} steps of AttnRL on the arithmetic task, in {train_dir}")
    command = [
        sys.executable,
        "-m",
        "attnrl_jax.train",
        f"--config={REPO / 'configs' / 'demo.py'}",
        f"--config.workdir={train_dir}",
        f"--config.total_steps={args.train_steps}",
    ]
    subprocess.run(command, check=True)
    for line in (train_dir / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        print(
            f"   step {m['step']}: reward {m['reward']:.3f}, valid ratio {m['valid_ratio']:.2f}, "
            f"prompt batch {m['prompt_batch_size']}"
        )
    print("The policy is random, so its reward stays near zero: the learning demo (warm start,")
    print("held-out accuracy before/after) is not implemented yet.")


if __name__ == "__main__":
    main()
