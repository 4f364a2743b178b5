"""The value checks of `rl/settings.resolve`, one function per config section: each appends a
line per problem to `errors` (nothing raises, so one ConfigError can list every problem) and
touches no device and no file."""

from __future__ import annotations

import re

import ml_collections

from attnrl_jax.data.builtin_tasks import BUILTIN_TASKS
from attnrl_jax.eval.benchmarks import parse_benchmarks
from attnrl_jax.models.config import DTYPES
from attnrl_jax.models.sharding import DECODE_LAYOUTS
from attnrl_jax.rewards.math import REWARDS
from attnrl_jax.rl.packed import PACKINGS
from attnrl_jax.rl.rollout import FCI_SOURCES
from attnrl_jax.rl.run_config import METHODS, NONFINITE_POLICIES, ON_ERROR, Method
from attnrl_jax.scoring.selection import SELECTORS

DTYPE_NAMES = tuple(sorted(DTYPES))
# A URL scheme (gs://, s3://, http://): data files must be local (see check_paths).
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def check(errors: list[str], ok: bool, message: str) -> None:
    """Adds `message` to errors unless ok."""
    if not ok:
        errors.append(message)


def split(value: str) -> tuple[str, ...]:
    """'a, b,,c' -> ('a', 'b', 'c'): a comma-separated config value."""
    return tuple(p.strip() for p in value.split(",") if p.strip())


def check_eval(errors: list[str], e: ml_collections.ConfigDict) -> None:
    """Evaluation values (eval.files are read, and checked, when the trainer starts)."""
    check(errors, e.every >= 0, f"eval.every must be >= 0 (0: off), got {e.every}")
    if e.every > 0:
        check(
            errors,
            bool(e.benchmarks.strip() or e.files.strip()),
            "eval.every > 0 needs eval.benchmarks or eval.files",
        )
    check(errors, e.k >= 1, f"eval.k must be >= 1, got {e.k}")
    check(errors, e.max_new_tokens >= 1, "eval.max_new_tokens must be >= 1")
    check(errors, e.temperature >= 0, f"eval.temperature must be >= 0, got {e.temperature}")
    check(errors, 0 < e.top_p <= 1, f"eval.top_p must be in (0, 1], got {e.top_p}")
    check(errors, e.num_problems >= 0, "eval.num_problems must be >= 0 (0: all)")
    try:
        parse_benchmarks(e.benchmarks, max(e.k, 1))
    except ValueError as err:
        errors.append(f"eval.benchmarks: {err}")


def check_distributed(errors: list[str], d: ml_collections.ConfigDict) -> None:
    from attnrl_jax.distributed import MODES, DistributedError, split_address

    check(errors, d.mode in MODES, f"distributed.mode={d.mode!r}; known: {list(MODES)}")
    if d.coordinator_address:
        try:
            split_address(d.coordinator_address)
        except DistributedError as e:
            errors.append(f"distributed.{e}")
    check(errors, d.num_processes >= 0, "distributed.num_processes must be >= 0 (0: unset)")
    check(errors, d.process_id >= -1, "distributed.process_id must be >= -1 (-1: unset)")
    if d.num_processes > 0:
        check(
            errors,
            d.process_id < d.num_processes,
            f"distributed.process_id={d.process_id} must be < num_processes={d.num_processes}",
        )
    check(errors, 0 <= d.port < 65536, f"distributed.port={d.port} must be in 0..65535")
    check(
        errors,
        d.initialization_timeout_s > 0,
        f"distributed.initialization_timeout_s must be > 0, got {d.initialization_timeout_s}",
    )


