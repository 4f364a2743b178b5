"""The paper's 7B run: DeepSeek-R1-Distill-Qwen-7B, otherwise the 1.5B settings.

    python -m attnrl_jax.train --config=configs/r1_distill_qwen_7b.py[:VARIANT] \
        --config.model.path=/models/DeepSeek-R1-Distill-Qwen-7B \
        --config.data.train_files=/data/deepscaler.parquet --config.workdir=/runs/attnrl_7b

See configs/r1_distill_qwen_1p5b.py for the data and the variants. The mesh adds tensor
parallelism (Qwen2-7B has 28 query and 4 key/value heads, so tensor may be 1, 2 or 4).
`python -m attnrl_jax.plan --config=configs/r1_distill_qwen_7b.py --config.model.path=DIR
--topology=v6e:2x4` (BENCHMARKS.md, "Will the paper runs fit?"): at 1x2x4 with 2-row
micro-batches of 9,216 tokens the train step needs 26.4 GiB per v6e chip (limit 28.8: 90% of
32), and sampling continuations 24.6 GiB (the continuous engine, 64 slots, at most 2 rows
prefilled per shard at once: rollout.admit_rows). Run the plan for your slice.

Device split: shared (mesh.rollout_devices=0): the train step needs all 8 chips. With 16,
`--config.mesh.rollout_devices=8` gives the rollout group 8 (rows over data 2, heads over
tensor 4); rollout_devices must be a multiple of mesh.tensor.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from r1_distill_qwen_1p5b import paper_config  # noqa: E402
from variants import apply_variant  # noqa: E402


def get_config(variant: str = ""):
    c = paper_config()
    c.mesh.update(data=1, fsdp=-1, tensor=4)  # the memory plan's 1x2x4 on 8 devices
    c.train.microbatch_rows = 2
    c.mesh.rollout_devices = 0  # shared devices (see the module docstring)
    return apply_variant(c, variant)
