"""Evaluate a Hugging Face Qwen2 checkpoint on math benchmarks: avg@k, pass@k and maj@k.

    python -m attnrl_jax.evaluate --model DIR --benchmarks math500,aime24:32 [--k 4]
        [--benchmark_file MY.jsonl] [--num_problems N] [--max_new_tokens 8192]
        [--temperature 0.6] [--top_p 0.95] [--seed 0] [--dtype float32|bfloat16]
        [--batch_size 64] [--mesh D,F,T] [--decode_layout auto|replicated|training]
        [--grading_workers N] [--output DIR] [--config configs/r1_distill_qwen_1p5b.py]

Benchmarks (bundled, no download): aime24, aime25, amc23, math500, minerva, olympiadbench (the
AttnRL evaluation sets), gsm8k, demo (held-out problems of the built-in arithmetic task), and
"paper" = the paper's six with its sample counts (avg@32 on AIME24/25 and AMC23, avg@4 on the
rest). "name:k" sets k for one benchmark; --k is the default. --benchmark_file adds a JSONL /
JSON / Parquet file of your own with problem and answer fields (--problem_key, --answer_key;
the answer may be a list of accepted forms), named by its file stem.

--config takes the defaults of the flags above from a training config's `eval` section, its
model.path, mesh and rollout.decode_layout; explicit flags win. On a mesh the engine keeps the
weights in its decode layout (--decode_layout, sharding.decode_layout) and evaluation holds no
other copy of them. Prompts are the paper's: the problem plus "Let's think
step by step and output the final answer within \\boxed{}." as one user turn of the model's chat
template. The output directory gets report.json (every metric, fractions in [0, 1]), report.md
(the table, also printed) and samples.jsonl (every response with its extracted answer and
verdict). Everything is checked before the model is loaded; a bad flag, name or file gives one
error message and exit status 2.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

from attnrl_jax import storage
from attnrl_jax.data.sources import DataError
from attnrl_jax.eval.benchmarks import (
    Benchmark,
    load_benchmark,
    load_benchmark_file,
    parse_benchmarks,
)
from attnrl_jax.models.config import DTYPES
from attnrl_jax.models.hf_io import CheckpointError
from attnrl_jax.models.sharding import DECODE_LAYOUTS

DEFAULTS = {
    "benchmarks": "",
    "k": 4,
    "num_problems": 0,
    "max_new_tokens": 8192,
    "temperature": 0.6,
    "top_p": 0.95,
    "mesh": "1,1,1",
    "decode_layout": "auto",
}


class EvalInputError(ValueError):
    """A bad flag, benchmark name or file: the message names it."""


def load_config(spec: str):
    """get_config(variant) of a config file given as FILE or FILE:VARIANT."""
    from ml_collections.config_flags.config_flags import ConfigFileFlagParser

    path = spec.partition(":")[0]
    if not Path(path).is_file():
        raise EvalInputError(f"--config {path}: no such file")
    try:
        return ConfigFileFlagParser(name="config").parse(spec)
    except (AttributeError, ValueError, TypeError) as e:
        raise EvalInputError(f"--config {spec}: {e}") from None


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m attnrl_jax.evaluate", description=__doc__.split("\n\n")[0]
    )
    add = parser.add_argument
    add(
        "--model",
        type=storage.local_arg,
        help="Hugging Face model directory (default: the config's)",
    )
    add("--config", help="a training config FILE[:VARIANT] for defaults")
    add("--benchmarks", help="comma-separated names, each optionally name:k; 'paper'")
    add("--benchmark_file", "--benchmark-file", action="append", default=[], type=storage.local_arg)
    add("--problem_key", "--problem-key", default="problem")
    add("--answer_key", "--answer-key", default="answer")
    add("--k", type=int, help="samples per problem (default 4)")
    add("--num_problems", "--num-problems", type=int, help="first N of each benchmark (0: all)")
    add("--max_new_tokens", "--max-new-tokens", type=int, help="default 8192")
    add("--temperature", type=float, help="default 0.6; 0: greedy")
    add("--top_p", "--top-p", type=float, help="default 0.95")
    add("--seed", type=int, default=0)
    add("--dtype", default="float32", choices=sorted(DTYPES))
    add("--batch_size", "--batch-size", type=int, default=64, help="most rows per device batch")
    add("--mesh", help="data,fsdp,tensor device counts (one may be -1; default 1,1,1)")
    add(
        "--decode_layout",
        "--decode-layout",
        choices=DECODE_LAYOUTS,
        help="where the engine keeps the weights on a mesh (default auto)",
    )
    add("--grading_workers", "--grading-workers", type=int, default=0, help="0: in-process")
    add("--grading_timeout", "--grading-timeout", type=float, default=5.0)
    add("--reward", choices=("hybrid", "boxed"), default="hybrid", help="rewards/math.py")
    add(
        "--output", type=storage.local_arg, help="report directory (default: eval/<model dir name>)"
    )
    return parser.parse_args(argv)


def _resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fills unset flags from --config, then from DEFAULTS, and checks them."""
    config = load_config(args.config) if args.config else None
    if config is not None:
        e = config.eval
        from_config = {
            "benchmarks": e.benchmarks,
            "k": e.k,
            "num_problems": e.num_problems,
            "max_new_tokens": e.max_new_tokens,
            "temperature": e.temperature,
            "top_p": e.top_p,
            "mesh": ",".join(str(config.mesh[a]) for a in ("data", "fsdp", "tensor")),
            "decode_layout": config.rollout.get("decode_layout", "auto"),
        }
        if args.model is None and config.model.path:
            if storage.is_remote(config.model.path):
                raise EvalInputError(f"model.path={config.model.path}: pass a local --model")
            args.model = Path(config.model.path)
    for key, default in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, from_config[key] if config is not None else default)
    if args.model is None:
        raise EvalInputError("--model DIR is required (a Hugging Face checkpoint directory)")
    if not args.benchmarks and not args.benchmark_file:
        raise EvalInputError(
            "nothing to evaluate: pass --benchmarks (e.g. math500,aime24 or paper) and/or "
            "--benchmark_file FILE"
        )
    if args.k < 1:
        raise EvalInputError(f"--k must be >= 1, got {args.k}")
    if args.num_problems < 0:
        raise EvalInputError(f"--num_problems must be >= 0 (0: all), got {args.num_problems}")
    if args.max_new_tokens < 1:
        raise EvalInputError(f"--max_new_tokens must be >= 1, got {args.max_new_tokens}")
    if args.batch_size < 1 or args.grading_workers < 0 or args.grading_timeout <= 0:
        raise EvalInputError("--batch_size >= 1, --grading_workers >= 0, --grading_timeout > 0")
    if args.decode_layout not in DECODE_LAYOUTS:  # from --config (the flag has choices)
        raise EvalInputError(
            f"rollout.decode_layout={args.decode_layout!r}; known: {list(DECODE_LAYOUTS)}"
        )
    if not args.model.is_dir():
        raise EvalInputError(f"--model {args.model}: no such directory")
    return args


