"""From an ml_collections config to a validated RunConfig (rl/run_config.py), before anything
compiles.

ml_collections is the user interface (config files, --config.key=value, FILE:VARIANT);
`resolve(config)` checks every value and every combination it can know about without touching
a device or a file, raises one ConfigError listing everything wrong, and otherwise returns a
RunConfig: one tree of frozen dataclasses that every component receives. Nothing reads the
ConfigDict after that (export reads <workdir>/config.json back through resolve). `check_files`
checks what needs the file system; rl/devices.py builds the meshes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import ml_collections

from attnrl_jax.data.builtin_tasks import BUILTIN_TASKS
from attnrl_jax.eval.benchmarks import parse_benchmarks
from attnrl_jax.models.config import DTYPES
from attnrl_jax.rewards.math import REWARDS
from attnrl_jax.rl.ads import ADSConfig
from attnrl_jax.rl.loss import LossConfig
from attnrl_jax.rl.packed import PACKINGS
from attnrl_jax.rl.rollout import FCI_SOURCES, RolloutConfig
from attnrl_jax.rl.run_config import (
    METHODS,
    NONFINITE_POLICIES,
    ON_ERROR,
    CheckpointSection,
    ConfigError,
    DataSection,
    DistributedSection,
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
from attnrl_jax.scoring.selection import SELECTORS, SelectionConfig

DTYPE_NAMES = tuple(sorted(DTYPES))
# A URL scheme (gs://, s3://, http://): data files must be local (see _check_paths).
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


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
    if c.data.train_files.strip() in BUILTIN_TASKS:
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
    _check(errors, r.admit_rows >= 0, "rollout.admit_rows must be >= 0 (0: no cap)")
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
    # a continuation of at most max_new_tokens together (RolloutConfig.continuation_budget); a
    # tree-packed row longer than the budget is split into rows of whole paths
    # (packed.tree_rows), so one path is the longest row in either packing.
    budget, longest = c.train.tokens_per_row, c.data.max_prompt_len + r.max_new_tokens
    _check(
        errors,
        budget == 0 or budget >= longest,
        f"train.tokens_per_row={budget} is smaller than the longest row (data.max_prompt_len + "
        f"rollout.max_new_tokens = {longest}); 0 turns packing off",
    )
    shards = max(c.mesh.data, 1) * max(c.mesh.fsdp, 1)
    if c.mesh.data > 0 and c.mesh.fsdp > 0:
        _check(
            errors,
            micro % shards == 0,
            f"train.microbatch_rows={micro} must be a multiple of mesh data x fsdp = {shards}",
        )


def _check_paths(errors: list[str], c: ml_collections.ConfigDict) -> None:
    """Paths, lexically (no file is touched): gs:// only for the workdir and the model
    (attnrl_jax/storage.py), no other URL scheme, no workdir in the model."""
    from attnrl_jax import storage

    supported = True
    for key, value in [("workdir", c.workdir), ("model.path", c.model.path)]:
        try:
            storage.check_supported(value, key)
        except storage.StorageError as e:
            errors.append(str(e))
            supported = False
    named = [("data.train_files", f) for f in _split(c.data.train_files)]
    named += [("eval.files", f) for f in _split(c.eval.files)]
    for key, value in named:
        _check(
            errors,
            not _URL.match(value),
            f"{key}={value!r}: data files on object storage are not read; copy them to a local "
            "disk (or mount the bucket) and pass that path",
        )
    if c.workdir and c.model.path and supported:
        work, model = storage.absolute(c.workdir), storage.absolute(c.model.path)
        _check(
            errors,
            not storage.same_or_inside(work, model),
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


def check_files(run: RunConfig) -> None:
    """What resolve cannot check without touching files: the model directory and the data and
    evaluation files exist. One ConfigError listing every problem."""
    errors = []
    if run.model.path:
        from attnrl_jax import storage

        path = storage.path(run.model.path)
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
