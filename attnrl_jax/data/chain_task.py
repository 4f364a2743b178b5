"""A built-in task whose solutions are chains of steps that use earlier results by name.

A problem defines 6-12 named quantities, each one addition or subtraction of two operands that
are digits or earlier quantities, and asks for the last one:

    a=3+4. b=a+2. c=5-1. d=b-c. What is d?

A solution computes one quantity per step: it restates the definition, copies the values of
the quantities it uses from the steps that computed them, and ends with a memo of the name and
its result ("b=a+2=7+2;b9"; with digits only, "a=3+4;a7"), steps separated by "\\n\\n", and
ends with \\boxed{answer}. The memo puts each value right after its name, so looking a value
up by name is one match on the name token, a circuit 2 attention layers can hold (without it a
value sat at the end of a step of varying length). So later steps attend to the steps they use,
and a wrong intermediate propagates to the answer through every step that depends on it; steps
no later step uses are dead ends whose errors do not matter. The dependency graph
(`ChainProblem.refs`) is the ground truth of benchmarks/mechanism.py. Every true value stays in
0-9.

The careless teacher (`slip_rate`) writes one step's result off by one; the later steps carry
the written value on, so the slip reaches the answer exactly when the slipped step lies on the
answer's dependency path (unless two paths cancel: `written_answer` says). Slips fall at a
uniformly drawn step, so at every depth. Problems are a pure function of (seed, index).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attnrl_jax.data.pipeline import Prompt
from attnrl_jax.data.prompts import encode_prompts, format_problem
from attnrl_jax.data.records import Problem
from attnrl_jax.data.tokenizer import build_tiny_tokenizer

NAMES = "abcdefghijkl"
MEMO = ";"  # opens a step's memo: its name, then its written result
MIN_STEPS, MAX_STEPS = 6, 12
HELD_OUT_SEED_OFFSET = 10_000  # held-out problems come from another stream of the same task
# how many earlier quantities a step uses (0, 1, 2), and how much more likely a quantity no
# step has used yet is picked: most quantities end up used, some stay dead ends
REF_COUNT_PROBS = (0.15, 0.45, 0.40)
UNUSED_WEIGHT = 4.0

Operand = int | str  # a digit or an earlier quantity's name


@dataclass(frozen=True)
class ChainStep:
    name: str
    left: Operand
    op: str  # "+" or "-"
    right: Operand
    value: int  # the true value

    def definition(self) -> str:
        return f"{self.name}={self.left}{self.op}{self.right}"


@dataclass(frozen=True)
class ChainProblem:
    """The steps in order; the answer is the last step's value."""

    steps: tuple[ChainStep, ...]

    @property
    def answer(self) -> int:
        return self.steps[-1].value

    def text(self) -> str:
        defs = ". ".join(s.definition() for s in self.steps)
        return f"{defs}. What is {self.steps[-1].name}?"

    def refs(self, k: int) -> tuple[int, ...]:
        """Indices (0-based) of the earlier steps that step k uses."""
        index = {s.name: i for i, s in enumerate(self.steps)}
        step = self.steps[k]
        return tuple(index[o] for o in (step.left, step.right) if isinstance(o, str))

    def used_by_later(self) -> set[int]:
        """Steps whose quantity some later step uses."""
        return {r for k in range(len(self.steps)) for r in self.refs(k)}

    def answer_path(self) -> set[int]:
        """Steps the answer depends on (the last step and its ancestors)."""
        out, todo = set(), [len(self.steps) - 1]
        while todo:
            k = todo.pop()
            if k not in out:
                out.add(k)
                todo.extend(self.refs(k))
        return out

    def solution(self, slip: tuple[int, int] | None = None) -> str:
        """The worked solution; slip = (step, +1 or -1) writes that step's result off by one and
        carries the written value on."""
        lines, written = [], {}
        for k, s in enumerate(self.steps):
            vals = [written[o] if isinstance(o, str) else o for o in (s.left, s.right)]
            value = vals[0] + vals[1] if s.op == "+" else vals[0] - vals[1]
            if slip is not None and slip[0] == k:
                value += slip[1]
            written[s.name] = value
            values = (
                f"={vals[0]}{s.op}{vals[1]}"
                if isinstance(s.left, str) or isinstance(s.right, str)
                else ""
            )
            lines.append(f"{s.definition()}{values}{MEMO}{s.name}{value}")
        lines.append(f"The answer is \\boxed{{{written[self.steps[-1].name]}}}.")
        return "\n\n".join(lines)


def _combine(rng: np.random.Generator, x: int, y: int) -> tuple[int, str, int]:
    """Two operand values -> (left, op, right) as value positions (0: x, 1: y), result in 0-9."""
    if x + y <= 9 and (rng.random() < 0.5 or x == y):
        return (0, "+", 1) if rng.random() < 0.5 else (1, "+", 0)
    return (0, "-", 1) if x >= y else (1, "-", 0)


def _literal_for(rng: np.random.Generator, x: int) -> tuple[int, bool]:
    """A digit to combine with value x, and whether to add it (keeps the result in 0-9)."""
    add = x == 0 or (x < 9 and rng.random() < 0.5)
    return (int(rng.integers(1, 10 - x)) if add else int(rng.integers(1, x + 1))), add


