"""The chain task (data/chain_task.py) and the built-in task registry: determinism, right
answers, real references, the grader accepting the gold, and slips that propagate."""

from __future__ import annotations

import pytest

from attnrl_jax.data.builtin_tasks import BUILTIN_TASKS, builtin_task
from attnrl_jax.data.chain_task import (
    MAX_STEPS,
    MIN_STEPS,
    ChainProblem,
    chain_problems,
    chain_stream,
    held_out_chains,
    make_chain,
    written_answer,
)
from attnrl_jax.rewards.math import grade

STREAM = chain_stream(400, seed=5)


def _evaluate(chain: ChainProblem) -> dict[str, int]:
    """Values by name, recomputed from the definitions alone (not from ChainStep.value)."""
    values: dict[str, int] = {}
    for s in chain.steps:
        a, b = (values[o] if isinstance(o, str) else o for o in (s.left, s.right))
        values[s.name] = a + b if s.op == "+" else a - b
    return values


def test_generation_is_deterministic_and_seeded():
    assert chain_problems(50, seed=5) == [(p, s) for p, s, _ in STREAM[:50]]
    assert chain_problems(50, seed=5) != chain_problems(50, seed=6)
    # slips change the solutions, never the problems
    slipped = chain_problems(50, seed=5, slip_rate=1.0)
    assert [p for p, _ in slipped] == [p for p, _, _ in STREAM[:50]]


def test_references_are_defined_earlier_and_answers_are_right():
    lengths = set()
    for problem, solution, chain in STREAM:
        names = [s.name for s in chain.steps]
        assert len(set(names)) == len(names)
        lengths.add(len(names))
        for k, s in enumerate(chain.steps):
            for o in (s.left, s.right):
                assert isinstance(o, int) and 0 <= o <= 9 or o in names[:k], (k, s)
            assert all(r < k for r in chain.refs(k))
        values = _evaluate(chain)
        assert all(0 <= v <= 9 for v in values.values())
        assert [values[n] for n in names] == [s.value for s in chain.steps]
        assert problem.answers == (str(values[names[-1]]),)
        assert written_answer(solution) == problem.answers[0]
        assert problem.problem.endswith(f"What is {names[-1]}?")
        assert solution.count("\n\n") == len(names)  # one step per quantity, then the answer
    assert lengths == set(range(MIN_STEPS, MAX_STEPS + 1))


def test_later_steps_use_earlier_results_and_some_steps_are_dead_ends():
    used = [len(c.used_by_later()) / len(c.steps) for _, _, c in STREAM]
    path = [len(c.answer_path()) for _, _, c in STREAM]
    assert 0.6 < sum(used) / len(used) < 0.9  # most steps are used later, not all
    assert min(path) >= 3  # the answer always builds on earlier results
    # long-range references exist: a step used 4 or more steps later (FCI's delta)
    assert any(k - r >= 4 for _, _, c in STREAM for k in range(len(c.steps)) for r in c.refs(k))


def test_the_grader_accepts_the_gold_solution_and_rejects_a_slipped_answer():
    for problem, solution, _ in STREAM[:20]:
        assert grade(solution, problem.answers).correct
        wrong = solution.replace(f"\\boxed{{{problem.answers[0]}}}", "\\boxed{11}")
        assert not grade(wrong, problem.answers).correct


def test_slips_propagate_along_the_dependency_graph():
    changed_on_path, on_path = 0, 0
    for _, _, chain in STREAM:
        for k in range(len(chain.steps)):
            answer = int(written_answer(chain.solution((k, 1))))
            if k not in chain.answer_path():
                assert answer == chain.answer  # a dead end's slip never reaches the answer
            else:
                on_path += 1
                changed_on_path += answer != chain.answer
        # a slip in the last step always shows
        assert int(written_answer(chain.solution((len(chain.steps) - 1, -1)))) != chain.answer
    assert changed_on_path / on_path > 0.8  # only cancelling paths (x - x) hide a slip
    # the written later steps carry the slipped value on
    chain = next(c for _, _, c in STREAM if 0 in c.refs(len(c.steps) - 1) or 0 in c.refs(1))
    assert chain.solution((0, 1)) != chain.solution()


