"""The trainer's state in checkpoints (a mixin of rl/trainer.Trainer): params and optimizer
state, host state (step, seed, ADS running mean, adaptive batch size, prompt stream, the
pending off-policy Generations) and the metrics lines of steps after a restored checkpoint."""

from __future__ import annotations

import json

import jax
import numpy as np

from attnrl_jax.rl import ads
from attnrl_jax.rl.checkpoint import generation_from_state, generation_to_state
from attnrl_jax.rl.settings import ConfigError


class TrainerState:
    """Save / restore of a Trainer's state through its Checkpointer."""

    def _host_state(self) -> dict:
        host = {
            "step": self.step,
            "seed": self.seed,
            "filter_total": self.filter_state.total,
            "filter_count": self.filter_state.count,
            "prompt_batch_size": self.prompt_batch_size,
            "stream": self.stream.get_state(),
            "pending": None,
            "nonfinite_skips": self.nonfinite_skips,
        }
        arrays = None
        if self.pending:  # a list of metadata; arrays under "0", "1", ... (oldest first)
            states = [generation_to_state(g) for g in self.pending]
            arrays = {str(i): a for i, (a, _) in enumerate(states)}
            host["pending"] = [meta for _, meta in states]
        return host, arrays

    def _state(self) -> dict:
        return {"params": self.params, "opt_state": self.opt_state}

    def save(self) -> None:
        host, arrays = self._host_state()
        self.checkpointer.save(self.step, self._state(), host, arrays)

    def restore(self, step: int) -> None:
        """Loads checkpoint `step` (params, optimizer, stream, pending Generation), verified."""
        self._load(step, *self.checkpointer.restore(step, self._state()))

    def restore_point(self) -> str:
        """Where a re-run of the same command resumes: one phrase for messages."""
        latest = self.checkpointer.all_steps()
        if not latest:
            return f"no checkpoint yet in {self.checkpointer.directory}; a re-run starts afresh"
        return f"checkpoint step {latest[-1]} in {self.checkpointer.directory}"

    def _load(self, step: int, state, host: dict, arrays) -> None:
        if host["seed"] != self.seed:
            raise ConfigError(
                f"the checkpoint in {self.workdir} was trained with seed {host['seed']}, "
                f"this run has seed {self.seed}; use the same seed or a new workdir"
            )
        self.params, self.opt_state = state["params"], state["opt_state"]
        self.step = int(host["step"])
        self.nonfinite_skips = int(host.get("nonfinite_skips", 0))
        self.filter_state = ads.AttentionFilterState(host["filter_total"], host["filter_count"])
        self.prompt_batch_size = int(host["prompt_batch_size"])
        self.stream.set_state(host["stream"])
        self._drop_metrics_after(self.step)
        self.pending = []
        metas = host["pending"]
        if isinstance(metas, dict):  # written before off_policy_steps: one pending batch
            metas, arrays = [metas], {"0": arrays}
        for i, meta in enumerate(metas or ()):
            state = {k: np.asarray(v) for k, v in arrays[str(i)].items()}
            self.pending.append(generation_from_state(state, meta, self.seps))
        self._push_weights(self.step)

    def _drop_metrics_after(self, step: int) -> None:
        """Forget metrics lines of steps after the restored checkpoint (and a line cut off by a
        kill), so metrics.jsonl reads as one uninterrupted run."""
        path = self.workdir / "metrics.jsonl"
        if jax.process_index() != 0 or not path.exists():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line + "\n")
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
        path.write_text("".join(kept))
