"""The run's configuration: an ml_collections config validated ONCE into frozen dataclasses.

ml_collections is the user interface (config files, --config.key=value, FILE:VARIANT);
`resolve(config)` checks every value and every combination it can know about without touching
a device or a file, raises one ConfigError listing everything wrong, and otherwise returns a
RunConfig: one tree of frozen dataclasses that every component receives. Nothing reads the
ConfigDict after that (export reads <workdir>/config.json back through resolve).

What each method means is written once, in METHODS and `Method` (ALGORITHM.md section 3 and the
paper's Table 2):

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
from pathlib import Path

import ml_collections

from attnrl_jax.eval.benchmarks import parse_benchmarks
from attnrl_jax.models.config import DTYPES
from attnrl_jax.rl.ads import ADSConfig
from attnrl_jax.rl.loss import LossConfig
from attnrl_jax.rl.packed import PACKINGS
from attnrl_jax.rl.rollout import FCI_SOURCES, RolloutConfig
from attnrl_jax.scoring.fci import FciConfig
from attnrl_jax.scoring.forward import ScoringConfig
from attnrl_jax.scoring.selection import SELECTORS, SelectionConfig


class ConfigError(ValueError):
    """A config value or combination the trainer cannot run."""


@dataclass(frozen=True)
class MethodSpec:
    """A method's fixed meaning: its default branching rule, whether it builds trees, whether
    ADS (difficulty expansion, attention filter, adaptive batch size) applies."""

    default_branching: str
    tree: bool
    ads: bool


METHODS = {
    "attnrl": MethodSpec(default_branching="atb", tree=True, ads=True),
    "treerl": MethodSpec(default_branching="entropy", tree=True, ads=False),
    "grpo": MethodSpec(default_branching="none", tree=False, ads=False),
}


@dataclass(frozen=True)
class Method:
    """The chosen method with its switches resolved: what the rollout must compute follows."""

    name: str
    branching: str  # a scoring.selection.SELECTORS name
    difficulty_expansion: bool  # ADS switches, all False unless the method has ADS
    attention_filter: bool
    adaptive_batch_size: bool

    @property
    def tree(self) -> bool:
        return METHODS[self.name].tree

    @property
    def needs_fci(self) -> bool:
        """ATB branching and the attention filter read FCI of the initial responses."""
        return self.branching == "atb" or self.attention_filter

    @property
    def needs_entropies(self) -> bool:
        return self.branching == "entropy"


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with global-norm clipping (hashable: static in the jitted update)."""

    learning_rate: float = 1e-6
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    b1: float = 0.9
    b2: float = 0.999


@dataclass(frozen=True)
class TinyModel:
    """The project's tiny random Qwen2 (used when model.path is empty)."""

    hidden_size: int
    intermediate_size: int  # already resolved (0 in the config: 2 x hidden_size)
    layers: int
    heads: int
    kv_heads: int
    vocab_size: int


@dataclass(frozen=True)
class ModelSection:
    path: str  # a Hugging Face directory; "" builds the tiny random model
    dtype: str  # computation (activations, matmuls)
    param_dtype: str  # storage of the weights the optimizer updates (and of AdamW's moments)
    remat: bool
    tiny: TinyModel


@dataclass(frozen=True)
class DataSection:
    train_files: tuple[str, ...]  # ("demo",) for the built-in arithmetic task
    drop_eval_overlap: bool
    problem_key: str
    answer_key: str
    max_prompt_len: int
    num_demo_problems: int
    demo_seed: int

    @property
    def demo(self) -> bool:
        return self.train_files == ("demo",)


@dataclass(frozen=True)
class TrainSection:
    packing: str
    minibatch_problems: int
    microbatch_rows: int
    tokens_per_row: int  # > 0: padding-free rows of this many tokens (rl/packed.pack_rows)
    initial_prompt_batch_size: int


@dataclass(frozen=True)
class MeshSection:
    data: int
    fsdp: int
    tensor: int


@dataclass(frozen=True)
class CheckpointSection:
    every: int
    keep: int


@dataclass(frozen=True)
class EvalSection:
    """Evaluation during training (0: off); benchmarks as parse_benchmarks reads them."""

    every: int
    benchmarks: str
    files: tuple[str, ...]
    k: int
    max_new_tokens: int
    temperature: float
    top_p: float
    num_problems: int


