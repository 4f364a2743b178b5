"""One process of the multi-process tests (tests/test_distributed.py); also the shared config.

`python tests/multihost_worker.py WORKDIR COORDINATOR NUM_PROCESSES PROCESS_ID [split]` trains
`config(WORKDIR)` (`config(WORKDIR, split=True)` with "split") for its total_steps as one of
NUM_PROCESSES jax.distributed processes (each forcing its CPU device count through XLA_FLAGS),
with the parity reward so that updates happen on a random model.
"""

import sys

import numpy as np

from configs.demo import get_config

MESH = {"data": 1, "fsdp": 2, "tensor": 2}  # fsdp spans the two processes, tensor each one's pair
# split devices: each process samples on its last device and trains on its first (fsdp spans
# the processes in both groups' meshes: the rollout mesh's data axis, the training fsdp axis)
SPLIT_MESH = {"data": 1, "fsdp": 2, "tensor": 1, "rollout_devices": 2}
STEPS = 2


def parity_reward(texts, golds):
    """Mixed 0/1 rewards from a random model: whether the response text has even length."""
    return np.array([len(t) % 2 == 0 for t in texts], float)


def config(workdir: str, split: bool = False):
    c = get_config()
    c.workdir = str(workdir)
    c.total_steps = STEPS
    c.mesh.update(SPLIT_MESH if split else MESH)
    c.log.update(progress=False, tensorboard=False)
    # Small enough for two CPU processes on a shared machine, large enough for real updates.
    c.rollout.update(max_new_tokens=8, group_size=2, continuations=1, num_points=1, sampler_rows=8)
    c.ads.update(initial_prompt_batch_size=2, target_sequences=8)
    c.train.packing = "path"  # rows of one length bucket in both steps: one update compile
    c.loss.kl_weight = 0.001
    return c


def main(
    workdir: str, coordinator: str, num_processes: str, process_id: str, mode: str = ""
) -> None:
    from attnrl_jax.distributed import initialize

    spec = {
        "coordinator_address": coordinator,
        "num_processes": int(num_processes),
        "process_id": int(process_id),
        "initialization_timeout_s": 30,
    }
    initialize(spec)
    from attnrl_jax.train import build_trainer

    trainer = build_trainer(config(workdir, split=mode == "split"), reward_fn=parity_reward)
    try:
        trainer.run(STEPS)
    finally:
        trainer.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
