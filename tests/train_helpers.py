"""Shared pieces of the trainer tests: a small demo config, a mixed reward, a run helper.

Every trainer test builds its config with small_config, so the programs compiled by one test
(same shapes, same static settings) are reused by the others in the same pytest process.
"""

import numpy as np

from attnrl_jax.train import build_trainer
from configs.demo import get_config

TIMING = ("time_", "timeline")  # wall-clock values differ between runs


def parity_reward(texts, golds):
    """Mixed 0/1 rewards from a random model: whether the response text has even length."""
    return np.array([len(t) % 2 == 0 for t in texts], float)


def small_config(path, **overrides):
    c = get_config()
    c.workdir = str(path)
    c.total_steps = 3
    c.log.progress = False
    c.log.tensorboard = False
    # smaller than the demo's learning setting: these tests check mechanics, not learning
    c.model.update(tiny_hidden_size=64, tiny_layers=2, tiny_heads=4, tiny_kv_heads=2)
    c.data.num_demo_problems = 64
    c.rollout.update(max_new_tokens=16, group_size=4, min_token_distance=0)
    c.ads.initial_prompt_batch_size = 2
    c.ads.target_sequences = 24
    c.loss.kl_weight = 0.001
    c.optim.learning_rate = 1e-3
    c.train.update(minibatch_problems=4, microbatch_rows=8)
    c.checkpoint.every = 1
    for key, value in overrides.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def run(config, steps=None, reward_fn=parity_reward, engine=None):
    trainer = build_trainer(config, reward_fn=reward_fn, engine=engine)
    try:
        return trainer.run(steps or config.total_steps), trainer
    finally:
        trainer.close()


def strip(metrics):
    return [{k: v for k, v in m.items() if not k.startswith(TIMING)} for m in metrics]