def make_chain(
    rng: np.random.Generator, steps: tuple[int, int] = (MIN_STEPS, MAX_STEPS)
) -> ChainProblem:
    """One problem of steps[0]..steps[1] steps (the task's: 6-12) drawn from `rng`."""
    n = int(rng.integers(steps[0], steps[1] + 1))
    steps: list[ChainStep] = []
    used = np.zeros(n, bool)
    for k in range(n):
        if k == 0:
            refs = 0
        elif k == n - 1:  # the answer always builds on earlier results
            refs = min(2, k)
        else:
            refs = min(int(rng.choice(3, p=REF_COUNT_PROBS)), k)
        weights = np.where(used[:k], 1.0, UNUSED_WEIGHT)
        chosen = (
            list(rng.choice(k, size=refs, replace=False, p=weights / weights.sum())) if refs else []
        )
        used[chosen] = True
        name = NAMES[k]
        if refs == 2:
            a, b = steps[chosen[0]], steps[chosen[1]]
            i, op, j = _combine(rng, a.value, b.value)
            left, right = (a, b)[i], (a, b)[j]
            value = left.value + right.value if op == "+" else left.value - right.value
            steps.append(ChainStep(name, left.name, op, right.name, value))
        elif refs == 1:
            a = steps[chosen[0]]
            lit, add = _literal_for(rng, a.value)
            if add and rng.random() < 0.5:
                steps.append(ChainStep(name, lit, "+", a.name, a.value + lit))
            else:
                op = "+" if add else "-"
                steps.append(
                    ChainStep(name, a.name, op, lit, a.value + lit if add else a.value - lit)
                )
        else:
            x = int(rng.integers(0, 10))
            lit, add = _literal_for(rng, x)
            steps.append(ChainStep(name, x, "+" if add else "-", lit, x + lit if add else x - lit))
    return ChainProblem(tuple(steps))


def make_problem(
    rng: np.random.Generator,
    index: int,
    slip_rate: float = 0.0,
    steps: tuple[int, int] = (MIN_STEPS, MAX_STEPS),
) -> tuple[Problem, str, ChainProblem]:
    """(problem, solution, its chain). With probability `slip_rate` the solution slips at a
    uniformly drawn step (see ChainProblem.solution); the problem does not depend on slip_rate."""
    chain = make_chain(rng, steps)
    slips, slip_step, slip_up = (
        rng.random() < slip_rate,
        int(rng.integers(len(chain.steps))),
        rng.random(),
    )
    slip = None
    if slips:
        value = chain.steps[slip_step].value  # a slip keeps the written digit in 0-9 when it can
        slip = (slip_step, 1 if (slip_up < 0.5 and value < 9) or value == 0 else -1)
    problem = Problem(chain.text(), (str(chain.answer),), f"chain:{index}")
    return problem, chain.solution(slip), chain


def written_answer(solution: str) -> str:
    """The boxed answer of a solution text."""
    return solution.rsplit("\\boxed{", 1)[1].split("}", 1)[0]


def chain_problems(
    num: int, seed: int = 0, slip_rate: float = 0.0, steps: tuple[int, int] = (MIN_STEPS, MAX_STEPS)
) -> list[tuple[Problem, str]]:
    """The first `num` problems (with solutions, see make_problem) of the stream `seed`; steps:
    shorter chains than the task's for a warm-start curriculum."""
    return [(p, s) for p, s, _ in chain_stream(num, seed, slip_rate, steps)]


def chain_stream(
    num: int, seed: int = 0, slip_rate: float = 0.0, steps: tuple[int, int] = (MIN_STEPS, MAX_STEPS)
):
    """The first `num` (problem, solution, chain) triples of the stream `seed`."""
    rng = np.random.default_rng(seed)
    return [make_problem(rng, i, slip_rate, steps) for i in range(num)]


def held_out_chains(num: int, num_train: int, seed: int = 0):
    """`num` (problem, solution, chain) triples from another stream, none of whose text occurs
    among the `num_train` training problems of stream `seed`."""
    seen = {p.problem for p, _ in chain_problems(num_train, seed)}
    rng = np.random.default_rng(seed + HELD_OUT_SEED_OFFSET)
    out = []
    for index in range(100 * num + 1000):
        if len(out) == num:
            return out
        problem, solution, chain = make_problem(rng, index)
        if problem.problem not in seen:
            seen.add(problem.problem)
            out.append((problem, solution, chain))
    if len(out) < num:
        raise ValueError(f"the chain task has fewer than {num} problems outside the train set")
    return out


def held_out_problems(num: int, num_train: int, seed: int = 0) -> list[tuple[Problem, str]]:
    """As held_out_chains, without the chains (the demo task's interface)."""
    return [(p, s) for p, s, _ in held_out_chains(num, num_train, seed)]


# a quantity's name wherever it stands ("a=", "=a", "-a", " a"): always the one token "a", so
# looking a quantity up by name is matching one token (merged, "=a" and " a" would differ)
NAME_TOKEN = rf"(?<!\p{{L}})[{NAMES}](?!\p{{L}})"


def chain_tokenizer(vocab_size: int = 512):
    """The project's tiny tokenizer with merges fitted to this task; names, digits and the
    operators are tokens of their own."""
    corpus = [format_problem(p.problem) + " " + s for p, s in chain_problems(200, seed=0)]
    return build_tiny_tokenizer(vocab_size, corpus=corpus, isolate=NAME_TOKEN)


def chain_prompts(tokenizer, num: int, seed: int = 0) -> list[Prompt]:
    """`num` chain problems as training prompts (the paper's instruction in the chat template)."""
    problems = [p for p, _ in chain_problems(num, seed)]
    ids = encode_prompts(tokenizer, [p.problem for p in problems])
    return [Prompt(p, tuple(i)) for p, i in zip(problems, ids, strict=True)]
