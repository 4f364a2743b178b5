"""Which problems to evaluate on: the bundled benchmark files, the demo task, or a user's file.

A benchmark list is a comma-separated string of names, each with an optional ":k" (samples per
problem; the default k elsewhere): "math500,aime24:32". "paper" stands for the paper's six with
its sample counts (avg@32 on AIME24, AIME25, AMC23; avg@4 on MATH-500, Minerva, OlympiadBench).
The files live in attnrl_jax/eval/benchmarks (origin, commit and licence in SOURCES.md there).
"demo" and "chain" are held-out problems of the built-in tasks (data/builtin_tasks.py), drawn
from a different seed than training and with any training problem removed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from attnrl_jax.data.builtin_tasks import BUILTIN_TASKS, builtin_task
from attnrl_jax.data.records import Problem, SourceSpec, load_problems
from attnrl_jax.data.sources import DataError

BENCHMARK_DIR = Path(__file__).parent / "benchmarks"
# name -> the field holding every accepted answer form
BUNDLED = {
    "aime24": "answers",
    "aime25": "answers",
    "amc23": "answers",
    "math500": "answers",
    "minerva": "answers",
    "olympiadbench": "answers",
    "gsm8k": "answer",
}
PAPER = "aime24:32,aime25:32,amc23:32,math500:4,minerva:4,olympiadbench:4"
DEMO = "demo"
NAMES = (*BUNDLED, *BUILTIN_TASKS)
DEMO_EVAL_PROBLEMS = 128


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """A named problem set and its number of samples per problem."""

    name: str
    problems: Sequence[Problem]
    k: int


def parse_benchmarks(spec: str, default_k: int) -> list[tuple[str, int]]:
    """(name, k) pairs of a list like "paper" or "math500,aime24:32"; a ValueError names a bad
    entry. Names are not repeated (the first mention wins)."""
    if default_k < 1:
        raise ValueError(f"k must be >= 1, got {default_k}")
    spec = ",".join(PAPER if part.strip() == "paper" else part for part in spec.split(","))
    out: dict[str, int] = {}
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        name, _, k_text = part.partition(":")
        name = name.strip()
        if name not in NAMES:
            raise ValueError(
                f"unknown benchmark {name!r}; known: {', '.join(NAMES)}, paper "
                "(a file of your own: --benchmark_file / eval.files)"
            )
        try:
            k = int(k_text) if k_text else default_k
        except ValueError:
            raise ValueError(f"benchmark {part!r}: k after ':' must be an integer") from None
        if k < 1:
            raise ValueError(f"benchmark {part!r}: k must be >= 1")
        out.setdefault(name, k)
    return list(out.items())


def eval_source_specs(
    files: str = "", problem_key: str = "problem", answer_key: str = "answer"
) -> dict[str, SourceSpec]:
    """name -> SourceSpec of every bundled benchmark and of each comma-separated file (what
    training data is deduplicated against)."""
    specs = {
        name: SourceSpec(str(BENCHMARK_DIR / f"{name}.jsonl"), answer_key=key, name=name)
        for name, key in BUNDLED.items()
    }
    for path in filter(None, (p.strip() for p in files.split(","))):
        spec = SourceSpec(path, problem_key=problem_key, answer_key=answer_key)
        specs[spec.label] = spec
    return specs


def load_benchmark(
    name: str, k: int, num_problems: int = 0, *, demo_seed: int = 0, demo_train: int = 0
) -> Benchmark:
    """A bundled benchmark (first num_problems problems; 0: all) or the held-out demo problems
    (num_problems of them, default DEMO_EVAL_PROBLEMS; none of the first demo_train training
    problems of seed demo_seed)."""
    if name in BUILTIN_TASKS:
        problems = demo_heldout(num_problems or DEMO_EVAL_PROBLEMS, demo_seed, demo_train, name)
        return Benchmark(name, problems, k)
    if name not in BUNDLED:
        raise DataError(f"unknown benchmark {name!r}; known: {', '.join(NAMES)}")
    problems, _ = load_problems(eval_source_specs()[name])
    return Benchmark(name, problems[:num_problems] if num_problems else problems, k)


def load_benchmark_file(
    path: str | Path,
    k: int,
    num_problems: int = 0,
    *,
    problem_key: str = "problem",
    answer_key: str = "answer",
) -> Benchmark:
    """A user's problem file (any format data/sources.py reads), named by its file stem."""
    spec = SourceSpec(str(path), problem_key=problem_key, answer_key=answer_key)
    problems, _ = load_problems(spec)
    return Benchmark(spec.label, problems[:num_problems] if num_problems else problems, k)


def demo_heldout(num: int, seed: int = 0, num_train: int = 0, task: str = DEMO) -> list[Problem]:
    """`num` distinct held-out problems of built-in task `task` (none among the first num_train
    training problems of `seed`), renamed "<task>_eval:<i>"."""
    try:
        held = builtin_task(task).held_out(num, num_train, seed)
    except ValueError as e:
        raise DataError(str(e)) from None
    return [dataclasses.replace(p, where=f"{task}_eval:{i}") for i, (p, _) in enumerate(held)]
