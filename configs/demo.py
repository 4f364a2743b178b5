"""The `make demo` setting: a tiny Qwen2 learning the built-in arithmetic task on a CPU.

`python -m attnrl_jax.demo` warm-starts the model (model.path is then its directory) and trains
with this config; `python -m attnrl_jax.train --config=configs/demo.py
--config.workdir=/tmp/demo` trains the tiny random model instead (it never gets a reward).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from base import get_config as base_config  # noqa: E402


def get_config():
    c = base_config()
    c.workdir = "/tmp/attnrl_demo"
    c.total_steps = 60
    c.mesh.data = 1
    c.model.update(tiny_hidden_size=128, tiny_layers=2, tiny_heads=4, tiny_kv_heads=2)
    c.data.num_demo_problems = 2048
    c.rollout.update(
        group_size=6, continuations=2, num_points=2, max_new_tokens=64, min_token_distance=4
    )
    # 16 prompts x 6 responses x 5 paths per expanded response, as the paper's 64 x 6 x 5
    c.ads.update(initial_prompt_batch_size=16, target_sequences=16 * 6 * 5)
    c.optim.learning_rate = 2e-4
    c.loss.kl_weight = 0.01
    c.train.update(minibatch_problems=8, microbatch_rows=64)
    c.checkpoint.every = 10
    return c
