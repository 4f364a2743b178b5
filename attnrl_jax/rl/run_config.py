"""The run's configuration as one tree of frozen dataclasses (`RunConfig`), and what each method
means. `rl/settings.resolve` builds it from the ml_collections config, once; every component
receives it.

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

from attnrl_jax.rl.loss import LossConfig
from attnrl_jax.rl.rollout import RolloutConfig


class ConfigError(ValueError):
    """A config value or combination the trainer cannot run."""


NONFINITE_POLICIES = ("stop", "skip")
ON_ERROR = ("raise", "skip")


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
    train_files: tuple[str, ...]  # ("demo",) / ("chain",): a built-in task (data/builtin_tasks)
    drop_eval_overlap: bool
    problem_key: str
    answer_key: str
    max_prompt_len: int
    num_demo_problems: int
    demo_seed: int
    on_error: str = "raise"  # a malformed row: "raise" (one line per row) | "skip" (counted)

    @property
    def demo(self) -> bool:
        """Whether the run trains on a built-in task (`builtin_task` names it)."""
        return self.builtin_task is not None

    @property
    def builtin_task(self) -> str | None:
        from attnrl_jax.data.builtin_tasks import BUILTIN_TASKS

        files = self.train_files
        return files[0] if len(files) == 1 and files[0] in BUILTIN_TASKS else None


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
class EngineSection:
    """Settings of the native engine (sampling/engine.NativeEngine) that the rollout itself
    does not read. decode_layout (config key rollout.decode_layout): where the engine keeps its
    copy of the weights on a mesh: "auto" | "replicated" | "training" (sharding.decode_layout)."""

    decode_layout: str = "auto"


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
    engine: EngineSection = EngineSection()

    @property
    def off_policy(self) -> bool:
        return self.off_policy_steps > 0

    @property
    def initial_model_dir(self) -> Path:
        """The Hugging Face directory training starts from: model.path, or the tiny random
        model that training writes to <workdir>/initial_model."""
        from attnrl_jax import storage  # gs:// stays a URL (pathlib would make it "gs:/...")

        if self.model.path:
            return storage.path(self.model.path)
        return storage.path(self.workdir) / "initial_model"