def check_run(errors: list[str], c: ml_collections.ConfigDict) -> None:
    """Values that need no other section."""
    check(errors, bool(c.workdir), "workdir is required (--config.workdir=/path)")
    check(errors, c.total_steps >= 1, f"total_steps must be >= 1, got {c.total_steps}")
    check(
        errors,
        bool(c.model.path) or not c.model.require_path,
        "model.path is required by this config (a local Hugging Face checkpoint directory, "
        "e.g. --config.model.path=/models/DeepSeek-R1-Distill-Qwen-1.5B; nothing is downloaded)",
    )
    for key in ("dtype", "param_dtype"):
        value = c.model[key]
        check(errors, value in DTYPES, f"model.{key}={value!r}; known: {sorted(DTYPES)}")
    check(
        errors,
        c.model.param_dtype == "float32" or c.model.param_dtype == c.model.dtype,
        "model.param_dtype below float32 only with the same dtype (AdamW at lr 1e-6 rounds "
        "most updates of bfloat16 weights away)",
    )
    check(
        errors,
        bool(c.data.train_files.strip()),
        "data.train_files is required: comma-separated data files (JSONL, JSON, Parquet, HF or "
        "TFDS directories) or 'demo' (--config.data.train_files=/data/train.parquet)",
    )
    check(
        errors,
        c.off_policy_steps >= 0,
        f"off_policy_steps must be >= 0 (0: on-policy), got {c.off_policy_steps}",
    )
    n, tensor = c.mesh.rollout_devices, c.mesh.tensor
    check(errors, n >= 0, f"mesh.rollout_devices must be >= 0 (0: shared devices), got {n}")
    if n > 0 and tensor > 0:
        check(
            errors,
            n % tensor == 0,
            f"mesh.rollout_devices={n} must be a multiple of mesh.tensor={tensor} (the rollout "
            "mesh keeps the tensor axis)",
        )
    check(
        errors, c.checkpoint.every >= 1, f"checkpoint.every must be >= 1, got {c.checkpoint.every}"
    )
    check(errors, c.checkpoint.keep >= 1, f"checkpoint.keep must be >= 1, got {c.checkpoint.keep}")
    check(
        errors, c.model.dtype in DTYPE_NAMES, f"model.dtype={c.model.dtype!r}; known: {DTYPE_NAMES}"
    )
    check(errors, c.data.max_prompt_len >= 1, "data.max_prompt_len must be >= 1")
    if c.data.train_files.strip() in BUILTIN_TASKS:
        check(errors, c.data.num_demo_problems >= 1, "data.num_demo_problems must be >= 1")
    check(
        errors, c.data.on_error in ON_ERROR, f"data.on_error={c.data.on_error!r}; known: {ON_ERROR}"
    )
    check(
        errors,
        c.train.on_nonfinite in NONFINITE_POLICIES,
        f"train.on_nonfinite={c.train.on_nonfinite!r}; known: {NONFINITE_POLICIES}",
    )
    check(errors, c.grading.workers >= 0, "grading.workers must be >= 0 (0: in-process)")
    check(errors, c.grading.timeout_s > 0, "grading.timeout_s must be > 0")
    check(
        errors,
        c.grading.reward in REWARDS,
        f"grading.reward={c.grading.reward!r}; known: {list(REWARDS)}",
    )


def resolve_method(errors: list[str], c: ml_collections.ConfigDict) -> Method:
    check(errors, c.method in METHODS, f"method={c.method!r}; known: {sorted(METHODS)}")
    spec = METHODS.get(c.method)
    branching = c.branching or (spec.default_branching if spec else "none")
    check(errors, branching in SELECTORS, f"branching={branching!r}; known: {sorted(SELECTORS)}")
    if spec is not None and not spec.tree:
        check(
            errors, branching == "none", f"method={c.method} has no tree; branching={branching!r}"
        )
    elif spec is not None:
        check(errors, branching != "none", f"method={c.method} needs branching, got 'none'")
    ads_on = spec is not None and spec.ads
    return Method(
        name=c.method if spec else "grpo",
        branching=branching if branching in SELECTORS else "none",
        difficulty_expansion=ads_on and c.ads.difficulty_expansion,
        attention_filter=ads_on and c.ads.attention_filter,
        adaptive_batch_size=ads_on and c.ads.adaptive_batch_size,
    )


