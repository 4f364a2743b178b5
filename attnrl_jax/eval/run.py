"""Evaluate a policy: k sampled responses per benchmark problem, graded, then avg/pass/maj@k.

    engine = NativeEngine(cfg, params)
    result = evaluate_policy(engine, tokenizer, [load_benchmark("math500", k=4)],
                             EvalOptions(max_new_tokens=8192), eos_ids=(eos,))
    result.metrics["math500"]["avg@4"]

Every benchmark's problems go through one call of a rollout engine (sampling/engine.py; the
trainer passes its own, so a mesh-sharded policy evaluates where it trains), prompted as in
training (the paper's instruction in the model's chat template), and are graded by the
project's grader. Problem i of benchmark b
draws from the random stream (seed, id(b, i), sample), so its samples do not depend on which
other benchmarks are evaluated with it.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable, Sequence

import numpy as np

from attnrl_jax.data.prompts import INSTRUCTION, encode_prompts
from attnrl_jax.eval.benchmarks import Benchmark
from attnrl_jax.eval.metrics import ProblemResult, benchmark_metrics, macro_average
from attnrl_jax.rewards.math import GradeResult, grade
from attnrl_jax.sampling import Request, SamplingOptions
from attnrl_jax.sampling.engine import RolloutEngine

# (responses, per response its accepted answers) -> one GradeResult per response
GradeFn = Callable[[Sequence[str], Sequence[Sequence[str]]], Sequence[GradeResult]]


class EvalError(ValueError):
    """Benchmarks this model cannot be evaluated on (the message names the problem)."""


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    """Sampling settings of an evaluation (temperature 0: greedy; top_p 1: off)."""

    max_new_tokens: int = 8192
    temperature: float = 0.6
    top_p: float = 0.95
    seed: int = 0
    instruction: str = INSTRUCTION


@dataclasses.dataclass(frozen=True)
class SampleRecord:
    """One graded response."""

    benchmark: str
    problem: int  # index in the benchmark
    sample: int
    text: str
    extracted: str | None
    correct: bool
    reason: str
    num_tokens: int
    finish_reason: str


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """metrics: benchmark -> metric name -> value (fractions in [0, 1], counts as numbers)."""

    metrics: dict[str, dict[str, float]]
    samples: list[SampleRecord]

    def average(self) -> float:
        """The unweighted mean over benchmarks of pass@1 (= avg@k): the paper's "avg" column."""
        return macro_average(self.metrics, "pass@1")

    def flat(self, prefix: str = "eval") -> dict[str, float]:
        """{"eval/<benchmark>/<metric>": value, ..., "eval/average/pass@1": value}."""
        out = {f"{prefix}/{b}/{m}": v for b, ms in self.metrics.items() for m, v in ms.items()}
        out[f"{prefix}/average/pass@1"] = self.average()
        return out


def metric_ks(k: int) -> list[int]:
    """The k values reported for n = k samples: powers of two up to k, and k itself."""
    return sorted({1 << i for i in range(k.bit_length())} | {k})


def in_process_grader(
    texts: Sequence[str], golds: Sequence[Sequence[str]], reward: str = "hybrid"
) -> list[GradeResult]:
    """Grades in this process (no hard deadline: for small runs and tests)."""
    return [grade(t, list(g), reward=reward) for t, g in zip(texts, golds, strict=True)]


def pool_grader(grader) -> GradeFn:
    """Grades with a rewards.batch.Grader pool (a hard per-answer deadline)."""

    def grade_fn(texts: Sequence[str], golds: Sequence[Sequence[str]]) -> list[GradeResult]:
        return grader.grade(list(texts), [list(g) for g in golds]).results

    return grade_fn


def stream_id(benchmark: str, problem: int) -> int:
    """The random-stream index of a problem: fixed by its benchmark name and position."""
    if not 0 <= problem < 2**20:
        raise ValueError(f"a benchmark may have at most 2**20 problems, got index {problem}")
    return (zlib.crc32(benchmark.encode()) % 2**11) << 20 | problem


def evaluate_policy(
    engine: RolloutEngine,
    tokenizer,
    benchmarks: Sequence[Benchmark],
    options: EvalOptions = EvalOptions(),
    grade_fn: GradeFn = in_process_grader,
    *,
    eos_ids: Sequence[int] = (),
    progress: Callable[[int], None] | None = None,
) -> EvalResult:
    """Samples k responses per problem of each benchmark, grades them, and computes per
    benchmark: avg@k, pass@j and maj@j for j in metric_ks(k) (metrics.py), num_problems, k,
    mean_response_tokens and truncated (the fraction of responses cut by max_new_tokens).

    eos_ids: generation stops after any of them (sampling/eos.eos_ids of the model).
    progress(n) is called as device batches of n responses finish.
    """
    names = [b.name for b in benchmarks]
    if len(set(names)) != len(names):
        raise EvalError(f"benchmark names must be unique, got {names}")
    requests, owners = [], []
    for b in benchmarks:
        if b.k < 1 or not b.problems:
            raise EvalError(f"benchmark {b.name!r} needs k >= 1 and problems (k={b.k})")
        ids = encode_prompts(tokenizer, [p.problem for p in b.problems], options.instruction)
        for i, prompt in enumerate(ids):
            if len(prompt) >= engine.max_positions:
                raise EvalError(
                    f"{b.name} problem {i} ({b.problems[i].where}): the prompt is {len(prompt)} "
                    f"tokens, the model's limit is {engine.max_positions}"
                )
            requests.append(Request(prompt, n=b.k, index=stream_id(b.name, i)))
            owners.append((b, i))
    sampling = SamplingOptions(
        max_new_tokens=options.max_new_tokens,
        temperature=options.temperature,
        top_p=options.top_p,
        seed=options.seed,
        eos_ids=tuple(int(e) for e in eos_ids),
    )
    out = engine.generate(requests, sampling, progress)
    texts = tokenizer.batch_decode([s.token_ids.tolist() for s in out], skip_special_tokens=True)
    golds = [owners[s.request][0].problems[owners[s.request][1]].answers for s in out]
    graded = list(grade_fn(texts, golds))
    if len(graded) != len(out):
        raise EvalError(f"the grader returned {len(graded)} results for {len(out)} responses")
    records = [
        SampleRecord(
            benchmark=owners[s.request][0].name,
            problem=owners[s.request][1],
            sample=s.sample,
            text=text,
            extracted=g.extracted,
            correct=bool(g.correct),
            reason=g.reason,
            num_tokens=len(s.token_ids),
            finish_reason=s.finish_reason,
        )
        for s, text, g in zip(out, texts, graded, strict=True)
    ]
    return EvalResult(aggregate(records, benchmarks), records)


def aggregate(records: Sequence[SampleRecord], benchmarks: Sequence[Benchmark]) -> dict:
    """Per-benchmark metrics of graded samples (records in problem, then sample order)."""
    metrics = {}
    for b in benchmarks:
        mine = [r for r in records if r.benchmark == b.name]
        by_problem: list[list[SampleRecord]] = [[] for _ in b.problems]
        for r in mine:
            by_problem[r.problem].append(r)
        for rows in by_problem:
            rows.sort(key=lambda r: r.sample)
        results = [
            ProblemResult([r.correct for r in rows], [r.extracted for r in rows])
            for rows in by_problem
        ]
        metrics[b.name] = {
            "num_problems": len(b.problems),
            "k": b.k,
            **benchmark_metrics(results, metric_ks(b.k)),
            "mean_response_tokens": float(np.mean([r.num_tokens for r in mine])),
            "truncated": float(np.mean([r.finish_reason == "length" for r in mine])),
        }
    return metrics
