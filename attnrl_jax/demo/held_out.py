"""Held-out accuracy of a policy on the demo task: k samples per problem, graded by the real
grader, reported as avg@k (mean correctness) and greedy accuracy."""

from __future__ import annotations

import numpy as np

from attnrl_jax.data.prompts import encode_prompts
from attnrl_jax.data.records import Problem
from attnrl_jax.eval.metrics import avg_at_k
from attnrl_jax.models.config import ModelConfig
from attnrl_jax.models.qwen2 import Params
from attnrl_jax.rewards.math import grade
from attnrl_jax.sampling import Request, SamplingOptions, sample


def held_out_accuracy(
    params: Params,
    cfg: ModelConfig,
    tokenizer,
    problems: list[Problem],
    *,
    k: int,
    temperature: float,
    max_new_tokens: int,
    seed: int = 0,
) -> float:
    """Mean over problems of avg@k (temperature > 0) or greedy correctness (temperature 0)."""
    prompts = encode_prompts(tokenizer, [p.problem for p in problems])
    n = k if temperature > 0 else 1
    options = SamplingOptions(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        eos_ids=(tokenizer.eos_token_id,),
    )
    samples = sample(params, cfg, [Request(p, n=n) for p in prompts], options)
    texts = tokenizer.batch_decode(
        [s.token_ids.tolist() for s in samples], skip_special_tokens=True
    )
    correct = [grade(t, list(problems[i // n].answers)).correct for i, t in enumerate(texts)]
    return float(np.mean([avg_at_k(correct[i : i + n]) for i in range(0, len(correct), n)]))