def load_engine(path: Path, dtype: str, sampler, decode_layout: str = "auto"):
    """A NativeEngine (sampling/engine.py) over the Hugging Face model at `path`, loaded in
    `dtype` onto sampler.mesh. The engine places the params in its decode layout (on a mesh: a
    copy); the loaded ones are not kept, so evaluation holds the weights once, not twice."""
    from attnrl_jax.models.hf_io import load_pretrained
    from attnrl_jax.sampling.engine import NativeEngine

    model = load_pretrained(path, dtype=DTYPES[dtype], mesh=sampler.mesh)
    return NativeEngine(model.config, model.params(), sampler, decode_layout)


def load_benchmarks(args: argparse.Namespace) -> list[Benchmark]:
    try:
        names = parse_benchmarks(args.benchmarks or "", args.k)
        out = [load_benchmark(name, k, args.num_problems) for name, k in names]
        for path in args.benchmark_file:
            out.append(
                load_benchmark_file(
                    path,
                    args.k,
                    args.num_problems,
                    problem_key=args.problem_key,
                    answer_key=args.answer_key,
                )
            )
    except (ValueError, DataError) as e:
        raise EvalInputError(str(e)) from None
    names = [b.name for b in out]
    if len(set(names)) < len(names):
        raise EvalInputError(f"two benchmarks share a name: {names} (rename a file)")
    return out


def run(args: argparse.Namespace) -> dict:
    """Evaluates and writes the report; returns the report dict."""
    from attnrl_jax.eval.report import markdown_table, report_dict, write_report
    from attnrl_jax.eval.run import (
        EvalError,
        EvalOptions,
        evaluate_policy,
        in_process_grader,
        pool_grader,
    )
    from attnrl_jax.generate import InputError, _load_tokenizer, _sampler_config
    from attnrl_jax.sampling import SamplingOptions
    from attnrl_jax.sampling.eos import eos_ids

    args = _resolve(args)
    benchmarks = load_benchmarks(args)
    options = EvalOptions(args.max_new_tokens, args.temperature, args.top_p, args.seed)
    try:
        sampler = _sampler_config(args)
        SamplingOptions(
            max_new_tokens=options.max_new_tokens,
            temperature=options.temperature,
            top_p=options.top_p,
            seed=options.seed,
        ).check(sampler)
    except (InputError, ValueError) as e:
        raise EvalInputError(str(e)) from None
    tokenizer = _load_tokenizer(args.model)
    if tokenizer is None:
        raise EvalInputError(f"--model {args.model}: no tokenizer files in the directory")
    engine = load_engine(args.model, args.dtype, sampler, args.decode_layout)
    output = args.output or Path("eval") / args.model.resolve().name
    start = time.perf_counter()
    from tqdm import tqdm

    total = sum(len(b.problems) * b.k for b in benchmarks)
    grader = None
    if args.grading_workers > 0:
        from attnrl_jax.rewards.batch import Grader

        grader = Grader(
            timeout_s=args.grading_timeout, num_workers=args.grading_workers, reward=args.reward
        )
    try:
        with tqdm(total=total, unit="sample", file=sys.stderr, dynamic_ncols=True) as bar:
            result = evaluate_policy(
                engine,
                tokenizer,
                benchmarks,
                options,
                pool_grader(grader)
                if grader
                else functools.partial(in_process_grader, reward=args.reward),
                eos_ids=eos_ids(tokenizer, args.model, engine.cfg.eos_token_id),
                progress=bar.update,
            )
    except EvalError as e:  # e.g. a prompt longer than the model's position limit
        raise EvalInputError(str(e)) from None
    finally:
        engine.close()
        if grader is not None:
            grader.close()
    report = report_dict(result, str(args.model), options, time.perf_counter() - start)
    write_report(result, report, output)
    print(markdown_table(report), end="")
    print(f"report: {output / 'report.json'}, {output / 'report.md'}", file=sys.stderr)
    return report


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        run(args)
    except (EvalInputError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
