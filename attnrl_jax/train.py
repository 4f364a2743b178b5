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
workdir must be one directory all hosts see (shared disk or a bucket mount) for checkpoints.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

import ml_collections
import numpy as np

from attnrl_jax.distributed import DistributedError, initialize
from attnrl_jax.rl.settings import ConfigError, RunConfig, build_mesh, resolve


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
    """The HF directory to start from: config.model.path, or the project's tiny random model
    written once to <workdir>/initial_model (seeded by config.seed)."""
    path = c.initial_model_dir
    if c.model.path:
        return path
    import jax

    if jax.process_index() == 0 and not (path / "config.json").exists():
        _write_tiny_model(c, path)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("attnrl_jax.train initial_model")
        if not (path / "config.json").exists():  # a workdir not shared between hosts
            _write_tiny_model(c, path)
    return path


def _write_tiny_model(c: RunConfig, path: Path) -> None:
    import jax
    from flax import nnx

    from attnrl_jax.data.tokenizer import build_tiny_tokenizer
    from attnrl_jax.models import CausalLM, save_pretrained

    tokenizer = build_tiny_tokenizer(c.model.tiny.vocab_size)
    cfg = tiny_model_config(c, len(tokenizer))
    with jax.default_device(jax.local_devices(backend="cpu")[0]):
        model = CausalLM(cfg, rngs=nnx.Rngs(c.seed))
    save_pretrained(model, path, tokenizer=tokenizer, overwrite=True)


def load_prompts(c: RunConfig, tokenizer):
    if c.data.demo:
        from attnrl_jax.data.demo_task import demo_prompts

        return demo_prompts(tokenizer, c.data.num_demo_problems, seed=c.data.demo_seed)
    from attnrl_jax.data import SourceSpec, prepare_prompts

    specs = [
        SourceSpec(p, problem_key=c.data.problem_key, answer_key=c.data.answer_key)
        for p in c.data.train_files
    ]
    eval_sets = None
    if c.data.drop_eval_overlap:
        from attnrl_jax.eval.benchmarks import eval_source_specs

        eval_sets = eval_source_specs(",".join(c.eval.files), c.data.problem_key, c.data.answer_key)
    return prepare_prompts(
        specs, tokenizer, max_prompt_len=c.data.max_prompt_len, eval_sets=eval_sets
    )[0]


def grade_in_process(texts: Sequence[str], golds: Sequence[tuple[str, ...]]) -> np.ndarray:
    from attnrl_jax.rewards.math import grade

    return np.array([grade(t, list(g)).correct for t, g in zip(texts, golds, strict=True)], float)


def make_grader(c: RunConfig):
    """A pool of c.grading.workers grading processes with a per-item deadline of
    c.grading.timeout_s, or None when workers is 0 (grade in-process)."""
    if c.grading.workers <= 0:
        return None
    from attnrl_jax.rewards.batch import Grader

    return Grader(timeout_s=c.grading.timeout_s, num_workers=c.grading.workers)


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
        return grade_in_process, lambda: None
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
        reward_fn = grade_in_process if grader is None else pool_reward_fn(grader)
    eval_fn = None
    if c.eval.every > 0:
        from attnrl_jax.eval.run import in_process_grader, pool_grader
        from attnrl_jax.eval.training import training_eval_fn

        grade_fn = in_process_grader if grader is None else pool_grader(grader)
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
    that are None (loss terms on a step without an update) are skipped."""

    def __init__(self, workdir: str | Path):
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(str(Path(workdir) / "tensorboard"))

    def __call__(self, metrics: dict) -> None:
        for k, v in metrics.items():
            if k != "step" and isinstance(v, int | float) and not isinstance(v, bool):
                self.writer.add_scalar(k, v, metrics["step"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def tensorboard_logger(workdir: str | Path) -> TensorBoardLogger | None:
    """A TensorBoardLogger, or None (with a note) when tensorboardX is not installed."""
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        print("TensorBoard: tensorboardX is not installed; metrics go to metrics.jsonl only")
        return None
    return TensorBoardLogger(workdir)


def main(argv: Sequence[str]) -> None:
    from absl import flags, logging

    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
    config = flags.FLAGS.config
    try:
        c = resolve(config)
        cluster = initialize(c.distributed.to_dict())  # before any other JAX use
    except (ConfigError, DistributedError) as e:
        sys.exit(str(e))
    import jax

    from attnrl_jax.export import EXPORT_DIR, export_policy, save_run_config

    primary = jax.process_index() == 0
    if cluster is not None and primary:
        print(
            f"multi-host: {cluster.num_processes} processes ({cluster.source}), "
            f"{jax.device_count()} devices, coordinator {cluster.coordinator_address}"
        )
    if primary:
        save_run_config(config, c.workdir)  # read back by `python -m attnrl_jax.export`
    trainer = build_trainer(c)
    try:
        trainer.run()
        export = export_policy(
            trainer.cfg, trainer.params, trainer.tokenizer, Path(c.workdir) / EXPORT_DIR,
            initial_model_path(c),
        )  # fmt: skip
    finally:
        trainer.close()
    if primary:
        print(f"trained to step {trainer.step}; metrics in {Path(c.workdir) / 'metrics.jsonl'}")
        print(f"the policy as a Hugging Face directory: {export}")


def run() -> None:
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "a config file, e.g. configs/demo.py")
    flags.mark_flags_as_required(["config"])
    try:
        app.run(main)
    except AttributeError as e:  # ml_collections: an override of a key the config lacks
        sys.exit(f"unknown config key: {e}")


if __name__ == "__main__":
    run()
