"""From an ml_collections config to a validated RunConfig (rl/run_config.py), before anything
compiles.

ml_collections is the user interface (config files, --config.key=value, FILE:VARIANT);
`resolve(config)` checks every value and every combination it can know about without touching
a device or a file, raises one ConfigError listing everything wrong, and otherwise returns a
RunConfig: one tree of frozen dataclasses that every component receives. Nothing reads the
ConfigDict after that (export reads <workdir>/config.json back through resolve). The value
checks of each section are in rl/config_checks.py; `check_files` checks what needs the file
system; rl/devices.py builds the meshes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import ml_collections

from attnrl_jax.rl.ads import ADSConfig
from attnrl_jax.rl.config_checks import (
    check,
    check_distributed,
    check_eval,
    check_paths,
    check_rollout_and_train,
    check_run,
    decode_layout,
    resolve_method,
    split,
)
from attnrl_jax.rl.loss import LossConfig
from attnrl_jax.rl.rollout import RolloutConfig
from attnrl_jax.rl.run_config import (
    CheckpointSection,
    ConfigError,
    DataSection,
    DistributedSection,
    EngineSection,
    EvalSection,
    GradingSection,
    LogSection,
    MeshSection,
    Method,
    ModelSection,
    OptimConfig,
    RunConfig,
    TinyModel,
    TrainSection,
)
from attnrl_jax.scoring.fci import FciConfig
from attnrl_jax.scoring.forward import ScoringConfig
from attnrl_jax.scoring.selection import SelectionConfig

# Importable from here (callers build and read the config through this module).
__all__ = [
    "ConfigError",
    "EvalSection",
    "Method",
    "OptimConfig",
    "RunConfig",
    "check_files",
    "resolve",
]


def raise_all(errors: list[str]) -> None:
    """One ConfigError listing every problem found, one per line; nothing when there is none."""
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(errors))


def _build(errors: list[str], make: Callable):
    """make() or None, its ValueError/TypeError added to errors (so every section is checked)."""
    try:
        return make()
    except (ValueError, TypeError) as e:
        errors.append(str(e))
        return None


def resolve(config: ml_collections.ConfigDict) -> RunConfig:
    """The validated RunConfig of `config`; a ConfigError naming every problem otherwise."""
    errors: list[str] = []
    c = config
    check_run(errors, c)
    check_paths(errors, c)
    check_eval(errors, c.eval)
    method = resolve_method(errors, c)
    check_rollout_and_train(errors, c)
    check_distributed(errors, c.distributed)
    r = c.rollout
    selection = _build(
        errors,
        lambda: SelectionConfig(
            method=method.branching,
            rho=r.rho,
            num_points=r.num_points,
            min_token_distance=r.min_token_distance,
        ),
    )
    ads = _build(
        errors,
        lambda: ADSConfig(
            expansion="exp" if method.difficulty_expansion else "uniform",
            rounding=c.ads.rounding,
            all_correct="attention" if method.attention_filter else "always",
            zero_advantage_filter=c.ads.zero_advantage_filter,
            target_sequences=c.ads.target_sequences,
            batch_lambda=c.ads.batch_lambda,
            initial_prompt_batch_size=c.ads.initial_prompt_batch_size,
        ),
    )
    scoring = _build(
        errors,
        lambda: ScoringConfig(
            with_fci=method.needs_fci,
            fci=FciConfig(c.fci.pooling, c.fci.delta, c.fci.aggregation),
        ),
    )
    loss = _build(
        errors,
        lambda: LossConfig(
            clip_low=c.loss.clip_low,
            clip_high=c.loss.clip_high,
            dual_clip=c.loss.dual_clip or None,
            kl_weight=c.loss.kl_weight,
            entropy_weight=c.loss.entropy_weight,
            tis_cap=c.loss.tis_cap,
        ),
    )
    optim = _build(errors, lambda: OptimConfig(**c.optim.to_dict()))
    if optim is not None:
        check(errors, optim.learning_rate > 0, "optim.learning_rate must be > 0")
        check(errors, optim.grad_clip > 0, "optim.grad_clip must be > 0")
    raise_all(errors)
    rollout = RolloutConfig(
        tree=method.tree,
        group_size=r.group_size,
        continuations=r.continuations,
        max_new_tokens=r.max_new_tokens,
        temperature=r.temperature,
        top_p=r.top_p,
        selection=selection,
        ads=ads,
        scoring=scoring,
        score_batch_size=r.score_batch_size,
        fci_source=r.fci_source,
        merge_duplicates=r.merge_duplicates,
        sampler_rows=r.sampler_rows,
        admit_rows=r.admit_rows,
    )
    m, e = c.model, c.eval
    return RunConfig(
        workdir=c.workdir,
        total_steps=c.total_steps,
        seed=c.seed,
        # off_policy=False, the older switch, still means on-policy whatever off_policy_steps
        off_policy_steps=c.off_policy_steps if c.off_policy else 0,
        method=method,
        model=ModelSection(
            path=m.path,
            dtype=m.dtype,
            param_dtype=m.param_dtype,
            remat=m.remat,
            tiny=TinyModel(
                hidden_size=m.tiny_hidden_size,
                intermediate_size=m.tiny_intermediate_size or 2 * m.tiny_hidden_size,
                layers=m.tiny_layers,
                heads=m.tiny_heads,
                kv_heads=m.tiny_kv_heads,
                vocab_size=m.tiny_vocab_size,
            ),
        ),
        data=DataSection(
            train_files=split(c.data.train_files),
            drop_eval_overlap=c.data.drop_eval_overlap,
            problem_key=c.data.problem_key,
            answer_key=c.data.answer_key,
            max_prompt_len=c.data.max_prompt_len,
            num_demo_problems=c.data.num_demo_problems,
            demo_seed=c.data.demo_seed,
            on_error=c.data.on_error,
        ),
        rollout=rollout,
        loss=loss,
        optim=optim,
        train=TrainSection(
            packing=c.train.packing,
            minibatch_problems=c.train.minibatch_problems,
            microbatch_rows=c.train.microbatch_rows,
            tokens_per_row=c.train.tokens_per_row,
            initial_prompt_batch_size=c.ads.initial_prompt_batch_size,
            on_nonfinite=c.train.on_nonfinite,
        ),
        mesh=MeshSection(**c.mesh.to_dict()),
        checkpoint=CheckpointSection(every=c.checkpoint.every, keep=c.checkpoint.keep),
        eval=EvalSection(
            every=e.every,
            benchmarks=e.benchmarks,
            files=split(e.files),
            k=e.k,
            max_new_tokens=e.max_new_tokens,
            temperature=e.temperature,
            top_p=e.top_p,
            num_problems=e.num_problems,
        ),
        grading=GradingSection(
            workers=c.grading.workers, timeout_s=c.grading.timeout_s, reward=c.grading.reward
        ),
        log=LogSection(progress=c.log.progress, tensorboard=c.log.tensorboard),
        distributed=DistributedSection(**c.distributed.to_dict()),
        engine=EngineSection(decode_layout=decode_layout(r)),
    )


def check_files(run: RunConfig) -> None:
    """What resolve cannot check without touching files: the model directory and the data and
    evaluation files exist. One ConfigError listing every problem."""
    errors = []
    if run.model.path:
        from attnrl_jax import storage

        path = storage.path(run.model.path)
        check(
            errors,
            (path / "config.json").is_file(),
            f"model.path={run.model.path!r}: "
            + ("no config.json there (not a Hugging Face model directory)" if path.is_dir()
               else "no such directory"),
        )  # fmt: skip
    files = () if run.data.demo else run.data.train_files
    for key, names in (("data.train_files", files), ("eval.files", run.eval.files)):
        for name in names:
            check(errors, Path(name).exists(), f"{key}: {name}: no such file or directory")
    raise_all(errors)
