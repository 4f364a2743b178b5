"""The demo's warm start: a tiny random Qwen2 fine-tuned on reference solutions of the task.

RL with a 0/1 reward needs a policy that is sometimes right. A short supervised run on
step-by-step solutions from a careless teacher (half of them slip by one in one step:
SLIP_RATE) gives a policy that has the format and the skill but often slips as its teacher
did; only the reward tells RL which steps are the slips. The result is a Hugging Face
directory, written once per workdir and reused by later runs.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
from flax import nnx

from attnrl_jax.data.builtin_tasks import builtin_task
from attnrl_jax.data.prompts import encode_prompts
from attnrl_jax.models import CausalLM, load_pretrained, save_pretrained
from attnrl_jax.models.lm import from_params
from attnrl_jax.rl.settings import RunConfig
from attnrl_jax.rl.sft import pack_examples, supervised_warm_start
from attnrl_jax.train import tiny_model_config

SLIP_RATE = 0.5
WARM_START_STEPS = 600  # the demo's default (--warm_start_steps)


def build_warm_start(c: RunConfig, path: Path, *, steps: int) -> float:
    """Train the warm start for run config `c` (its built-in task, model.tiny,
    data.num_demo_problems, data.demo_seed, seed) and save it with its tokenizer to `path`;
    returns the seconds it took."""
    start = time.perf_counter()
    task = builtin_task(c.data.builtin_task or "demo")
    tokenizer = task.tokenizer(c.model.tiny.vocab_size)
    cfg = tiny_model_config(c, len(tokenizer))
    pairs = task.problems(c.data.num_demo_problems, seed=c.data.demo_seed, slip_rate=SLIP_RATE)
    prompts = encode_prompts(tokenizer, [p.problem for p, _ in pairs])
    responses = tokenizer([s for _, s in pairs], add_special_tokens=False)["input_ids"]
    tokens, mask = pack_examples(prompts, responses, tokenizer.eos_token_id)
    params = CausalLM(cfg, rngs=nnx.Rngs(c.seed)).params()

    from tqdm.auto import tqdm

    bar = tqdm(total=steps, desc="warm start")

    def on_step(step: int, loss: float) -> None:
        bar.update(1)
        if step % 25 == 0:
            bar.set_postfix(loss=f"{loss:.3f}")

    params = supervised_warm_start(
        params, cfg, tokens, mask, steps=steps, batch_size=32, learning_rate=5e-3,
        seed=c.seed, on_step=on_step,
    )  # fmt: skip
    bar.close()
    save_pretrained(from_params(cfg, jax.device_get(params)), path, tokenizer=tokenizer)
    return time.perf_counter() - start


def load_or_build_warm_start(c: RunConfig, path: Path, *, steps: int):
    """The warm-start model at `path`, trained first if it is not there yet; returns (model,
    seconds spent training now: 0 when reused)."""
    seconds = 0.0
    if not (path / "config.json").exists():
        seconds = build_warm_start(c, path, steps=steps)
    return load_pretrained(path), seconds