def check_rollout_and_train(errors: list[str], c: ml_collections.ConfigDict) -> None:
    r = c.rollout
    check(errors, r.group_size >= 2, f"rollout.group_size must be >= 2, got {r.group_size}")
    check(errors, r.continuations >= 1, "rollout.continuations must be >= 1")
    check(errors, r.max_new_tokens >= 1, "rollout.max_new_tokens must be >= 1")
    # Greedy sampling (0) would give G identical responses and no defined behaviour policy.
    check(errors, r.temperature > 0, f"rollout.temperature must be > 0, got {r.temperature}")
    check(errors, r.sampler_rows >= 1, "rollout.sampler_rows must be >= 1")
    check(errors, r.admit_rows >= 0, "rollout.admit_rows must be >= 0 (0: no cap)")
    layout = decode_layout(r)
    check(
        errors,
        layout in DECODE_LAYOUTS,
        f"rollout.decode_layout={layout!r}; known: {list(DECODE_LAYOUTS)}",
    )
    check(errors, 0 < r.top_p <= 1, f"rollout.top_p must be in (0, 1], got {r.top_p}")
    check(errors, r.score_batch_size >= 1, "rollout.score_batch_size must be >= 1")
    o = c.optim
    check(errors, o.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {o.weight_decay}")
    for name in ("b1", "b2"):
        check(errors, 0 <= o[name] < 1, f"optim.{name} must be in [0, 1), got {o[name]}")
    check(
        errors,
        r.fci_source in FCI_SOURCES,
        f"rollout.fci_source={r.fci_source!r}; known: {list(FCI_SOURCES)}",
    )
    mb, micro = c.train.minibatch_problems, c.train.microbatch_rows
    check(errors, mb >= 1 and micro >= 1, "train.minibatch_problems and microbatch_rows >= 1")
    check(errors, c.train.packing in PACKINGS, f"train.packing must be one of {PACKINGS}")
    sizes = {axis: c.mesh[axis] for axis in ("data", "fsdp", "tensor")}
    for axis, size in sizes.items():
        check(
            errors,
            size == -1 or size >= 1,
            f"mesh.{axis} must be >= 1 or -1 (the rest), got {size}",
        )
    check(
        errors, list(sizes.values()).count(-1) <= 1, f"at most one mesh axis may be -1, got {sizes}"
    )
    # The longest row: a path through a continuation holds the prompt, a response prefix and
    # a continuation of at most max_new_tokens together (RolloutConfig.continuation_budget); a
    # tree-packed row longer than the budget is split into rows of whole paths
    # (packed.tree_rows), so one path is the longest row in either packing.
    budget, longest = c.train.tokens_per_row, c.data.max_prompt_len + r.max_new_tokens
    check(
        errors,
        budget == 0 or budget >= longest,
        f"train.tokens_per_row={budget} is smaller than the longest row (data.max_prompt_len + "
        f"rollout.max_new_tokens = {longest}); 0 turns packing off",
    )
    shards = max(c.mesh.data, 1) * max(c.mesh.fsdp, 1)
    if c.mesh.data > 0 and c.mesh.fsdp > 0:
        check(
            errors,
            micro % shards == 0,
            f"train.microbatch_rows={micro} must be a multiple of mesh data x fsdp = {shards}",
        )


def check_paths(errors: list[str], c: ml_collections.ConfigDict) -> None:
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
    named = [("data.train_files", f) for f in split(c.data.train_files)]
    named += [("eval.files", f) for f in split(c.eval.files)]
    for key, value in named:
        check(
            errors,
            not _URL.match(value),
            f"{key}={value!r}: data files on object storage are not read; copy them to a local "
            "disk (or mount the bucket) and pass that path",
        )
    if c.workdir and c.model.path and supported:
        work, model = storage.absolute(c.workdir), storage.absolute(c.model.path)
        check(
            errors,
            not storage.same_or_inside(work, model),
            f"workdir={c.workdir!r} is inside model.path={c.model.path!r}: training would write "
            "into the model directory; use a separate workdir",
        )


def decode_layout(rollout: ml_collections.ConfigDict) -> str:
    """rollout.decode_layout; "auto" in a config saved before the key existed (export reads a
    workdir's config.json back through resolve)."""
    return rollout.get("decode_layout", "auto")
