"""A few-second CPU demo: the project's tiny random Qwen2 on the built-in arithmetic task.

`python -m attnrl_jax.train --config=configs/demo.py --config.workdir=/tmp/demo`
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from base import get_config as base_config  # noqa: E402


def get_config():
    c = base_config()
    c.workdir = "/tmp/attnrl_demo"
    c.total_steps = 4
    c.mesh.data = 1
    c.data.num_demo_problems = 64
    c.rollout.update(
        group_size=4, continuations=2, num_points=2, max_new_tokens=24, min_token_distance=0
    )
    c.ads.update(initial_prompt_batch_size=4, target_sequences=4 * 4 * 5)
    c.optim.learning_rate = 1e-3
    c.train.update(minibatch_problems=4, microbatch_rows=8)
    c.checkpoint.every = 1
    return c