@dataclass(frozen=True)
class GradingSection:
    workers: int  # 0: grade in-process
    timeout_s: float


@dataclass(frozen=True)
class LogSection:
    progress: bool
    tensorboard: bool


@dataclass(frozen=True)
class DistributedSection:
    """distributed.initialize's keys (see attnrl_jax/distributed.py)."""

    mode: str
    coordinator_address: str
    num_processes: int
    process_id: int
    port: int
    initialization_timeout_s: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class RunConfig:
    """Everything a training run reads, validated (see the module docstring)."""

    workdir: str
    total_steps: int
    seed: int
    off_policy: bool  # one sampler call per step; False: the on-policy two-call variant
    method: Method
    model: ModelSection
    data: DataSection
    rollout: RolloutConfig  # eos_ids are filled in by the trainer (sampling/eos.py)
    loss: LossConfig
    optim: OptimConfig
    train: TrainSection
    mesh: MeshSection
    checkpoint: CheckpointSection
    eval: EvalSection
    grading: GradingSection
    log: LogSection
    distributed: DistributedSection

    @property
    def initial_model_dir(self) -> Path:
        """The Hugging Face directory training starts from: model.path, or the tiny random
        model that training writes to <workdir>/initial_model."""
        return Path(self.model.path) if self.model.path else Path(self.workdir) / "initial_model"


def _check(errors: list[str], ok: bool, message: str) -> None:
    if not ok:
        errors.append(message)


def _split(value: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in value.split(",") if p.strip())


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


def _check_run(errors: list[str], c: ml_collections.ConfigDict) -> None:
    """Values that need no other section."""
    _check(errors, bool(c.workdir), "workdir is required (--config.workdir=/path)")
    _check(errors, c.total_steps >= 1, f"total_steps must be >= 1, got {c.total_steps}")
    _check(
        errors,
        bool(c.model.path) or not c.model.require_path,
        "model.path is required by this config (a local Hugging Face checkpoint directory, "
        "e.g. --config.model.path=/models/DeepSeek-R1-Distill-Qwen-1.5B; nothing is downloaded)",
    )
    for key in ("dtype", "param_dtype"):
        value = c.model[key]
        _check(errors, value in DTYPES, f"model.{key}={value!r}; known: {sorted(DTYPES)}")
    _check(
        errors,
        c.model.param_dtype == "float32" or c.model.param_dtype == c.model.dtype,
        "model.param_dtype below float32 only with the same dtype (AdamW at lr 1e-6 rounds "
        "most updates of bfloat16 weights away)",
    )
    _check(
        errors,
        bool(c.data.train_files.strip()),
        "data.train_files is required: comma-separated data files (JSONL, JSON, Parquet, HF or "
        "TFDS directories) or 'demo' (--config.data.train_files=/data/train.parquet)",
    )
    _check(errors, c.checkpoint.every >= 1, "checkpoint.every must be >= 1")
    _check(errors, c.checkpoint.keep >= 1, "checkpoint.keep must be >= 1")
    _check(errors, c.grading.workers >= 0, "grading.workers must be >= 0 (0: in-process)")
    _check(errors, c.grading.timeout_s > 0, "grading.timeout_s must be > 0")


def _method(errors: list[str], c: ml_collections.ConfigDict) -> Method:
    _check(errors, c.method in METHODS, f"method={c.method!r}; known: {sorted(METHODS)}")
    spec = METHODS.get(c.method)
    branching = c.branching or (spec.default_branching if spec else "none")
    _check(errors, branching in SELECTORS, f"branching={branching!r}; known: {sorted(SELECTORS)}")
    if spec is not None and not spec.tree:
        _check(
            errors, branching == "none", f"method={c.method} has no tree; branching={branching!r}"
        )
    elif spec is not None:
        _check(errors, branching != "none", f"method={c.method} needs branching, got 'none'")
    ads_on = spec is not None and spec.ads
    return Method(
        name=c.method if spec else "grpo",
        branching=branching if branching in SELECTORS else "none",
        difficulty_expansion=ads_on and c.ads.difficulty_expansion,
        attention_filter=ads_on and c.ads.attention_filter,
        adaptive_batch_size=ads_on and c.ads.adaptive_batch_size,
    )


