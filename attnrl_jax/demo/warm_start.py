"""The demo's warm start: a tiny random Qwen2 fine-tuned on reference solutions of the task.

RL with a 0/1 reward needs a policy that is sometimes right. A short supervised run on
step-by-step solutions from a careless teacher (half of them slip by one in one step:
SLIP_RATE) gives a policy that has the format and the skill but often slips as its teacher
did; only the reward tells RL which steps are the slips. The result is a Hugging Face
directory, written once per workdir and reused by later runs.

Each built-in task has its recipe (RECIPES): the demo task's is 600 steps of 32 examples at
learning rate 5e-3, all from the careless teacher; the chain task's steps look quantities up by
name, a copying circuit that forms only after a plateau, so its recipe is longer and gentler
(1500 steps of 16 at 2e-3, the first half slip-free; BENCHMARKS.md's chain section: the
variants and what each learned).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx

from attnrl_jax.data.builtin_tasks import builtin_task
from attnrl_jax.data.prompts import encode_prompts
from attnrl_jax.models import CausalLM, load_pretrained, save_pretrained
from attnrl_jax.models.lm import from_params
from attnrl_jax.rl.settings import RunConfig
from attnrl_jax.rl.sft import pack_examples, sft_step
from attnrl_jax.train import tiny_model_config

SLIP_RATE = 0.5
WARM_START_STEPS = 600  # the demo's default (--warm_start_steps)


@dataclass(frozen=True)
class Recipe:
    """How a task's warm start trains: AdamW, linear warm-up then cosine decay to lr / 10."""

    steps: int = WARM_START_STEPS
    batch_size: int = 32
    learning_rate: float = 5e-3
    slip_rate: float = SLIP_RATE  # the careless teacher's, for the last steps
    # the first clean_fraction of the steps train on slip-free solutions (the skill first; the
    # teacher's slips, which RL must learn to avoid, after)
    clean_fraction: float = 0.0
    warmup_steps: int = 20  # at most steps // 10
    # a curriculum: the first short_fraction of the steps train on chains of short_steps
    # quantities (the chain task only: fewer distractors while the look-up is learned)
    short_fraction: float = 0.0
    short_steps: tuple[int, int] = (2, 5)


# chain: looking quantities up by name forms after a plateau (loss ~0.8 until step ~300, then
# down to ~0.01 by step 700) at lr 2e-3 with a 150-step warm-up; at 5e-3 for 600 steps it never
# did. The first half is slip-free so the copy is learned before the teacher's slips
# (BENCHMARKS.md's chain section: every variant tried and its curve).
RECIPES = {
    "demo": Recipe(),
    "chain": Recipe(
        steps=1500, batch_size=16, learning_rate=2e-3, warmup_steps=150, clean_fraction=0.5
    ),
}


def recipe_for(task: str) -> Recipe:
    """The warm-start recipe of built-in task `task`."""
    if task not in RECIPES:
        raise ValueError(f"no warm-start recipe for task {task!r}; known: {', '.join(RECIPES)}")
    return RECIPES[task]


def _train(
    params, cfg, clean, slipped, recipe: Recipe, seed: int, on_step, short=None, checkpoint=None
):
    """recipe.steps AdamW steps: batches from `clean` (tokens, mask) for the first
    clean_fraction of them, from `slipped` after; from `short` for the first short_fraction.
    Without those phases this is rl/sft.supervised_warm_start's loop (same schedule and
    batch draws). checkpoint: (every, fn): fn(step, params) after every `every` steps (params
    are donated to the next step: fn must use them before it returns)."""
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, recipe.learning_rate, min(recipe.warmup_steps, recipe.steps // 10), recipe.steps,
        recipe.learning_rate / 10,
    )  # fmt: skip
    optimizer = optax.adamw(schedule, weight_decay=0.0)
    opt_state = optimizer.init(params)
    rng = np.random.default_rng(seed)
    switch = int(recipe.clean_fraction * recipe.steps)
    for step in range(recipe.steps):
        tokens, mask = clean if step < switch else slipped
        if step < recipe.short_fraction * recipe.steps:
            tokens, mask = short
        rows = rng.choice(len(tokens), recipe.batch_size, replace=len(tokens) < recipe.batch_size)
        params, opt_state, loss = sft_step(
            params, opt_state, tokens[rows], mask[rows], cfg=cfg, optimizer=optimizer
        )
        on_step(step + 1, float(loss))
        if checkpoint is not None and (step + 1) % checkpoint[0] == 0:
            checkpoint[1](step + 1, params)
    return params


def build_warm_start(
    c: RunConfig,
    path: Path,
    *,
    steps: int | None = None,
    recipe: Recipe | None = None,
    log: Callable[[int, float], None] | None = None,
    checkpoint: tuple[int, Callable[[int, Any], None]] | None = None,
) -> float:
    """Train the warm start for run config `c` (its built-in task, model.tiny,
    data.num_demo_problems, data.demo_seed, seed) and save it with its tokenizer to `path`;
    returns the seconds it took. recipe: default the task's; steps: instead of its steps;
    log(step, loss) after every step; checkpoint (every, fn): fn(step, params) every `every`
    steps (benchmarks/chain_warm_start.py measures the run's intermediate models)."""
    start = time.perf_counter()
    name = c.data.builtin_task or "demo"
    task = builtin_task(name)
    recipe = recipe or recipe_for(name)
    if steps is not None:
        recipe = Recipe(**{**recipe.__dict__, "steps": steps})
    tokenizer = task.tokenizer(c.model.tiny.vocab_size)
    cfg = tiny_model_config(c, len(tokenizer))

    def packed(slip_rate: float, **kw):
        pairs = task.problems(
            c.data.num_demo_problems, seed=c.data.demo_seed, slip_rate=slip_rate, **kw
        )
        prompts = encode_prompts(tokenizer, [p.problem for p, _ in pairs])
        responses = tokenizer([s for _, s in pairs], add_special_tokens=False)["input_ids"]
        return pack_examples(prompts, responses, tokenizer.eos_token_id)

    params = CausalLM(cfg, rngs=nnx.Rngs(c.seed)).params()

    from tqdm.auto import tqdm

    bar = tqdm(total=recipe.steps, desc="warm start")

    def on_step(step: int, loss: float) -> None:
        bar.update(1)
        if step % 25 == 0:
            bar.set_postfix(loss=f"{loss:.3f}")
        if log is not None:
            log(step, loss)

    slipped = packed(recipe.slip_rate)
    clean = packed(0.0) if recipe.clean_fraction > 0 else slipped
    short = packed(recipe.slip_rate, steps=recipe.short_steps) if recipe.short_fraction else None
    params = _train(params, cfg, clean, slipped, recipe, c.seed, on_step, short, checkpoint)
    bar.close()
    save_pretrained(from_params(cfg, jax.device_get(params)), path, tokenizer=tokenizer)
    return time.perf_counter() - start


def load_or_build_warm_start(c: RunConfig, path: Path, *, steps: int | None = None):
    """The warm-start model at `path`, trained first if it is not there yet (the task's recipe;
    steps: instead of its steps); returns (model, seconds spent training now: 0 when reused)."""
    seconds = 0.0
    if not (path / "config.json").exists():
        seconds = build_warm_start(c, path, steps=steps)
    return load_pretrained(path), seconds
