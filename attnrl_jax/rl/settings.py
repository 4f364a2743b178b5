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

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ml_collections

from attnrl_jax.eval.benchmarks import parse_benchmarks
from attnrl_jax.models.config import DTYPES
from attnrl_jax.rewards.math import REWARDS
from attnrl_jax.rl.ads import ADSConfig
from attnrl_jax.rl.loss import LossConfig
from attnrl_jax.rl.packed import PACKINGS
from attnrl_jax.rl.rollout import FCI_SOURCES, RolloutConfig
from attnrl_jax.scoring.fci import FciConfig
from attnrl_jax.scoring.forward import ScoringConfig
from attnrl_jax.scoring.selection import SELECTORS, SelectionConfig

DTYPE_NAMES = tuple(sorted(DTYPES))


class ConfigError(ValueError):
    """A config value or combination the trainer cannot run."""


NONFINITE_POLICIES = ("stop", "skip")
ON_ERROR = ("raise", "skip")
# A URL scheme (gs://, s3://, http://): object storage is not supported (see _check_paths).
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


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
    on_error: str = "raise"  # a malformed row: "raise" (one line per row) | "skip" (counted)

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
    # a step with non-finite loss / gradient norm / new state: "stop" the run naming the step,
    # or "skip" the update (keeps a second copy of the state on the devices; counted in metrics)
    on_nonfinite: str = "stop"


@dataclass(frozen=True)
class MeshSection:
    """The training mesh's axes; rollout_devices > 0 gives that many devices to sampling alone
    (its own mesh: rows over data, heads over the same tensor size) and the rest to training
    (split_devices)."""

    data: int
    fsdp: int
    tensor: int
    rollout_devices: int = 0

    @property
    def axes(self) -> dict[str, int]:
        return {"data": self.data, "fsdp": self.fsdp, "tensor": self.tensor}


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
    reward: str  # "hybrid" (the authors' order, default) or "boxed" (last box only)


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
    # 0: on-policy (two sampler calls per step); k >= 1: batch s + k's initial responses are
    # sampled with theta_s (with batch s's continuations), so they are k updates stale when
    # trained on; 1 is the paper's one-step off-policy
    off_policy_steps: int
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
    def off_policy(self) -> bool:
        return self.off_policy_steps > 0

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
    _check(
        errors,
        c.off_policy_steps >= 0,
        f"off_policy_steps must be >= 0 (0: on-policy), got {c.off_policy_steps}",
    )
    n, tensor = c.mesh.rollout_devices, c.mesh.tensor
    _check(errors, n >= 0, f"mesh.rollout_devices must be >= 0 (0: shared devices), got {n}")
    if n > 0 and tensor > 0:
        _check(
            errors,
            n % tensor == 0,
            f"mesh.rollout_devices={n} must be a multiple of mesh.tensor={tensor} (the rollout "
            "mesh keeps the tensor axis)",
        )
    _check(
        errors, c.checkpoint.every >= 1, f"checkpoint.every must be >= 1, got {c.checkpoint.every}"
    )
    _check(errors, c.checkpoint.keep >= 1, f"checkpoint.keep must be >= 1, got {c.checkpoint.keep}")
    _check(
        errors, c.model.dtype in DTYPE_NAMES, f"model.dtype={c.model.dtype!r}; known: {DTYPE_NAMES}"
    )
    _check(errors, c.data.max_prompt_len >= 1, "data.max_prompt_len must be >= 1")
    if c.data.train_files.strip() == "demo":
        _check(errors, c.data.num_demo_problems >= 1, "data.num_demo_problems must be >= 1")
    _check(
        errors, c.data.on_error in ON_ERROR, f"data.on_error={c.data.on_error!r}; known: {ON_ERROR}"
    )
    _check(
        errors,
        c.train.on_nonfinite in NONFINITE_POLICIES,
        f"train.on_nonfinite={c.train.on_nonfinite!r}; known: {NONFINITE_POLICIES}",
    )
    _check(errors, c.grading.workers >= 0, "grading.workers must be >= 0 (0: in-process)")
    _check(errors, c.grading.timeout_s > 0, "grading.timeout_s must be > 0")
    _check(
        errors,
        c.grading.reward in REWARDS,
        f"grading.reward={c.grading.reward!r}; known: {list(REWARDS)}",
    )


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
    _check(errors, 0 < r.top_p <= 1, f"rollout.top_p must be in (0, 1], got {r.top_p}")
    _check(errors, r.score_batch_size >= 1, "rollout.score_batch_size must be >= 1")
    o = c.optim
    _check(errors, o.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {o.weight_decay}")
    for name in ("b1", "b2"):
        _check(errors, 0 <= o[name] < 1, f"optim.{name} must be in [0, 1), got {o[name]}")
    _check(
        errors,
        r.fci_source in FCI_SOURCES,
        f"rollout.fci_source={r.fci_source!r}; known: {list(FCI_SOURCES)}",
    )
    mb, micro = c.train.minibatch_problems, c.train.microbatch_rows
    _check(errors, mb >= 1 and micro >= 1, "train.minibatch_problems and microbatch_rows >= 1")
    _check(errors, c.train.packing in PACKINGS, f"train.packing must be one of {PACKINGS}")
    sizes = {axis: c.mesh[axis] for axis in ("data", "fsdp", "tensor")}
    for axis, size in sizes.items():
        _check(
            errors,
            size == -1 or size >= 1,
            f"mesh.{axis} must be >= 1 or -1 (the rest), got {size}",
        )
    _check(
        errors, list(sizes.values()).count(-1) <= 1, f"at most one mesh axis may be -1, got {sizes}"
    )
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


def _check_paths(errors: list[str], c: ml_collections.ConfigDict) -> None:
    """Paths, lexically (no file is touched): no object-storage URL, no workdir in the model."""
    named = [("workdir", c.workdir), ("model.path", c.model.path)]
    named += [("data.train_files", f) for f in _split(c.data.train_files)]
    named += [("eval.files", f) for f in _split(c.eval.files)]
    for key, value in named:
        _check(
            errors,
            not _URL.match(value),
            f"{key}={value!r}: object-storage URLs (gs://, s3://) are not supported yet; mount "
            "the bucket (e.g. gcsfuse) and pass the mounted path",
        )
    if c.workdir and c.model.path and not _URL.match(c.workdir):
        work, model = Path(os.path.abspath(c.workdir)), Path(os.path.abspath(c.model.path))
        _check(
            errors,
            not (work == model or model in work.parents),
            f"workdir={c.workdir!r} is inside model.path={c.model.path!r}: training would write "
            "into the model directory; use a separate workdir",
        )


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
    _check_run(errors, c)
    _check_paths(errors, c)
    _check_eval(errors, c.eval)
    method = _method(errors, c)
    _check_rollout_and_train(errors, c)
    _check_distributed(errors, c.distributed)
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
        _check(errors, optim.learning_rate > 0, "optim.learning_rate must be > 0")
        _check(errors, optim.grad_clip > 0, "optim.grad_clip must be > 0")
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
            train_files=_split(c.data.train_files),
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
            files=_split(e.files),
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
    )