def _check_rollout_and_train(errors: list[str], c: ml_collections.ConfigDict) -> None:
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
    # The longest row: a path through a continuation holds the prompt, a response prefix and
    # a continuation of up to max_new_tokens each; a tree-packed row every segment once.
    spec = METHODS.get(c.method)
    tree = spec is None or spec.tree
    news = 1 + (r.num_points * r.continuations if c.train.packing == "tree" else 1) if tree else 1
    budget, longest = c.train.tokens_per_row, c.data.max_prompt_len + news * r.max_new_tokens
    _check(
        errors,
        budget == 0 or budget >= longest,
        f"train.tokens_per_row={budget} is smaller than the longest row (data.max_prompt_len + "
        f"{news} x rollout.max_new_tokens = {longest}); 0 turns packing off",
    )
    shards = max(c.mesh.data, 1) * max(c.mesh.fsdp, 1)
    if c.mesh.data > 0 and c.mesh.fsdp > 0:
        _check(
            errors,
            micro % shards == 0,
            f"train.microbatch_rows={micro} must be a multiple of mesh data x fsdp = {shards}",
        )


def resolve(config: ml_collections.ConfigDict) -> RunConfig:
    """The validated RunConfig of `config`; a ConfigError naming every problem otherwise."""
    errors: list[str] = []
    c = config
    _check_run(errors, c)
    _check_eval(errors, c.eval)
    method = _method(errors, c)
    _check_rollout_and_train(errors, c)
    _check_distributed(errors, c.distributed)
    r = c.rollout
    try:
        selection = SelectionConfig(
            method=method.branching,
            rho=r.rho,
            num_points=r.num_points,
            min_token_distance=r.min_token_distance,
        )
        ads = ADSConfig(
            expansion="exp" if method.difficulty_expansion else "uniform",
            rounding=c.ads.rounding,
            all_correct="attention" if method.attention_filter else "always",
            zero_advantage_filter=c.ads.zero_advantage_filter,
            target_sequences=c.ads.target_sequences,
            batch_lambda=c.ads.batch_lambda,
            initial_prompt_batch_size=c.ads.initial_prompt_batch_size,
        )
        scoring = ScoringConfig(
            with_fci=method.needs_fci,
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
    )
    m, e = c.model, c.eval
    return RunConfig(
        workdir=c.workdir,
        total_steps=c.total_steps,
        seed=c.seed,
        off_policy=c.off_policy,
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
            train_files=_split(c.data.train_files),
            drop_eval_overlap=c.data.drop_eval_overlap,
            problem_key=c.data.problem_key,
            answer_key=c.data.answer_key,
            max_prompt_len=c.data.max_prompt_len,
            num_demo_problems=c.data.num_demo_problems,
            demo_seed=c.data.demo_seed,
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
        ),
        mesh=MeshSection(**c.mesh.to_dict()),
        checkpoint=CheckpointSection(every=c.checkpoint.every, keep=c.checkpoint.keep),
        eval=EvalSection(
            every=e.every,
            benchmarks=e.benchmarks,
            files=_split(e.files),
            k=e.k,
            max_new_tokens=e.max_new_tokens,
            temperature=e.temperature,
            top_p=e.top_p,
            num_problems=e.num_problems,
        ),
        grading=GradingSection(workers=c.grading.workers, timeout_s=c.grading.timeout_s),
        log=LogSection(progress=c.log.progress, tensorboard=c.log.tensorboard),
        distributed=DistributedSection(**c.distributed.to_dict()),
    )


def build_mesh(run: RunConfig):
    """The device mesh of run.mesh (a ConfigError for a multi-host mesh that leaves devices out)."""
    import jax
    import numpy as np

    from attnrl_jax.models import make_mesh

    sizes = run.mesh.__dict__
    fixed = int(np.prod([s for s in sizes.values() if s > 0]))
    devices = jax.devices() if -1 in sizes.values() else jax.devices()[:fixed]
    if jax.process_count() > 1 and len(devices) != jax.device_count():
        raise ConfigError(
            f"mesh {sizes} uses {len(devices)} of the {jax.device_count()} devices of "
            f"{jax.process_count()} processes; a multi-host mesh must use every device (set "
            "one axis to -1)"
        )
    return make_mesh(**sizes, devices=devices)
