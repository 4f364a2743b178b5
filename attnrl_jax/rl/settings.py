"""From an ml_collections config to validated, frozen settings, before anything compiles.

`resolve(config)` checks every value and every combination it can know about without touching a
device or a file, and raises one ConfigError listing everything wrong. Methods (ALGORITHM.md
section 3 and the paper's Table 2):

| method | branching default | ADS | tree |
|---|---|---|---|
| attnrl | atb | expansion count, attention filter, adaptive batch size (each a switch) | yes |
| treerl | entropy | none: every response expanded, fixed prompt batch size | yes |
| grpo | none | none | no: group-normalised outcome advantages |

The Table 2 ablations: `method=treerl branching=atb` (TreeRL + ATB), `ads.attention_filter=False`,
`ads.difficulty_expansion=False`.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_collections

from attnrl_jax.eval.benchmarks import parse_benchmarks
from attnrl_jax.rl.ads import ADSConfig
from attnrl_jax.rl.loss import LossConfig
from attnrl_jax.rl.packed import PACKINGS
from attnrl_jax.rl.rollout import FCI_SOURCES, RolloutConfig
from attnrl_jax.scoring.fci import FciConfig
from attnrl_jax.scoring.forward import ScoringConfig
from attnrl_jax.scoring.selection import SELECTORS, SelectionConfig

METHODS = {"attnrl": "atb", "treerl": "entropy", "grpo": "none"}


class ConfigError(ValueError):
    """A config value or combination the trainer cannot run."""


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with global-norm clipping (hashable: static in the jitted update)."""

    learning_rate: float = 1e-6
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    b1: float = 0.9
    b2: float = 0.999


@dataclass(frozen=True)
class Settings:
    rollout: RolloutConfig
    loss: LossConfig
    optim: OptimConfig
    packing: str
    minibatch_problems: int
    microbatch_rows: int
    adaptive_batch_size: bool
    initial_prompt_batch_size: int


def _check(errors: list[str], ok: bool, message: str) -> None:
    if not ok:
        errors.append(message)


def _check_eval(errors: list[str], e: ml_collections.ConfigDict) -> None:
    """Evaluation values (eval.files are read, and checked, when the trainer starts)."""
    _check(errors, e.every >= 0, f"eval.every must be >= 0 (0: off), got {e.every}")
    if e.every > 0:
        _check(
            errors,
            bool(e.benchmarks.strip() or e.files.strip()),
            "eval.every > 0 needs eval.benchmarks or eval.files",
        )
    _check(errors, e.k >= 1, f"eval.k must be >= 1, got {e.k}")
    _check(errors, e.max_new_tokens >= 1, "eval.max_new_tokens must be >= 1")
    _check(errors, e.temperature >= 0, f"eval.temperature must be >= 0, got {e.temperature}")
    _check(errors, 0 < e.top_p <= 1, f"eval.top_p must be in (0, 1], got {e.top_p}")
    _check(errors, e.num_problems >= 0, "eval.num_problems must be >= 0 (0: all)")
    try:
        parse_benchmarks(e.benchmarks, max(e.k, 1))
    except ValueError as err:
        errors.append(f"eval.benchmarks: {err}")


def _check_distributed(errors: list[str], d: ml_collections.ConfigDict) -> None:
    from attnrl_jax.distributed import MODES, DistributedError, split_address

    _check(errors, d.mode in MODES, f"distributed.mode={d.mode!r}; known: {list(MODES)}")
    if d.coordinator_address:
        try:
            split_address(d.coordinator_address)
        except DistributedError as e:
            errors.append(f"distributed.{e}")
    _check(errors, d.num_processes >= 0, "distributed.num_processes must be >= 0 (0: unset)")
    _check(errors, d.process_id >= -1, "distributed.process_id must be >= -1 (-1: unset)")
    if d.num_processes > 0:
        _check(
            errors,
            d.process_id < d.num_processes,
            f"distributed.process_id={d.process_id} must be < num_processes={d.num_processes}",
        )
    _check(errors, 0 <= d.port < 65536, f"distributed.port={d.port} must be in 0..65535")
    _check(
        errors,
        d.initialization_timeout_s > 0,
        f"distributed.initialization_timeout_s must be > 0, got {d.initialization_timeout_s}",
    )


