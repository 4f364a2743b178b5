"""`python -m attnrl_jax.train --config=configs/demo.py --config.key=value`: train a policy.

The config is validated once, before anything is built or compiled, into a RunConfig
(rl/settings.py) that everything below receives; re-running the
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

import dataclasses
import functools
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import ml_collections
import numpy as np

from attnrl_jax import storage
from attnrl_jax.distributed import DistributedError, initialize
from attnrl_jax.rl.devices import build_mesh
from attnrl_jax.rl.settings import ConfigError, RunConfig, check_files, resolve


def tiny_model_config(run: RunConfig, vocab_size: int):
    """The ModelConfig of the project's tiny random Qwen2 (run.model.tiny)."""
    from attnrl_jax.models.config import ModelConfig

    t = run.model.tiny
    return ModelConfig(
        vocab_size=vocab_size,
        hidden_size=t.hidden_size,
        intermediate_size=t.intermediate_size,
        num_layers=t.layers,
        num_heads=t.heads,
        num_kv_heads=t.kv_heads,
        head_dim=t.hidden_size // t.heads,
        tie_word_embeddings=True,
        max_position_embeddings=4096,
        dtype=run.model.dtype,
        param_dtype=run.model.param_dtype,
    )


def initial_model_path(c: RunConfig) -> Path:
    """The local HF directory to start from: config.model.path, or the project's tiny random
    model written once to <workdir>/initial_model (seeded by config.seed); a gs:// one is copied
    to a local cache (storage.local_copy)."""
    path = c.initial_model_dir
    if c.model.path:
        return storage.local_copy(path)
    import jax

    if jax.process_index() == 0 and not (path / "config.json").exists():
        _write_tiny_model(c, path)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("attnrl_jax.train initial_model")
        if not (path / "config.json").exists():  # a workdir not shared between hosts
            _write_tiny_model(c, path)
    return storage.local_copy(path)


def _write_tiny_model(c: RunConfig, path: Path) -> None:
    import jax
    from flax import nnx

    from attnrl_jax.data.tokenizer import build_tiny_tokenizer
    from attnrl_jax.models import CausalLM, save_pretrained

    tokenizer = build_tiny_tokenizer(c.model.tiny.vocab_size)
    cfg = tiny_model_config(c, len(tokenizer))
    with jax.default_device(jax.local_devices(backend="cpu")[0]):
        model = CausalLM(cfg, rngs=nnx.Rngs(c.seed))
    if not storage.is_remote(path):
        save_pretrained(model, path, tokenizer=tokenizer, overwrite=True)
        return
    with tempfile.TemporaryDirectory() as tmp:  # config.json, read first, is uploaded last
        save_pretrained(model, Path(tmp) / "model", tokenizer=tokenizer)
        storage.upload_dir(Path(tmp) / "model", path, marker="config.json")


def load_prompts(c: RunConfig, tokenizer):
    if c.data.demo:
        from attnrl_jax.data.builtin_tasks import builtin_task

        task = builtin_task(c.data.builtin_task)
        return task.prompts(tokenizer, c.data.num_demo_problems, seed=c.data.demo_seed)
    from attnrl_jax.data import SourceSpec, prepare_prompts

    specs = [
        SourceSpec(p, problem_key=c.data.problem_key, answer_key=c.data.answer_key)
        for p in c.data.train_files
    ]
    eval_sets = None
    if c.data.drop_eval_overlap:
        from attnrl_jax.eval.benchmarks import eval_source_specs

        eval_sets = eval_source_specs(",".join(c.eval.files), c.data.problem_key, c.data.answer_key)
    prompts, report = prepare_prompts(
        specs,
        tokenizer,
        max_prompt_len=c.data.max_prompt_len,
        eval_sets=eval_sets,
        on_error=c.data.on_error,
    )
    import jax

    if jax.process_index() == 0:  # what was kept and dropped, and why
        for line in report.lines():
            print(f"data: {line}", file=sys.stderr)
    return prompts


def grade_in_process(
    texts: Sequence[str], golds: Sequence[tuple[str, ...]], reward: str = "hybrid"
) -> np.ndarray:
    from attnrl_jax.rewards.math import grade

    pairs = zip(texts, golds, strict=True)
    return np.array([grade(t, list(g), reward=reward).correct for t, g in pairs], float)


def make_grader(c: RunConfig):
    """A pool of c.grading.workers grading processes with a per-item deadline of
    c.grading.timeout_s, or None when workers is 0 (grade in-process)."""
    if c.grading.workers <= 0:
        return None
    from attnrl_jax.rewards.batch import Grader

    return Grader(
        timeout_s=c.grading.timeout_s, num_workers=c.grading.workers, reward=c.grading.reward
    )


def pool_reward_fn(grader):
    def reward_fn(texts: Sequence[str], golds: Sequence[tuple[str, ...]]) -> np.ndarray:
        return np.array([r.correct for r in grader.grade(texts, golds).results], float)

    return reward_fn


def make_reward_fn(c: RunConfig):
    """(reward_fn, close): the math grader, in a worker pool (make_grader; close stops it) or
    in-process when workers is 0 (close does nothing). Both give the same verdicts; the pool
    bounds slow items."""
    grader = make_grader(c)
    if grader is None:
        return functools.partial(grade_in_process, reward=c.grading.reward), lambda: None
    return pool_reward_fn(grader), grader.close


