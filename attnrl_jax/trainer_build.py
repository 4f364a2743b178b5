"""From a RunConfig to a Trainer: the initial model, the prompts, the reward function (a pool
of grading processes or in-process), evaluation during training and the loggers.

`build_trainer` is what the train CLI, the demo, the benchmarks and the tests call;
`python -m attnrl_jax.train` (train.py) adds the command line around it.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import ml_collections
import numpy as np

from attnrl_jax.initial_model import initial_model_path
from attnrl_jax.rl.devices import build_mesh
from attnrl_jax.rl.settings import RunConfig, check_files, resolve
from attnrl_jax.tensorboard_log import tensorboard_logger

if TYPE_CHECKING:
    from attnrl_jax.rewards.batch import Grader
    from attnrl_jax.rl.trainer import Trainer

# (response texts, each one's accepted gold answers) -> [n] rewards
RewardFn = Callable[[Sequence[str], Sequence[tuple[str, ...]]], np.ndarray]


def load_prompts(c: RunConfig, tokenizer) -> list:
    """The run's prompts: a built-in task's, or those of data.train_files (checked, filtered and,
    with data.drop_eval_overlap, without the evaluation sets' problems; process 0 prints what
    was kept and dropped)."""
    if c.data.demo:
        from attnrl_jax.data.builtin_tasks import builtin_task

        task = builtin_task(c.data.builtin_task)
        return task.prompts(tokenizer, c.data.num_demo_problems, seed=c.data.demo_seed)
    from attnrl_jax.data import SourceSpec, prepare_prompts

    specs = [
        SourceSpec(p, problem_key=c.data.problem_key, answer_key=c.data.answer_key)
        for p in c.data.train_files
    ]
    eval_sets = None
    if c.data.drop_eval_overlap:
        from attnrl_jax.eval.benchmarks import eval_source_specs

        eval_sets = eval_source_specs(",".join(c.eval.files), c.data.problem_key, c.data.answer_key)
    prompts, report = prepare_prompts(
        specs,
        tokenizer,
        max_prompt_len=c.data.max_prompt_len,
        eval_sets=eval_sets,
        on_error=c.data.on_error,
    )
    import jax

    if jax.process_index() == 0:  # what was kept and dropped, and why
        for line in report.lines():
            print(f"data: {line}", file=sys.stderr)
    return prompts


def grade_in_process(
    texts: Sequence[str], golds: Sequence[tuple[str, ...]], reward: str = "hybrid"
) -> np.ndarray:
    from attnrl_jax.rewards.math import grade

    pairs = zip(texts, golds, strict=True)
    return np.array([grade(t, list(g), reward=reward).correct for t, g in pairs], float)


def make_grader(c: RunConfig) -> Grader | None:
    """A pool of c.grading.workers grading processes with a per-item deadline of
    c.grading.timeout_s, or None when workers is 0 (grade in-process)."""
    if c.grading.workers <= 0:
        return None
    from attnrl_jax.rewards.batch import Grader

    return Grader(
        timeout_s=c.grading.timeout_s, num_workers=c.grading.workers, reward=c.grading.reward
    )


def pool_reward_fn(grader: Grader) -> RewardFn:
    """reward_fn(texts, golds) -> [n] 0/1 rewards, graded by the worker pool `grader`."""

    def reward_fn(texts: Sequence[str], golds: Sequence[tuple[str, ...]]) -> np.ndarray:
        return np.array([r.correct for r in grader.grade(texts, golds).results], float)

    return reward_fn


def make_reward_fn(c: RunConfig) -> tuple[RewardFn, Callable[[], None]]:
    """(reward_fn, close): the math grader, in a worker pool (make_grader; close stops it) or
    in-process when workers is 0 (close does nothing). Both give the same verdicts; the pool
    bounds slow items."""
    grader = make_grader(c)
    if grader is None:
        return functools.partial(grade_in_process, reward=c.grading.reward), lambda: None
    return pool_reward_fn(grader), grader.close


def build_trainer(
    config: RunConfig | ml_collections.ConfigDict, reward_fn=None, log_fn=None, engine=None
) -> Trainer:
    """A Trainer for `config` (a ConfigDict is validated first); reward_fn defaults to the math
    grader (make_reward_fn). Metrics go to log_fn too and, with log.tensorboard, to
    TensorBoard; Trainer.close() stops the grading pool, the TensorBoard writer and the engine.
    engine: a sampling.engine.RolloutEngine for the initial model (default: the native sampler;
    it receives the trainer's params before the first step and after every update)."""
    c = config if isinstance(config, RunConfig) else resolve(config)
    check_files(c)
    import jax
    from transformers import AutoTokenizer

    from attnrl_jax.models import load_pretrained
    from attnrl_jax.rl.trainer import Trainer
    from attnrl_jax.sampling.eos import eos_ids

    mesh = build_mesh(c)
    path = initial_model_path(c)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = load_pretrained(path, dtype=c.model.dtype, mesh=mesh, param_dtype=c.model.param_dtype)
    model_cfg = dataclasses.replace(model.config, remat=c.model.remat)
    eos = eos_ids(tokenizer, path, model.config.eos_token_id)
    prompts = load_prompts(c, tokenizer)
    closers = []
    grader = make_grader(c) if reward_fn is None or c.eval.every > 0 else None
    if grader is not None:
        closers.append(grader.close)
    if reward_fn is None:
        reward_fn = make_reward_fn(c)[0] if grader is None else pool_reward_fn(grader)
    eval_fn = None
    if c.eval.every > 0:
        from attnrl_jax.eval.run import in_process_grader, pool_grader
        from attnrl_jax.eval.training import training_eval_fn

        in_process = functools.partial(in_process_grader, reward=c.grading.reward)
        grade_fn = in_process if grader is None else pool_grader(grader)
        eval_fn = training_eval_fn(c, tokenizer, eos, grade_fn)
    loggers = [log_fn] if log_fn is not None else []
    if c.log.tensorboard and jax.process_index() == 0:
        board = tensorboard_logger(c.workdir)
        if board is not None:
            loggers.append(board)
            closers.append(board.close)

    def log_all(metrics: dict) -> None:
        for log in loggers:
            log(metrics)

    def close_all() -> None:
        for close in closers:
            close()

    try:
        return Trainer(
            c,
            model_cfg=model_cfg,
            params=model.params(),
            mesh=mesh,
            tokenizer=tokenizer,
            prompts=prompts,
            reward_fn=reward_fn,
            engine=engine,
            eos_ids=eos,
            log_fn=log_all,
            on_close=close_all,
            eval_fn=eval_fn,
        )
    except BaseException:  # do not leave grading workers behind
        close_all()
        raise
