"""Checkpoints of the whole training state with orbax, one directory per step.

A checkpoint holds three items:
- "state": params and optimizer state (sharded arrays, restored with their shardings);
- "host": JSON: step, seed, ADS running mean, prompt batch size, data stream position, and the
  pending off-policy Generation's prompts and version;
- "pending": numpy arrays of the pending Generation (responses, behaviour log-probs, entropies
  unless no scoring forward ran, FCI); absent on-policy or before the first step.
Random numbers are a function of (seed, step) (see trainer.py), so the seed and step are the RNG
state. Orbax writes each step into a temporary directory and renames it when complete, and lists
only finalised steps, so a checkpoint interrupted mid-write is never loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Saves and restores training state under <workdir>/checkpoints."""

    def __init__(self, workdir: str | Path, keep: int = 2):
        self.directory = Path(workdir).absolute() / "checkpoints"
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "host", "pending")
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, host: dict, pending: dict | None) -> None:
        items = {"state": ocp.args.StandardSave(state), "host": ocp.args.JsonSave(host)}
        if pending is not None:
            items["pending"] = ocp.args.StandardSave(pending)
        self.manager.save(step, args=ocp.args.Composite(**items))
        self.manager.wait_until_finished()

    def restore(self, step: int, state_target: Any) -> tuple[Any, dict, dict | None]:
        """(state with the target's shardings, host JSON, pending arrays or None).

        The host item says whether a pending batch was saved (host["pending"] is not None).
        """
        host = self.manager.restore(step, args=ocp.args.Composite(host=ocp.args.JsonRestore()))
        host = host["host"]
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_target)
        items = {"state": ocp.args.StandardRestore(abstract)}
        if host.get("pending") is not None:
            items["pending"] = ocp.args.StandardRestore()
        out = self.manager.restore(step, args=ocp.args.Composite(**items))
        return out["state"], host, out["pending"] if "pending" in items else None

    def close(self) -> None:
        self.manager.close()