def build_trainer(
    config: RunConfig | ml_collections.ConfigDict, reward_fn=None, log_fn=None, engine=None
):
    """A Trainer for `config` (a ConfigDict is validated first); reward_fn defaults to the math
    grader (make_reward_fn). Metrics go to log_fn too and, with log.tensorboard, to
    TensorBoard; Trainer.close() stops the grading pool, the TensorBoard writer and the engine.
    engine: a sampling.engine.RolloutEngine for the initial model (default: the native sampler;
    it receives the trainer's params before the first step and after every update)."""
    c = config if isinstance(config, RunConfig) else resolve(config)
    check_files(c)
    import jax
    from transformers import AutoTokenizer

    from attnrl_jax.models import load_pretrained
    from attnrl_jax.rl.trainer import Trainer
    from attnrl_jax.sampling.eos import eos_ids

    mesh = build_mesh(c)
    path = initial_model_path(c)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = load_pretrained(path, dtype=c.model.dtype, mesh=mesh, param_dtype=c.model.param_dtype)
    model_cfg = dataclasses.replace(model.config, remat=c.model.remat)
    eos = eos_ids(tokenizer, path, model.config.eos_token_id)
    prompts = load_prompts(c, tokenizer)
    closers = []
    grader = make_grader(c) if reward_fn is None or c.eval.every > 0 else None
    if grader is not None:
        closers.append(grader.close)
    if reward_fn is None:
        reward_fn = make_reward_fn(c)[0] if grader is None else pool_reward_fn(grader)
    eval_fn = None
    if c.eval.every > 0:
        from attnrl_jax.eval.run import in_process_grader, pool_grader
        from attnrl_jax.eval.training import training_eval_fn

        in_process = functools.partial(in_process_grader, reward=c.grading.reward)
        grade_fn = in_process if grader is None else pool_grader(grader)
        eval_fn = training_eval_fn(c, tokenizer, eos, grade_fn)
    loggers = [log_fn] if log_fn is not None else []
    if c.log.tensorboard and jax.process_index() == 0:
        board = tensorboard_logger(c.workdir)
        if board is not None:
            loggers.append(board)
            closers.append(board.close)

    def log_all(metrics: dict) -> None:
        for log in loggers:
            log(metrics)

    def close_all() -> None:
        for close in closers:
            close()

    try:
        return Trainer(
            c,
            model_cfg=model_cfg,
            params=model.params(),
            mesh=mesh,
            tokenizer=tokenizer,
            prompts=prompts,
            reward_fn=reward_fn,
            engine=engine,
            eos_ids=eos,
            log_fn=log_all,
            on_close=close_all,
            eval_fn=eval_fn,
        )
    except BaseException:  # do not leave grading workers behind
        close_all()
        raise


class TensorBoardLogger:
    """Writes each step's numeric metrics as scalars to <workdir>/tensorboard (tensorboardX:
    TensorBoard's own writers need TensorFlow, which this project does not install). Metrics
    that are None (loss terms on a step without an update) are skipped.

    The writer opens at the first step logged, with purge_step = that step: after a resume,
    TensorBoard drops the points a previous process wrote for this step and later ones (logged
    before it was stopped, not kept by the checkpoint), so no step has two points."""

    def __init__(self, workdir: str | Path, every_s: float = 10.0):
        self.directory = storage.path(workdir) / "tensorboard"
        self.writer = None
        # gs://: events go to a local folder whose files are uploaded whole (object storage has
        # no append) at most every every_s seconds and at close
        self.remote = storage.is_remote(self.directory)
        self.local = Path(tempfile.mkdtemp(prefix="tensorboard-")) if self.remote else None
        self.every_s = every_s if self.remote else 0.0
        self._flushed = 0.0

    def __call__(self, metrics: dict) -> None:
        if self.writer is None:
            from tensorboardX import SummaryWriter

            where = self.local if self.remote else self.directory
            self.writer = SummaryWriter(str(where), purge_step=metrics["step"])
        for k, v in metrics.items():
            if k != "step" and isinstance(v, int | float) and not isinstance(v, bool):
                self.writer.add_scalar(k, v, metrics["step"])
        if time.monotonic() - self._flushed >= self.every_s:
            self.flush()

    def flush(self) -> None:
        if self.writer is None:
            return
        self.writer.flush()
        self._flushed = time.monotonic()
        self._upload()

    def _upload(self) -> None:
        if self.remote:
            for event_file in self.local.iterdir():  # one per writer: this run's
                (self.directory / event_file.name).write_bytes(event_file.read_bytes())

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self._upload()
        if self.local is not None:
            shutil.rmtree(self.local, ignore_errors=True)


def tensorboard_logger(workdir: str | Path) -> TensorBoardLogger | None:
    """A TensorBoardLogger, or None (with a note) when tensorboardX is not installed."""
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        print("TensorBoard: tensorboardX is not installed; metrics go to metrics.jsonl only")
        return None
    return TensorBoardLogger(workdir)


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
    a failed run (damaged checkpoints, a non-finite step) one line and exit code 1, SIGINT /
    SIGTERM one line naming the restore point and 130 / 143. --debug (or ATTNRL_DEBUG=1) shows
    the traceback instead."""
    from absl import logging

    from attnrl_jax.data.sources import DataError
    from attnrl_jax.export import ExportError
    from attnrl_jax.models.hf_io import CheckpointError
    from attnrl_jax.rl.checkpoint import CheckpointDirError
    from attnrl_jax.rl.integrity import DamagedCheckpoint
    from attnrl_jax.rl.interrupt import Interrupted
    from attnrl_jax.rl.trainer import NonFiniteStep

    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
    user = (ConfigError, DataError, CheckpointError, ExportError, CheckpointDirError)
    failed = (DamagedCheckpoint, NonFiniteStep, DistributedError)  # e.g. a peer never arrived
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
