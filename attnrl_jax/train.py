"""`python -m attnrl_jax.train --config=configs/demo.py --config.key=value`: train a policy.

The config is validated once, before anything is built or compiled, into a RunConfig
(rl/settings.py) that everything below receives (trainer_build.build_trainer assembles the
Trainer from it; this module is the command line around it); re-running the
same command in the same workdir resumes from the latest complete checkpoint and trains on to
total_steps. Metrics go to <workdir>/metrics.jsonl (one JSON object per step; every line has the
same keys, loss terms are null on a step without an update) and, with log.tensorboard, to
TensorBoard event files in <workdir>/tensorboard. The run's config is saved as
<workdir>/config.json, and at the end the policy is written as a Hugging Face directory to
<workdir>/hf_export (export.py; also from any checkpoint later).

Multi-host: run the same command on every host (launch/); `distributed.*` keys or the
environment say how many processes there are (attnrl_jax/distributed.py), and the job starts
jax.distributed before any other JAX use. The mesh then spans every process's devices; the
workdir must be one directory all hosts see for checkpoints: a shared disk, a bucket mount or a
gs:// URL (attnrl_jax/storage.py; model.path may be one too, copied to a local cache to load).

Failures are one line on stderr (README "Reliability"): exit code 2 for a bad config, data
file, model or path (every config problem listed at once, before anything is loaded), 1 for a
run that cannot go on (no intact checkpoint, a non-finite step), 130 / 143 for SIGINT / SIGTERM
with the checkpoint a re-run resumes from; --debug or ATTNRL_DEBUG=1 shows the traceback.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from attnrl_jax import storage
from attnrl_jax.distributed import DistributedError, initialize
from attnrl_jax.initial_model import initial_model_path, tiny_model_config
from attnrl_jax.rl.settings import ConfigError, check_files, resolve
from attnrl_jax.trainer_build import build_trainer, grade_in_process, load_prompts, make_reward_fn

# Importable from here as before the split (tests, the demo, benchmarks).
__all__ = [
    "build_trainer",
    "check_resume",
    "grade_in_process",
    "initial_model_path",
    "load_prompts",
    "main",
    "make_reward_fn",
    "run",
    "tiny_model_config",
]


RESUME_KEYS = ("seed", "model")  # a workdir's checkpoints hold this run's model and seed


def check_resume(config, workdir: str | Path) -> None:
    """A ConfigError when `workdir` holds checkpoints of a run with another seed or model (its
    config.json says so): resuming would fail or mix runs, and nothing has been written yet."""
    path = storage.path(workdir) / "config.json"
    steps = storage.path(workdir) / "checkpoints"
    if not path.is_file() or not steps.is_dir() or not any(steps.iterdir()):
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return  # unreadable: the checkpoint's own seed check still applies
    new = json.loads(config.to_json())
    differ = []
    for key in RESUME_KEYS:
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            ignore = {"remat", "require_path"}
            differ += [f"{key}.{k}: {a.get(k)!r} -> {b[k]!r}" for k in b
                       if k not in ignore and a.get(k, b[k]) != b[k]]  # fmt: skip
        elif a != b:
            differ.append(f"{key}: {a!r} -> {b!r}")
    if differ:
        raise ConfigError(
            f"{workdir} holds checkpoints of another run ({'; '.join(differ)}); use a new "
            "workdir, or the same values to resume"
        )


def _debug() -> bool:
    from absl import flags

    return bool(flags.FLAGS.debug) or _env_debug()


def _env_debug() -> bool:
    return os.environ.get("ATTNRL_DEBUG", "") not in ("", "0")


def fail(message: str, code: int) -> None:
    """Exits with one line on stderr (process 0 speaks; every process exits)."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def main(argv: Sequence[str]) -> None:
    """The command line: a user error (config, data, model, paths) is one line and exit code 2,
    a failed run (damaged checkpoints, a non-finite step, a failed metrics write) one line and
    exit code 1, SIGINT / SIGTERM one line naming the restore point and 130 / 143. --debug (or
    ATTNRL_DEBUG=1) shows the traceback instead."""
    from absl import logging

    from attnrl_jax.data.sources import DataError
    from attnrl_jax.export import ExportError
    from attnrl_jax.models.hf_io import CheckpointError
    from attnrl_jax.rl.checkpoint import CheckpointDirError
    from attnrl_jax.rl.integrity import DamagedCheckpoint
    from attnrl_jax.rl.interrupt import Interrupted
    from attnrl_jax.rl.metrics_log import MetricsWriteError
    from attnrl_jax.rl.trainer import NonFiniteStep

    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
    user = (ConfigError, DataError, CheckpointError, ExportError, CheckpointDirError)
    # e.g. a peer never arrived, metrics.jsonl not writable on process 0
    failed = (DamagedCheckpoint, NonFiniteStep, DistributedError, MetricsWriteError)
    try:
        _main()
    except Exception as e:
        if _debug():
            raise
        if isinstance(e, Interrupted):
            fail(str(e), e.exit_code)
        if isinstance(e, user):
            fail(str(e), 2)
        if isinstance(e, failed):
            fail(str(e), 1)
        raise
    except KeyboardInterrupt:  # outside the training loop's own handler
        if _debug():
            raise
        fail("interrupted (SIGINT) before training started; nothing was written", 130)


