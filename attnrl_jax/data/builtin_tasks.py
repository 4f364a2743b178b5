"""The built-in tasks, by the name `data.train_files` and `eval.benchmarks` use for them.

    demo    data/demo_task.py: 1-3 one-digit additions or subtractions (configs/demo.py)
    chain   data/chain_task.py: 6-12 named quantities built from earlier ones
            (configs/demo_chain.py)

Each task generates its problems from (seed, index), so nothing is downloaded. A task gives
training problems with a careless teacher's solutions (the warm start's data), held-out problems
outside the training set, a tokenizer fitted to it and training prompts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class BuiltinTask:
    name: str
    problems: Callable  # (num, seed, slip_rate) -> [(Problem, solution)]
    held_out: Callable  # (num, num_train, seed) -> [(Problem, solution)] outside the train set
    tokenizer: Callable  # (vocab_size) -> tokenizer
    prompts: Callable  # (tokenizer, num, seed) -> [Prompt]


def _demo() -> BuiltinTask:
    from attnrl_jax.data import demo_task as t

    return BuiltinTask(
        "demo", t.demo_problems, t.held_out_problems, t.demo_tokenizer, t.demo_prompts
    )


def _chain() -> BuiltinTask:
    from attnrl_jax.data import chain_task as t

    return BuiltinTask(
        "chain", t.chain_problems, t.held_out_problems, t.chain_tokenizer, t.chain_prompts
    )


_TASKS = {"demo": _demo, "chain": _chain}
BUILTIN_TASKS = tuple(_TASKS)


def builtin_task(name: str) -> BuiltinTask:
    """The built-in task `name`; a ValueError names the known ones."""
    if name not in _TASKS:
        raise ValueError(f"unknown built-in task {name!r}; known: {', '.join(BUILTIN_TASKS)}")
    return _TASKS[name]()
