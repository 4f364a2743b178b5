"""The paper's main run: DeepSeek-R1-Distill-Qwen-1.5B, 8k responses (ALGORITHM.md section 9).

    python -m attnrl_jax.train --config=configs/r1_distill_qwen_1p5b.py[:VARIANT] \
        --config.model.path=/models/DeepSeek-R1-Distill-Qwen-1.5B \
        --config.data.train_files=/data/deepscaler.parquet --config.workdir=/runs/attnrl_1p5b

VARIANT: attnrl (default), grpo, treerl, ... (configs/variants.py). Two keys have no default and
must be set: model.path (a local Hugging Face directory; nothing is downloaded) and
data.train_files. The paper trains on DeepScaleR-Preview (40,315 problems), which this
repository does not ship. AttnRL's own copy (`data/train/deepscaler_train.parquet` in
RyanLiu112/AttnRL) loads with --config.data.problem_key=prompt.0.content
--config.data.answer_key=reward_model.ground_truth; any JSONL/JSON/Parquet file with
problem/answer fields works too, e.g. the Hendrycks MATH train split.

The mesh is the only thing that changes between machines. mesh, microbatch_rows and
sampler_rows come from `python -m attnrl_jax.plan --config=configs/r1_distill_qwen_1p5b.py
--config.model.path=DIR --topology=v5e:2x4` (BENCHMARKS.md, "Will the paper runs fit?"): fsdp x
tensor 2 with one 9,216-token row per data x fsdp shard trains on v5e-8 (8.6 GiB per chip), and
the continuous engine's 64 slots sample continuations in 9.8 GiB with at most 2 rows prefilled
per shard at once (rollout.admit_rows); so run the plan for your slice before renting it.

Device split: shared (mesh.rollout_devices=0), as the paper ran (8 H100, sampling and training
one after the other, the one-step off-policy merged call). With devices to spare, e.g. 16:
`--config.mesh.rollout_devices=8` samples batch k+1 on 8 while batch k trains on the other 8
(BENCHMARKS.md, "Overlapped rollout and training", has the projected step time);
microbatch_rows must then be a multiple of the training group's data x fsdp.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from base import get_config as base_config  # noqa: E402
from variants import apply_variant  # noqa: E402


def paper_config():
    """The settings the 1.5B and 7B runs share."""
    c = base_config()
    c.model.path = ""
    c.model.require_path = True
    # Mixed precision: bfloat16 matmuls over float32 master weights and AdamW moments (AdamW
    # at lr 1e-6 needs float32 weights: bfloat16 would round most updates away); softmax, norm
    # and log-prob statistics and gradient sums run in float32 (tests/test_mixed_precision.py).
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "float32"
    c.model.remat = True  # the train step does not fit at 8k tokens without it (BENCHMARKS.md)
    c.data.train_files = ""  # required: DeepScaleR-style problem/answer data (see above)
    c.data.max_prompt_len = 1024
    c.rollout.update(
        group_size=6, continuations=2, num_points=2, max_new_tokens=8192, temperature=1.0,
        top_p=1.0, min_token_distance=512,
    )  # fmt: skip
    c.ads.update(target_sequences=64 * 6 * 5, initial_prompt_batch_size=64, batch_lambda=0.9)
    c.loss.update(clip_low=0.2, clip_high=0.28, dual_clip=3.0, kl_weight=0.001)
    c.optim.update(learning_rate=1e-6, weight_decay=0.01, grad_clip=1.0)
    # Padding-free rows of 9,216 tokens: the longest path row (1,024-token prompt, a response
    # prefix and its continuation, 8,192 tokens together as in the authors' rollout:
    # RolloutConfig.continuation_budget); one row per data x fsdp shard.
    c.train.update(minibatch_problems=32, microbatch_rows=4, tokens_per_row=9216)
    # 64 engine slots; at most 2 rows prefilled per batch shard at once, so continuation
    # contexts (up to 9,216 tokens) fit v5e's 16 GiB (BENCHMARKS.md, "Will the paper runs fit?")
    c.rollout.update(sampler_rows=64, admit_rows=2)
    c.grading.update(workers=8, timeout_s=5.0)  # a hard per-answer deadline (rewards/batch.py)
    c.checkpoint.update(every=10, keep=2)
    # The paper's evaluation (avg@32 AIME24/25, AMC23; avg@4 the rest; temperature 0.6, 32k
    # tokens) costs hours at this scale, so it is off during training; run attnrl_jax.evaluate
    # on the exported policy, or set --config.eval.every=50 (--config.eval.num_problems caps it).
    c.eval.update(benchmarks="paper", every=0, max_new_tokens=32768, temperature=0.6, top_p=0.95)
    return c


def get_config(variant: str = ""):
    c = paper_config()
    c.mesh.update(data=1, fsdp=-1, tensor=2)  # 1x4x2 on 8 chips (python -m attnrl_jax.plan)
    c.mesh.rollout_devices = 0  # shared devices, as the paper (see the module docstring)
    return apply_variant(c, variant)
