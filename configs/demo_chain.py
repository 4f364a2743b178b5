"""The chain task's demo setting: a tiny Qwen2 learning named multi-step chains on a CPU.

Task `chain` (attnrl_jax/data/chain_task.py): 6-12 named quantities, each built from digits or
earlier quantities ("b=a+2=7+2;b9"), so later steps use earlier results and a wrong intermediate
reaches the answer. `python -m attnrl_jax.demo --config configs/demo_chain.py` warm-starts the
model on a careless teacher's solutions and trains with this config. Everything else is
configs/demo.py's setting except: responses are longer (up to 148 tokens for the gold, so
160), 8 initial prompts a step instead of 16 (a step generates ~3x the demo's tokens per
prompt, so a CPU run at a fixed token budget still takes several optimizer steps), and 8192
training problems instead of 2048 (the warm start sees each about three times rather than
memorising a few).

The warm start (demo/warm_start.RECIPES["chain"]: 1500 supervised steps of 16, lr 2e-3, the
first half slip-free) is longer than the demo's because looking quantities up by name forms only
after a loss plateau of ~300 steps: 1134 s (19 minutes) on the loaded 2-core CPU where it
was measured (not yet timed on an idle machine), once per workdir. It reaches held-out accuracy
~0.66, its teacher's (BENCHMARKS.md's chain section).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from demo import get_config as demo_config  # noqa: E402


def get_config():
    c = demo_config()
    c.workdir = "/tmp/attnrl_demo_chain"
    c.data.train_files = "chain"
    c.data.num_demo_problems = 8192
    c.rollout.max_new_tokens = 168
    # 8 prompts x 6 responses x 5 paths per expanded response, as the paper's 64 x 6 x 5
    c.ads.update(initial_prompt_batch_size=8, target_sequences=8 * 6 * 5)
    return c