def test_the_careless_teacher_slips_at_every_depth():
    slipped = chain_stream(400, seed=5, slip_rate=0.5)
    depths, wrong = set(), 0
    for (_, clean, _), (problem, solution, _) in zip(STREAM, slipped, strict=True):
        if solution != clean:
            lines = solution.split("\n\n")
            depths.add(
                next(
                    i
                    for i, (a, b) in enumerate(zip(lines, clean.split("\n\n"), strict=True))
                    if a != b
                )
            )
        wrong += written_answer(solution) != problem.answers[0]
    assert depths >= set(range(MAX_STEPS - 1))  # the 12th step exists in 1/7 of problems
    assert 0.2 < wrong / len(slipped) < 0.45  # half slip, and about 2/3 of slips reach the answer


def test_held_out_problems_are_outside_the_training_set():
    train = {p.problem for p, _ in chain_problems(300, seed=5)}
    held = held_out_chains(64, num_train=300, seed=5)
    assert len({p.problem for p, _, _ in held}) == 64
    assert not train & {p.problem for p, _, _ in held}


def test_registry_names_both_tasks_and_refuses_unknown_ones():
    assert BUILTIN_TASKS == ("demo", "chain")
    task = builtin_task("chain")
    assert task.problems(3, 5, 0.0) == chain_problems(3, seed=5)
    with pytest.raises(ValueError, match="unknown built-in task 'chains'; known: demo, chain"):
        builtin_task("chains")


def test_chain_config_trains_and_evaluates_on_the_chain_task():
    from attnrl_jax.data.chain_task import chain_tokenizer
    from attnrl_jax.eval.training import config_benchmarks
    from attnrl_jax.rl.settings import resolve
    from attnrl_jax.train import load_prompts
    from configs.demo_chain import get_config

    c = get_config()
    c.eval.update(every=1, benchmarks="chain", k=1, num_problems=8)
    run = resolve(c)
    assert run.data.builtin_task == "chain" and run.data.demo
    prompts = load_prompts(run, chain_tokenizer())
    assert [p.problem for p in prompts[:5]] == [p for p, _ in chain_problems(5, seed=0)]
    (bench,) = config_benchmarks(run)
    train = {p.problem for p, _ in chain_problems(run.data.num_demo_problems)}
    assert bench.name == "chain" and len(bench.problems) == 8
    assert not train & {p.problem for p in bench.problems}
    assert all(p.where.startswith("chain_eval:") for p in bench.problems)


def test_make_chain_keeps_every_value_a_digit_under_many_draws():
    import numpy as np

    rng = np.random.default_rng(0)
    for _ in range(2000):
        assert all(0 <= v <= 9 for v in _evaluate(make_chain(rng)).values())


def test_names_are_one_token_wherever_they_stand():
    import re

    from attnrl_jax.data.chain_task import NAMES, chain_tokenizer
    from attnrl_jax.data.prompts import render_prompts

    tok = chain_tokenizer()
    for problem, solution, _ in STREAM[:20]:
        text = render_prompts(tok, [problem.problem])[0] + solution
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        spans = set(enc["offset_mapping"])
        # each name standing alone in the text ("a=", "=a", "-a", " a?") is a token of its own
        names = [m.start() for m in re.finditer(rf"(?<![A-Za-z])[{NAMES}](?![A-Za-z])", text)]
        assert len(names) >= 3 * len(problem.problem.split(".")) - 3
        assert all((i, i + 1) in spans for i in names)
        # the instruction's words stay merged: not one token per character
        assert len(enc["input_ids"]) < 0.8 * len(text)


def test_curriculum_chains_are_shorter_and_still_well_formed():
    short = chain_stream(200, seed=5, steps=(2, 5))
    assert {len(c.steps) for _, _, c in short} == {2, 3, 4, 5}
    for problem, solution, chain in short:
        assert written_answer(solution) == problem.answers[0] == str(chain.answer)
        assert solution.count("\n\n") == len(chain.steps)
