"""Checkpoints of the whole training state with orbax, one directory per step.

A checkpoint holds three items:
- "state": params and optimizer state (sharded arrays, restored with their shardings);
- "host": JSON: step, seed, ADS running mean, prompt batch size, data stream position, skipped
  non-finite steps, the pending off-policy Generation's prompts and version, and the integrity
  record;
- "pending": numpy arrays of the pending Generation (responses, behaviour log-probs, entropies
  unless no scoring forward ran, FCI); absent on-policy or before the first step.
Random numbers are a function of (seed, step) (see trainer.py), so the seed and step are the RNG
state. Orbax writes each step into a temporary directory and renames it when complete, and lists
only finalised steps, so a checkpoint interrupted mid-write is never loaded. On object storage
(a gs:// workdir, attnrl_jax/storage.py), where a rename is not atomic, orbax writes the step in
place and commits it with a marker file (commit_success.txt) written last; a step without it is
not listed.

Every save records checksums of every array and of the host JSON (rl/integrity.py) in
host["integrity"]; restore verifies them and refuses non-finite state. `restore_latest` walks
back from the newest step: a damaged one is reported in one line and set aside as
<step>.damaged (kept for inspection, no longer listed), the newest intact one is restored; when
none is intact it stops with a DamagedCheckpoint naming every step and why, and renames nothing.

With several jax.distributed processes every process must take the same collectives (orbax's
barriers are collectives too) whatever fails on which process, or one of them waits forever. So
restores read through `_reader`, an orbax Checkpointer with no barrier, each process its own
files; the processes then agree (one all-gather) whether every read and local check passed, and
all return or all raise. All walk process 0's list of steps, and process 0's rename of a damaged
step is agreed on the same way.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from attnrl_jax import storage
from attnrl_jax.data.pipeline import Prompt
from attnrl_jax.data.records import Problem
from attnrl_jax.distributed import all_agree
from attnrl_jax.rl import integrity
from attnrl_jax.rl.integrity import DamagedCheckpoint
from attnrl_jax.rl.rollout import Generation
from attnrl_jax.scoring.steps import SeparatorIds, segment_batch


class Checkpointer:
    """Saves and restores training state under <workdir>/checkpoints."""

    def __init__(self, workdir: str | Path, keep: int = 2, read_only: bool = False):
        self.directory = storage.absolute(workdir) / "checkpoints"
        if not read_only:
            check_writable(self.directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else keep,
            save_interval_steps=0 if read_only else 1,
            create=not read_only,
            read_only=read_only,
            # a save cut short leaves orbax's own uncommitted temporary (on object storage the
            # step folder itself, without its commit marker): removed, so the step can be redone
            cleanup_tmp_directories=not read_only,
        )
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "host", "pending")
        )
        # reads without orbax's closing barrier (module docstring): a process whose read failed
        # would never reach it, and its next collective would pair with the others' barrier
        alone = ocp.options.MultiprocessingOptions(
            primary_host=jax.process_index(), active_processes={jax.process_index()}
        )
        composite = ocp.CompositeOptions(multiprocessing_options=alone)
        self._reader = ocp.Checkpointer(
            ocp.CompositeCheckpointHandler(composite_options=composite),
            multiprocessing_options=alone,
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, host: dict, pending: dict | None) -> None:
        """Saves step `step` with its integrity record; refuses non-finite state."""
        host = dict(host, integrity=integrity.record(state, host, pending))
        items = {"state": ocp.args.StandardSave(state), "host": ocp.args.JsonSave(host)}
        if pending is not None:
            items["pending"] = ocp.args.StandardSave(pending)
        self.manager.save(step, args=ocp.args.Composite(**items))
        self.manager.wait_until_finished()

    def restore(self, step: int, state_target: Any) -> tuple[Any, dict, dict | None]:
        """(state with the target's shardings, host JSON, pending arrays or None), verified; a
        DamagedCheckpoint when a file is unreadable or a checksum or finiteness check fails.
        With several processes, all return or all raise (module docstring).

        The host item says whether a pending batch was saved (host["pending"] is not None).
        """
        problem, read = None, None
        try:  # this process's reads and checks, no collective
            host = self._read_host(step)
            abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_target)
            items = {"state": ocp.args.StandardRestore(abstract)}
            if host.get("pending") is not None:
                items["pending"] = ocp.args.StandardRestore()
            out = self._read(step, "arrays", ocp.args.Composite(**items))
            pending = out["pending"] if "pending" in items else None
            self._check(step, integrity.verify_pending(pending, host))
            read = out["state"], host, pending
        except DamagedCheckpoint as e:
            problem = e
        self._agree(step, problem)
        state, host, pending = read
        # global checksums and finiteness (one program over the sharded arrays on every
        # process): the same verdict everywhere, so no second agreement
        self._check(step, integrity.verify_state(state, host))
        return state, host, pending

    def restore_latest(self, state_target: Any) -> tuple[int, Any, dict, dict | None] | None:
        """(step, state, host, pending) of the newest intact checkpoint, or None when there is
        none at all. Damaged newer steps are reported and set aside (module docstring)."""
        damaged = []
        for step in reversed(self._shared_steps()):
            try:
                restored = self.restore(step, state_target)
            except DamagedCheckpoint as e:  # on every process (restore agrees)
                say(f"{e}; trying the previous checkpoint")
                damaged.append(e)
                continue
            for e in damaged:
                self._set_aside(e.step)
            if damaged:
                say(f"resuming from the newest intact checkpoint, step {step}")
            return (step, *restored)
        if damaged:
            reasons = "; ".join(f"step {e.step}: {e.reason}" for e in damaged)
            raise DamagedCheckpoint(
                damaged[0].step,
                self.directory,
                reasons,
                message=f"no intact checkpoint in {self.directory} ({reasons}); move the folder "
                "away to start afresh",
            )
        return None

    def _shared_steps(self) -> list[int]:
        """Process 0's list of steps on every process: a process with a stale view of shared
        storage would otherwise try other steps, and so other collectives. A step it does not
        see fails its read, which damages the step for all."""
        steps = self.all_steps()
        if jax.process_count() == 1:
            return steps
        from jax.experimental import multihost_utils

        count = int(multihost_utils.broadcast_one_to_all(np.array([len(steps)], np.int32))[0])
        if count == 0:  # the same on every process: no second broadcast anywhere
            return []
        mine = np.array(steps if len(steps) == count else [0] * count, np.int32)
        return [int(s) for s in multihost_utils.broadcast_one_to_all(mine)]

    def _agree(self, step: int, problem: DamagedCheckpoint | None) -> None:
        """Raises on every process when any process has a problem with `step` (each names its
        own, or says another process had one); returns on all otherwise."""
        if all_agree(problem is None):
            return
        raise problem or DamagedCheckpoint(
            step, self.directory, "another process could not read or verify it"
        )

    def _read_host(self, step: int) -> dict:
        host = self._read(step, "host state", ocp.args.Composite(host=ocp.args.JsonRestore()))
        host = host["host"]
        if not isinstance(host, dict) or "step" not in host:
            raise DamagedCheckpoint(step, self.directory, "the host state is not a training state")
        self._check(step, integrity.verify_host(host))
        return host

    def _read(self, step: int, what: str, args) -> dict:
        """This process's read of `args` from step `step` (no collective)."""
        try:
            return self._reader.restore(self.directory / str(step), args=args)
        except DamagedCheckpoint:
            raise
        except Exception as e:  # tensorstore/orbax: a missing, truncated or garbled file
            _quiet_failed_reads(self.directory)
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise DamagedCheckpoint(
                step, self.directory, f"cannot read its {what} ({first})"
            ) from e

    def _check(self, step: int, problem: str | None) -> None:
        if problem is not None:
            raise DamagedCheckpoint(step, self.directory, problem)

    def _set_aside(self, step: int) -> None:
        """Renames a damaged step to <step>.damaged[-n] (process 0; all processes reload)."""
        failed = None
        if jax.process_index() == 0:
            target = self.directory / f"{step}.damaged"
            n = 1
            while target.exists():
                target, n = self.directory / f"{step}.damaged-{n}", n + 1
            try:
                storage.move_dir(self.directory / str(step), target)  # gs://: copy, delete
                say(f"set the damaged checkpoint aside as {target}")
            except OSError as e:
                failed = e
        # also the barrier before the others reload: all wait for the rename, or all stop
        if not all_agree(failed is None):
            raise CheckpointDirError(
                f"cannot set the damaged checkpoint {self.directory / str(step)} aside "
                f"({failed or 'process 0 failed to rename it'})"
            ) from failed
        self.manager.reload()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore_params(self, step: int, params_target: Any) -> Any:
        """Only the params of checkpoint `step`, with params_target's shapes and shardings (no
        optimizer state: what export needs), verified like `restore`."""
        problem, read = None, None
        try:  # this process's reads, then agreement, as in `restore`
            host = self._read_host(step)
            abstract = {"params": jax.tree.map(ocp.utils.to_shape_dtype_struct, params_target)}
            restore = ocp.args.PyTreeRestore(
                abstract,
                restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                partial_restore=True,
            )
            read = self._read(step, "params", ocp.args.Composite(state=restore)), host
        except DamagedCheckpoint as e:
            problem = e
        self._agree(step, problem)
        out, host = read
        params = out["state"]["params"]
        self._check(step, integrity.verify_state({"params": params}, host, prefix="['params']"))
        return params

    def close(self) -> None:
        self.manager.close()
        self._reader.close()


class _FailedReads(logging.Filter):
    """Drops asyncio's "... exception was never retrieved" reports of reads under `directory`:
    orbax leaves the other reads of a damaged checkpoint as tasks nobody awaits, and asyncio
    would print each (hundreds of lines) when they are collected. The damage was already
    reported in one line."""

    def __init__(self, directory: Path):
        super().__init__()
        self.directory = str(directory)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        first = message.split("\n", 1)[0]
        return not ("exception was never retrieved" in first and self.directory in message)


def _quiet_failed_reads(directory: Path) -> None:
    log = logging.getLogger("asyncio")
    if not any(isinstance(f, _FailedReads) and f.directory == str(directory) for f in log.filters):
        log.addFilter(_FailedReads(directory))


def say(message: str) -> None:
    """One line on stderr from process 0 (every process reaches the same verdicts)."""
    if jax.process_index() == 0:
        print(message, file=sys.stderr, flush=True)


def check_writable(directory: Path) -> None:
    """Creates `directory` (local or gs://) and writes and removes a probe file: an unwritable
    folder or a missing bucket fails here in one line, not minutes later inside orbax. No JAX
    call: this runs before jax.distributed starts."""
    try:
        storage.check_writable(directory)
    except OSError as e:
        raise CheckpointDirError(str(e)) from None


class CheckpointDirError(OSError):
    """The checkpoints folder cannot be created or written."""


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
    """(numpy arrays, JSON metadata) that restore the Generation exactly (layouts recomputed).

    Per-token fields are [B, max R] arrays and FCI the Generation's [B, W] array, each written
    by one boolean-mask assignment (no loop per response)."""
    lengths = np.fromiter(map(len, gen.responses), np.int32, len(gen.responses))
    width = max(int(lengths.max(initial=0)), 1)
    valid = np.arange(width) < lengths[:, None]

    def pad(xs, dtype):
        out = np.zeros((len(lengths), width), dtype)
        out[valid] = np.concatenate([np.zeros(0, dtype), *xs], dtype=dtype, casting="unsafe")
        return out

    arrays = {
        "lengths": lengths,
        "responses": pad(gen.responses, np.int32),
        "logprobs": pad(gen.logprobs, np.float32),
    }
    if gen.entropies is not None:
        arrays["entropies"] = pad(gen.entropies, np.float32)
    if gen.fci is not None:  # the one host copy of a device FCI array (fci_host)
        arrays["fci"] = gen.fci_host()
    meta = {"prompts": [prompt_to_json(p) for p in gen.prompts], "version": gen.version}
    return arrays, meta


def generation_from_state(arrays: dict, meta: dict, seps: SeparatorIds) -> Generation:
    """The Generation of `generation_to_state`; one segment_batch for every response's layout.

    "fci" is [B, W] with W >= S_max + 1 and zeros past S_i + 1 in the format of every version
    so far (earlier ones wrote the per-response vectors into the same padded array)."""
    prompts = tuple(problem_from_json(d) for d in meta["prompts"])
    lengths = np.asarray(arrays["lengths"])
    g = len(lengths) // len(prompts)  # before the Generation exists to say so

    def rows(name):
        return tuple(np.asarray(arrays[name][i, :n]) for i, n in enumerate(lengths.tolist()))

    responses = rows("responses")
    prompt_lens = np.array([len(p.prompt_ids) for p in prompts])[np.arange(len(lengths)) // g]
    return Generation(
        prompts=prompts,
        responses=responses,
        logprobs=rows("logprobs"),
        entropies=None if "entropies" not in arrays else rows("entropies"),
        fci=None if "fci" not in arrays else np.asarray(arrays["fci"], np.float32),
        layouts=segment_batch(prompt_lens, responses, seps),
        version=int(meta["version"]),
    )
