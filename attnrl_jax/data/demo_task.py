"""A tiny self-generated, verifiable multi-step arithmetic task for demos and tests.

Each problem chains 2-3 operations on one-digit numbers, e.g. "Start with 7. Add 5. Multiply
by 2." with gold answer "24". The reference solution writes one operation per step, steps
separated by "\\n\\n", and ends with \\boxed{answer}, the format the grader and the step
segmentation expect. Problems are a pure function of (seed, index), so nothing is downloaded.
"""

from __future__ import annotations

import numpy as np

from attnrl_jax.data.pipeline import Prompt
from attnrl_jax.data.prompts import encode_prompts
from attnrl_jax.data.records import Problem

_OPS = (("Add", "+"), ("Subtract", "-"), ("Multiply by", "*"))


def make_problem(rng: np.random.Generator, index: int) -> tuple[Problem, str]:
    """A problem and its reference solution."""
    value = int(rng.integers(1, 10))
    text, steps = [f"Start with {value}."], []
    for _ in range(int(rng.integers(2, 4))):
        word, sym = _OPS[int(rng.integers(0, len(_OPS)))]
        x = int(rng.integers(1, 10))
        new = value + x if sym == "+" else value - x if sym == "-" else value * x
        text.append(f"{word} {x}.")
        steps.append(f"{value} {sym} {x} = {new}")
        value = new
    solution = "\n\n".join(steps) + f"\n\nThe answer is \\boxed{{{value}}}."
    return Problem(" ".join(text), (str(value),), f"demo:{index}"), solution


def demo_problems(num: int, seed: int = 0) -> list[tuple[Problem, str]]:
    rng = np.random.default_rng(seed)
    return [make_problem(rng, i) for i in range(num)]


def demo_prompts(tokenizer, num: int, seed: int = 0) -> list[Prompt]:
    """`num` demo problems as training prompts (the paper's instruction in the chat template)."""
    problems = [p for p, _ in demo_problems(num, seed)]
    ids = encode_prompts(tokenizer, [p.problem for p in problems])
    return [Prompt(p, tuple(i)) for p, i in zip(problems, ids, strict=True)]