def resolve(config: ml_collections.ConfigDict) -> Settings:
    """Validated settings; a ConfigError naming every problem otherwise."""
    errors: list[str] = []
    c = config
    _check(errors, bool(c.workdir), "workdir is required (--config.workdir=/path)")
    _check(errors, c.total_steps >= 1, f"total_steps must be >= 1, got {c.total_steps}")
    _check(
        errors,
        bool(c.model.path) or not c.model.require_path,
        "model.path is required by this config (a local Hugging Face checkpoint directory, "
        "e.g. --config.model.path=/models/DeepSeek-R1-Distill-Qwen-1.5B; nothing is downloaded)",
    )
    _check(
        errors,
        bool(c.data.train_files.strip()),
        "data.train_files is required: comma-separated data files (JSONL, JSON, Parquet, HF or "
        "TFDS directories) or 'demo' (--config.data.train_files=/data/train.parquet)",
    )
    _check_eval(errors, c.eval)
    _check(errors, c.method in METHODS, f"method={c.method!r}; known: {sorted(METHODS)}")
    branching = c.branching or METHODS.get(c.method, "none")
    _check(errors, branching in SELECTORS, f"branching={branching!r}; known: {sorted(SELECTORS)}")
    if c.method == "grpo":
        _check(errors, branching == "none", f"method=grpo has no tree; branching={branching!r}")
    elif c.method in METHODS:
        _check(errors, branching != "none", f"method={c.method} needs branching, got 'none'")
    r = c.rollout
    _check(errors, r.group_size >= 2, f"rollout.group_size must be >= 2, got {r.group_size}")
    _check(errors, r.continuations >= 1, "rollout.continuations must be >= 1")
    _check(errors, r.max_new_tokens >= 1, "rollout.max_new_tokens must be >= 1")
    # Greedy sampling (0) would give G identical responses and no defined behaviour policy.
    _check(errors, r.temperature > 0, f"rollout.temperature must be > 0, got {r.temperature}")
    _check(errors, r.sampler_rows >= 1, "rollout.sampler_rows must be >= 1")
    _check(
        errors,
        r.fci_source in FCI_SOURCES,
        f"rollout.fci_source={r.fci_source!r}; known: {list(FCI_SOURCES)}",
    )
    mb, micro = c.train.minibatch_problems, c.train.microbatch_rows
    _check(errors, mb >= 1 and micro >= 1, "train.minibatch_problems and microbatch_rows >= 1")
    _check(errors, c.train.packing in PACKINGS, f"train.packing must be one of {PACKINGS}")
    shards = max(c.mesh.data, 1) * max(c.mesh.fsdp, 1)
    if c.mesh.data > 0 and c.mesh.fsdp > 0:
        _check(
            errors,
            micro % shards == 0,
            f"train.microbatch_rows={micro} must be a multiple of mesh data x fsdp = {shards}",
        )
    _check_distributed(errors, c.distributed)
    ads_on = c.method == "attnrl"
    attention = ads_on and c.ads.attention_filter
    try:
        selection = SelectionConfig(
            method=branching if branching in SELECTORS else "none",
            rho=r.rho,
            num_points=r.num_points,
            min_token_distance=r.min_token_distance,
        )
        ads = ADSConfig(
            expansion="exp" if ads_on and c.ads.difficulty_expansion else "uniform",
            rounding=c.ads.rounding,
            all_correct="attention" if attention else "always",
            zero_advantage_filter=c.ads.zero_advantage_filter,
            target_sequences=c.ads.target_sequences,
            batch_lambda=c.ads.batch_lambda,
            initial_prompt_batch_size=c.ads.initial_prompt_batch_size,
        )
        scoring = ScoringConfig(
            with_fci=branching == "atb" or attention,
            fci=FciConfig(c.fci.pooling, c.fci.delta, c.fci.aggregation),
        )
        loss = LossConfig(
            clip_low=c.loss.clip_low,
            clip_high=c.loss.clip_high,
            dual_clip=c.loss.dual_clip or None,
            kl_weight=c.loss.kl_weight,
            entropy_weight=c.loss.entropy_weight,
        )
        optim = OptimConfig(**c.optim.to_dict())
        _check(errors, optim.learning_rate > 0, "optim.learning_rate must be > 0")
        _check(errors, optim.grad_clip > 0, "optim.grad_clip must be > 0")
    except (ValueError, TypeError) as e:
        errors.append(str(e))
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(errors))
    rollout = RolloutConfig(
        tree=c.method != "grpo",
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
    )
    return Settings(
        rollout=rollout,
        loss=loss,
        optim=optim,
        packing=c.train.packing,
        minibatch_problems=mb,
        microbatch_rows=micro,
        adaptive_batch_size=ads_on and c.ads.adaptive_batch_size,
        initial_prompt_batch_size=c.ads.initial_prompt_batch_size,
    )
