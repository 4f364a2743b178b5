"""Evaluation during training: the config's `eval` section as a trainer callback.

`training_eval_fn(run, tokenizer, eos_ids, grade_fn)` loads the benchmarks once and returns
eval_fn(engine) -> {"eval/<benchmark>/<metric>": value, ..., "eval/average/pass@1": value},
which the Trainer calls with its rollout engine every run.eval.every steps and after the last
step, merging the values into that step's metrics.jsonl line and TensorBoard.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from attnrl_jax.eval.benchmarks import (
    Benchmark,
    load_benchmark,
    load_benchmark_file,
    parse_benchmarks,
)
from attnrl_jax.eval.run import EvalOptions, GradeFn, evaluate_policy, in_process_grader
from attnrl_jax.models.config import ModelConfig
from attnrl_jax.models.lm import Params
from attnrl_jax.rl.settings import RunConfig
from attnrl_jax.sampling.engine import NativeEngine, RolloutEngine


def config_benchmarks(c: RunConfig) -> list[Benchmark]:
    """The benchmarks named by c.eval (bundled names, then files), each capped at
    c.eval.num_problems. A built-in task ("demo", "chain") avoids the training problems when
    training on it."""
    e = c.eval
    out = [
        load_benchmark(
            name, k, e.num_problems, demo_seed=c.data.demo_seed,
            demo_train=c.data.num_demo_problems if c.data.train_files == (name,) else 0,
        )
        for name, k in parse_benchmarks(e.benchmarks, e.k)
    ]  # fmt: skip
    for path in e.files:
        out.append(
            load_benchmark_file(
                path,
                e.k,
                e.num_problems,
                problem_key=c.data.problem_key,
                answer_key=c.data.answer_key,
            )
        )
    return out


def training_eval_fn(
    c: RunConfig,
    tokenizer,
    eos_ids: Sequence[int],
    grade_fn: GradeFn = in_process_grader,
) -> Callable[[RolloutEngine], dict[str, float]]:
    """The Trainer's eval callback for run config c (benchmarks loaded now, so a bad file fails
    before training starts); sampled with seed c.seed."""
    benchmarks = config_benchmarks(c)
    options = EvalOptions(
        max_new_tokens=c.eval.max_new_tokens,
        temperature=c.eval.temperature,
        top_p=c.eval.top_p,
        seed=c.seed,
    )

    def eval_fn(engine: RolloutEngine) -> dict:
        result = evaluate_policy(engine, tokenizer, benchmarks, options, grade_fn, eos_ids=eos_ids)
        return result.flat("eval")

    return eval_fn


def held_out_accuracy_fn(
    c: RunConfig, tokenizer, model_cfg: ModelConfig, eos_ids: Sequence[int]
) -> Callable[[Params], float]:
    """params -> mean pass@1 (avg@k) over c.eval's benchmarks, sampled by the native engine with
    seed c.seed, so repeated calls (before and after training) use the same sampling seeds."""
    eval_fn = training_eval_fn(c, tokenizer, eos_ids)
    return lambda params: eval_fn(NativeEngine(model_cfg, params))["eval/average/pass@1"]