def split_devices(run: RunConfig) -> tuple[list, list]:
    """(training devices, rollout devices): with mesh.rollout_devices = n > 0, each process gives
    its last n / process_count devices to the rollout group (so both groups span every process
    and every process runs both halves of the loop); ([all], []) with n = 0. A ConfigError for a
    split the devices or the mesh axes cannot make, before anything compiles."""
    import jax

    n, devices = run.mesh.rollout_devices, jax.devices()
    if n == 0:
        return devices, []
    count, processes = len(devices), jax.process_count()
    if n >= count:
        raise ConfigError(
            f"mesh.rollout_devices={n} leaves no training device ({count} devices in all)"
        )
    if n % processes:
        raise ConfigError(
            f"mesh.rollout_devices={n} must be a multiple of the process count {processes} "
            "(each process gives the same number of its devices to sampling)"
        )
    rollout = []
    for p in range(processes):
        local = [d for d in devices if d.process_index == p]
        rollout += local[len(local) - n // processes :]
    return [d for d in devices if d not in rollout], rollout


def check_files(run: RunConfig) -> None:
    """What resolve cannot check without touching files: the model directory and the data and
    evaluation files exist. One ConfigError listing every problem."""
    errors = []
    if run.model.path:
        path = Path(run.model.path)
        _check(
            errors,
            (path / "config.json").is_file(),
            f"model.path={run.model.path!r}: "
            + ("no config.json there (not a Hugging Face model directory)" if path.is_dir()
               else "no such directory"),
        )  # fmt: skip
    files = () if run.data.demo else run.data.train_files
    for key, names in (("data.train_files", files), ("eval.files", run.eval.files)):
        for name in names:
            _check(errors, Path(name).exists(), f"{key}: {name}: no such file or directory")
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(errors))


def mesh_sizes(run: RunConfig, num_devices: int) -> dict[str, int]:
    """run.mesh's axes with a -1 axis resolved against num_devices (the training devices); a
    ConfigError when the sizes do not fit them (the message gives the configured and resolved
    sizes)."""
    sizes = run.mesh.axes
    known = math.prod(s for s in sizes.values() if s != -1)
    resolved = {k: (num_devices // known if v == -1 else v) for k, v in sizes.items()}
    product = math.prod(resolved.values())
    fits = product == num_devices if -1 in sizes.values() else product <= num_devices
    if not fits or min(resolved.values()) < 1:
        split = run.mesh.rollout_devices
        where = (
            f"{num_devices} training devices (mesh.rollout_devices={split})"
            if split
            else f"{num_devices} visible devices"
        )
        shown = " x ".join(f"{k}={v}" for k, v in sizes.items())
        got = " x ".join(f"{k}={v}" for k, v in resolved.items())
        raise ConfigError(
            f"mesh {shown} (resolved: {got} = {product} devices) cannot use the {where}"
        )
    return resolved


def build_mesh(run: RunConfig):
    """The training mesh of run.mesh over the training devices (split_devices); a ConfigError for
    sizes that do not fit them, or a multi-host mesh that leaves devices out."""
    import jax

    from attnrl_jax.models import make_mesh

    train, rollout = split_devices(run)
    sizes = mesh_sizes(run, len(train))
    devices = train[: math.prod(sizes.values())]
    if jax.process_count() > 1 and len(devices) + len(rollout) != jax.device_count():
        raise ConfigError(
            f"mesh {sizes} uses {len(devices)} of the {jax.device_count()} devices of "
            f"{jax.process_count()} processes; a multi-host mesh must use every device (set "
            "one axis to -1)"
        )
    return make_mesh(**sizes, devices=devices)


def build_rollout_mesh(run: RunConfig):
    """The rollout group's mesh (rows over data, heads over mesh.tensor: the decode layout, no
    fsdp axis), or None with mesh.rollout_devices = 0."""
    from attnrl_jax.models import make_mesh

    _, rollout = split_devices(run)
    if not rollout:
        return None
    return make_mesh(data=-1, fsdp=1, tensor=max(run.mesh.tensor, 1), devices=rollout)
