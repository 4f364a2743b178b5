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
import numpy as np
import orbax.checkpoint as ocp

from attnrl_jax.data.pipeline import Prompt
from attnrl_jax.data.records import Problem
from attnrl_jax.rl.rollout import Generation
from attnrl_jax.scoring.steps import SeparatorIds, segment_steps


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

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore_params(self, step: int, params_target: Any) -> Any:
        """Only the params of checkpoint `step`, with params_target's shapes and shardings (no
        optimizer state: what export needs)."""
        abstract = {"params": jax.tree.map(ocp.utils.to_shape_dtype_struct, params_target)}
        restore = ocp.args.PyTreeRestore(
            abstract,
            restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
            partial_restore=True,
        )
        out = self.manager.restore(step, args=ocp.args.Composite(state=restore))
        return out["state"]["params"]

    def close(self) -> None:
        self.manager.close()


# ----- the pending Generation (off-policy: sampled, not yet trained on) -----


def problem_from_json(d: dict) -> Prompt:
    return Prompt(Problem(d["problem"], tuple(d["answers"]), d["where"]), tuple(d["prompt_ids"]))


def prompt_to_json(p: Prompt) -> dict:
    return {
        "problem": p.problem.problem,
        "answers": list(p.problem.answers),
        "where": p.problem.where,
        "prompt_ids": [int(t) for t in p.prompt_ids],
    }


def generation_to_state(gen: Generation) -> tuple[dict, dict]:
    """(numpy arrays, JSON metadata) that restore the Generation exactly (layouts recomputed)."""
    n = len(gen.responses)
    lengths = np.array([len(r) for r in gen.responses], np.int32)
    width = max(int(lengths.max()), 1)

    def pad(xs, dtype):
        out = np.zeros((n, width), dtype)
        for i, x in enumerate(xs):
            out[i, : len(x)] = x
        return out

    arrays = {
        "lengths": lengths,
        "responses": pad(gen.responses, np.int32),
        "logprobs": pad(gen.logprobs, np.float32),
    }
    if gen.entropies is not None:
        arrays["entropies"] = pad(gen.entropies, np.float32)
    if gen.fci is not None:
        steps = max(len(f) for f in gen.fci)
        fci = np.zeros((n, steps), np.float32)
        for i, f in enumerate(gen.fci):
            fci[i, : len(f)] = f
        arrays["fci"] = fci
    meta = {"prompts": [prompt_to_json(p) for p in gen.prompts], "version": gen.version}
    return arrays, meta


def generation_from_state(arrays: dict, meta: dict, seps: SeparatorIds) -> Generation:
    prompts = tuple(problem_from_json(d) for d in meta["prompts"])
    lengths = np.asarray(arrays["lengths"])
    g = len(lengths) // len(prompts)  # before the Generation exists to say so
    responses = tuple(np.asarray(arrays["responses"][i, :n]) for i, n in enumerate(lengths))
    layouts = tuple(
        segment_steps(len(prompts[i // g].prompt_ids), r, seps) for i, r in enumerate(responses)
    )
    fci = None
    if "fci" in arrays:
        fci = tuple(
            np.asarray(arrays["fci"][i, : lay.num_steps + 1]) for i, lay in enumerate(layouts)
        )
    return Generation(
        prompts=prompts,
        responses=responses,
        logprobs=tuple(np.asarray(arrays["logprobs"][i, :n]) for i, n in enumerate(lengths)),
        entropies=None
        if "entropies" not in arrays
        else tuple(np.asarray(arrays["entropies"][i, :n]) for i, n in enumerate(lengths)),
        fci=fci,
        layouts=layouts,
        version=int(meta["version"]),
    )
