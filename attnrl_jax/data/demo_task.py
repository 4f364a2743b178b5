"""A tiny self-generated, verifiable multi-step arithmetic task for demos and tests.

Each problem chains 1-3 additions or subtractions on one-digit numbers, e.g. "Start with 7.
Add 2. Subtract 5." with gold answer "4" (every value stays in 0-9). A solution writes one
operation per step ("Add 2: 7 + 2 = 9"), steps separated by "\\n\\n", and ends with
\\boxed{answer}: the format the grader and the step segmentation expect. Solutions can be made
to slip (one step off by one, like a careless teacher), so that a policy imitating them is often
wrong in a way RL can fix. The number of operations varies, so problems differ in difficulty,
which is what adaptive sampling reacts to. Problems are a pure function of (seed, index), so
nothing is downloaded.
"""

from __future__ import annotations

import numpy as np

from attnrl_jax.data.pipeline import Prompt
from attnrl_jax.data.prompts import encode_prompts, format_problem
from attnrl_jax.data.records import Problem
from attnrl_jax.data.tokenizer import build_tiny_tokenizer

HELD_OUT_SEED_OFFSET = 10_000  # held-out problems come from another stream of the same task


def make_problem(
    rng: np.random.Generator, index: int, slip_rate: float = 0.0
) -> tuple[Problem, str]:
    """A problem and a solution. With probability `slip_rate` the solution slips: one step's
    result is off by one and the later steps carry the error on (the gold answer stays right).
    The problem does not depend on `slip_rate` (the random draws are the same)."""
    value = int(rng.integers(1, 10))
    num_ops = int(rng.integers(1, 4))
    slips, slip_step, slip_up = rng.random() < slip_rate, int(rng.integers(num_ops)), rng.random()
    text, steps, written = [f"Start with {value}."], [], value
    for step in range(num_ops):
        # every value stays a digit, so each step is one of 90 single-token facts
        subtract = value == 9 or (value > 0 and rng.random() < 0.5)
        x = int(rng.integers(1, value + 1)) if subtract else int(rng.integers(1, 10 - value))
        word, sym = ("Subtract", "-") if subtract else ("Add", "+")
        value = value - x if subtract else value + x
        new = written - x if subtract else written + x
        if slips and step == slip_step:
            new = new + 1 if new <= 0 or (slip_up < 0.5 and new < 9) else new - 1
        text.append(f"{word} {x}.")
        steps.append(f"{word} {x}: {written} {sym} {x} = {new}")
        written = new
    solution = "\n\n".join(steps) + f"\n\nThe answer is \\boxed{{{written}}}."
    return Problem(" ".join(text), (str(value),), f"demo:{index}"), solution


def demo_problems(num: int, seed: int = 0, slip_rate: float = 0.0) -> list[tuple[Problem, str]]:
    """The first `num` problems (with solutions, see make_problem) of the stream `seed`."""
    rng = np.random.default_rng(seed)
    return [make_problem(rng, i, slip_rate) for i in range(num)]


def held_out_problems(num: int, num_train: int, seed: int = 0) -> list[tuple[Problem, str]]:
    """`num` problems from another stream, none of whose text occurs among the `num_train`
    training problems of stream `seed` (short problems repeat, so this filter matters)."""
    seen = {p.problem for p, _ in demo_problems(num_train, seed)}
    rng = np.random.default_rng(seed + HELD_OUT_SEED_OFFSET)
    out: list[tuple[Problem, str]] = []
    index = 0
    while len(out) < num:
        problem, solution = make_problem(rng, index)
        index += 1
        if problem.problem not in seen:
            seen.add(problem.problem)
            out.append((problem, solution))
        if index > 100 * num + 1000:
            raise ValueError(f"the demo task has fewer than {num} problems outside the train set")
    return out


def demo_tokenizer(vocab_size: int = 512):
    """The project's tiny tokenizer with merges fitted to this task (prompts ~40 tokens)."""
    corpus = [format_problem(p.problem) + " " + s for p, s in demo_problems(200, seed=0)]
    return build_tiny_tokenizer(vocab_size, corpus=corpus)


def demo_prompts(tokenizer, num: int, seed: int = 0) -> list[Prompt]:
    """`num` demo problems as training prompts (the paper's instruction in the chat template)."""
    problems = [p for p, _ in demo_problems(num, seed)]
    ids = encode_prompts(tokenizer, [p.problem for p in problems])
    return [Prompt(p, tuple(i)) for p, i in zip(problems, ids, strict=True)]