def _main() -> None:
    from absl import flags

    from attnrl_jax.rl.checkpoint import check_writable
    from attnrl_jax.rl.interrupt import Interrupted

    config = flags.FLAGS.config
    c = resolve(config)
    check_files(c)
    check_resume(config, c.workdir)
    check_writable(storage.path(c.workdir))  # fail now, in one line, not in orbax minutes later
    cluster = initialize(c.distributed.to_dict())  # before any other JAX use
    import jax

    from attnrl_jax.export import EXPORT_DIR, check_output, export_policy, save_run_config

    primary = jax.process_index() == 0
    if cluster is not None and primary:
        print(
            f"multi-host: {cluster.num_processes} processes ({cluster.source}), "
            f"{jax.device_count()} devices, coordinator {cluster.coordinator_address}"
        )
    output = storage.path(c.workdir) / EXPORT_DIR
    check_output(output, storage.path(c.workdir), c.initial_model_dir, own=True)
    trainer = build_trainer(c)
    try:
        if primary:  # the run is accepted (resume checks passed): read back by export
            save_run_config(config, c.workdir)
        try:
            trainer.run()
        except Interrupted as e:  # name the restore point
            e.args = (
                f"stopped by {e}; restore point: {trainer.restore_point()} (re-run to resume)",
            )
            raise
        export = export_policy(
            trainer.cfg, trainer.params, trainer.tokenizer, output, initial_model_path(c)
        )
    finally:
        trainer.close()
    if primary:
        metrics = storage.path(c.workdir) / "metrics.jsonl"
        print(f"trained to step {trainer.step}; metrics in {metrics}")
        print(f"the policy as a Hugging Face directory: {export}")


def run() -> None:
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "a config file, e.g. configs/demo.py")
    flags.DEFINE_bool("debug", False, "show tracebacks (also ATTNRL_DEBUG=1)")
    flags.mark_flags_as_required(["config"])
    try:
        app.run(main, flags_parser=_parse_flags)
    except AttributeError as e:  # ml_collections: an override of a key the config lacks
        fail(f"unknown config key: {e}", 2)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a bad flag, config file or variant as one line and exit code 2
    (absl prints the config file's whole traceback and exits 1)."""
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        if "--debug" in argv or _env_debug():
            raise
        lines = [x.strip() for x in str(e).splitlines() if x.strip()]
        fail(f"{lines[0]} {lines[-1]}" if len(lines) > 1 else str(e), 2)


if __name__ == "__main__":
    run()
