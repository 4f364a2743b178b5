"""The rollout's sampler and scoring calls: G fresh responses per prompt (and continuations)
in one sampler call, then the scoring pass that gives a Generation its behaviour log-probs,
entropies and FCI; a Generation's checkpoint state.

FCI source (`RolloutConfig.fci_source`): "scoring" computes FCI in the scoring forward over the
new responses; "sampler" has the sampler accumulate it while decoding them (SamplingOptions.fci,
sampling/fci_decode.py). Then the scoring forward runs only where something else needs it:
for token entropies (entropy branching) or when temperature != 1 (the sampler's log-probs are
of the tempered distribution); otherwise the initial responses keep the sampler's log-probs
(the same distribution at temperature 1, as continuations already do) and have no entropies.
Responses the sampler cannot score exactly (no "\n\n" step separator, more steps than its
bucket) are scored with FCI by the scoring forward.

With the native engine the sampler's FCI stays on the device: the Generation carries the call's
one FCI array (fci_rows.CallFci.scores, the scoring forward's rows merged in on the device), and
branch selection takes it without a host copy. `Generation.fci_host` makes the host copy where
one is needed (a checkpoint of the pending Generation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import jax
import numpy as np

from attnrl_jax.data.pipeline import Prompt
from attnrl_jax.models.config import ModelConfig
from attnrl_jax.models.lm import Params
from attnrl_jax.models.transfer import to_host
from attnrl_jax.rl import ads
from attnrl_jax.sampling import Request, Sample, SamplerFci, SamplingOptions, fci_rows
from attnrl_jax.sampling.engine import RolloutEngine
from attnrl_jax.scoring.branch_batch import pad_step_scores
from attnrl_jax.scoring.forward import ScoringConfig, score_sequences
from attnrl_jax.scoring.selection import SelectionConfig
from attnrl_jax.scoring.steps import SeparatorIds, StepLayouts, segment_batch, step_bucket

FCI_SOURCES = ("sampler", "scoring")


# (response texts, gold answers per response) -> float[N] 0/1 rewards
RewardFn = Callable[[Sequence[str], Sequence[tuple[str, ...]]], np.ndarray]


@dataclass(frozen=True)
class RolloutConfig:
    """Static rollout settings, already resolved from the method (rl/settings.resolve).

    tree: build branching trees (attnrl, treerl) or train on the initial responses with GRPO
    advantages (grpo). group_size: G samples per prompt. continuations: T per branch point.
    fci_source: "sampler" or "scoring" (see the module docstring); used when scoring.with_fci.
    eos_ids: sampling/eos.eos_ids of the model (set by the trainer). sampler_rows: the native
    engine's slots (rows decoding together). admit_rows: most rows one admission prefills per
    batch shard (0: no cap; SamplerConfig.admit_rows).
    """

    tree: bool = True
    group_size: int = 6
    continuations: int = 2
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    eos_ids: tuple[int, ...] = ()
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    ads: ads.ADSConfig = field(default_factory=ads.ADSConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    score_batch_size: int = 8
    merge_duplicates: bool = True
    grpo_eps: float = 1e-6
    fci_source: str = "sampler"
    sampler_rows: int = 64
    admit_rows: int = 0

    def __post_init__(self):
        if self.fci_source not in FCI_SOURCES:
            raise ValueError(f"fci_source must be one of {FCI_SOURCES}, got {self.fci_source!r}")

    @property
    def fci_in_sampler(self) -> bool:
        return self.scoring.with_fci and self.fci_source == "sampler"

    @property
    def needs_scoring_forward(self) -> bool:
        """Whether the initial responses need the scoring forward beyond FCI."""
        return self.selection.method == "entropy" or self.temperature != 1.0

    def continuation_budget(self, prefix_len: int) -> int:
        """New tokens a continuation of a `prefix_len`-token response prefix may sample: what
        is left of max_new_tokens, so prefix + continuation is at most one response's budget
        (and a path row at most prompt + max_new_tokens tokens). The authors' rollout does the
        same: RyanLiu112/AttnRL verl/workers/rollout/vllm_rollout/vllm_rollout_spmd.py cuts a
        continuation to response_length - (prefix_length - prompt_length).
        """
        if not 0 <= prefix_len < self.max_new_tokens:
            raise ValueError(
                f"a continuation after {prefix_len} response tokens has no budget left "
                f"(rollout.max_new_tokens={self.max_new_tokens})"
            )
        return self.max_new_tokens - prefix_len

    def sampler_fci(self, seps: SeparatorIds) -> SamplerFci | None:
        """The sampler option for initial responses (None: FCI from the scoring forward).

        Step slots: the bucket of max_new_tokens + 1, at most 512 (rows with more steps fall
        back to the scoring forward).
        """
        if not self.fci_in_sampler:
            return None
        slots = min(512, step_bucket(self.max_new_tokens + 1))
        return SamplerFci(seps, self.scoring.fci, max_steps=slots)


@dataclass(frozen=True, eq=False)
class Generation:
    """Initial responses of a prompt batch, scored by the weights that sampled them.

    Response i belongs to prompt i // G. logprobs / entropies: float32[R_i] per response;
    entropies is None when no scoring forward ran (fci_source "sampler", see the module doc).
    layouts: the B responses' StepLayouts (flat arrays). fci: float32[B', W], B' >= B and W >=
    S_max + 1: response i's FCI in row i, columns 0..S_i (step 0 first), zeros after (and in
    rows past B); None when the scoring pass ran without FCI. A host array, or a jax array (the
    sampler's, kept on its device; its padded shape is taken as it is). Per-response sequences
    of layouts or FCI vectors are accepted and stacked / padded once (B' = B, W = S_max + 1).
    """

    prompts: tuple[Prompt, ...]
    responses: tuple[np.ndarray, ...]
    logprobs: tuple[np.ndarray, ...]
    entropies: tuple[np.ndarray, ...] | None
    fci: np.ndarray | jax.Array | None
    layouts: StepLayouts
    version: int

    def __post_init__(self):
        layouts = StepLayouts.stack(self.layouts)
        if len(layouts) != len(self.responses):
            raise ValueError(f"{len(layouts)} layouts for {len(self.responses)} responses")
        object.__setattr__(self, "layouts", layouts)
        if isinstance(self.fci, jax.Array):
            need = (len(layouts), int(layouts.num_steps.max(initial=0)) + 1)
            if self.fci.ndim != 2 or self.fci.shape[0] < need[0] or self.fci.shape[1] < need[1]:
                raise ValueError(f"fci of shape {self.fci.shape} cannot hold {need} (rows, steps)")
        elif self.fci is not None:
            object.__setattr__(self, "fci", pad_step_scores(self.fci, layouts.num_steps))

    def fci_host(self) -> np.ndarray | None:
        """float32[B, W]: the FCI on the host (one device->host copy when it is on a device)."""
        if self.fci is None:
            return None
        return np.asarray(to_host(self.fci[: len(self.responses)]), np.float32)

    @property
    def group_size(self) -> int:
        """G: responses per prompt (response i belongs to prompt i // G)."""
        return len(self.responses) // len(self.prompts)


def initial_requests(prompts: Sequence[Prompt], group_size: int, first_index: int = 0):
    return [
        Request(p.prompt_ids, n=group_size, index=first_index + i) for i, p in enumerate(prompts)
    ]


def sample_all(
    engine: RolloutEngine,
    requests: Sequence[Request],
    rc: RolloutConfig,
    seed: int,
    fci: SamplerFci | None = None,
) -> list[list[Sample]]:
    """One engine call; the samples of each request, in request order.

    fci: compute FCI of the fresh samples while decoding (`rc.sampler_fci`); continuations
    get none (they need none).
    """
    options = SamplingOptions(
        max_new_tokens=rc.max_new_tokens,
        temperature=rc.temperature,
        top_p=rc.top_p,
        seed=seed,
        eos_ids=rc.eos_ids,
        fci=fci,
    )
    flat = engine.generate(requests, options) if requests else []
    out: list[list[Sample]] = [[] for _ in requests]
    for s in flat:
        out[s.request].append(s)
    return out


def score_generation(
    params: Params,
    cfg: ModelConfig,
    rc: RolloutConfig,
    prompts: Sequence[Prompt],
    samples: Sequence[Sequence[Sample]],
    seps: SeparatorIds,
    version: int,
) -> Generation:
    """The scoring forward over freshly sampled initial responses with the sampling weights, at
    the sampling temperature: the behaviour log-probs of the prefix tokens are then under the
    same distribution as the sampler's continuation log-probs and the trainer's new log-probs
    (logits / temperature everywhere, as verl's actor does).

    With rc.fci_in_sampler, the samples carry FCI (sample_all with rc.sampler_fci) and only what
    the sampler could not give runs here (see the module docstring).
    """
    responses = [s.token_ids.astype(np.int32) for group in samples for s in group]
    prompt_ids = [p.prompt_ids for p, group in zip(prompts, samples, strict=True) for _ in group]
    if rc.fci_in_sampler:
        return _generation_from_sampler(
            params, cfg, rc, prompts, samples, prompt_ids, responses, seps, version
        )
    scored = score_sequences(
        params, cfg, rc.scoring, prompt_ids, responses, seps,
        batch_size=rc.score_batch_size, temperature=rc.temperature,
    )  # fmt: skip
    return Generation(
        prompts=tuple(prompts),
        responses=tuple(responses),
        logprobs=tuple(s.logprobs for s in scored),
        entropies=tuple(s.entropies for s in scored),
        fci=None if not rc.scoring.with_fci else [s.fci for s in scored],
        layouts=[s.layout for s in scored],
        version=version,
    )


def _generation_from_sampler(
    params, cfg, rc, prompts, samples, prompt_ids, responses, seps, version
) -> Generation:
    """FCI from the sampler; the scoring forward only for the rows without it (with FCI) and,
    when rc.needs_scoring_forward, for the others' log-probs and entropies (without FCI)."""
    flat = [s for group in samples for s in group]
    missing = [i for i, s in enumerate(flat) if not s.has_fci]
    rest = [i for i, s in enumerate(flat) if s.has_fci]
    on_device = _device_fci(flat)
    fci = [None if on_device is not None else s.fci for s in flat]
    logprobs = [s.logprobs for s in flat]
    entropies = [None] * len(flat) if rc.needs_scoring_forward else None

    def run(rows, config):
        if not rows:
            return
        scored = score_sequences(
            params, cfg, config, [prompt_ids[i] for i in rows], [responses[i] for i in rows],
            seps, batch_size=rc.score_batch_size, temperature=rc.temperature,
        )  # fmt: skip
        for i, sc in zip(rows, scored, strict=True):
            if config.with_fci:
                fci[i] = sc.fci
            if entropies is not None:
                logprobs[i], entropies[i] = sc.logprobs, sc.entropies

    run(missing, rc.scoring)
    if entropies is not None:
        run(rest, replace(rc.scoring, with_fci=False))
    if on_device is not None:  # the scoring forward's rows merged in on the device
        scored = [fci[i] for i in missing]
        fci = fci_rows.with_rows(on_device, missing, scored) if missing else on_device
    return Generation(
        prompts=tuple(prompts),
        responses=tuple(responses),
        logprobs=tuple(logprobs),
        entropies=None if entropies is None else tuple(entropies),
        fci=fci,  # a device array, or host vectors padded into one array once (Generation)
        layouts=segment_batch([len(p) for p in prompt_ids], responses, seps),
        version=version,
    )


def _device_fci(flat: Sequence[Sample]) -> jax.Array | None:
    """The samples' FCI as one device array (row i: flat[i], zeros where not exact), when they
    all come from one native sampler call; None when an engine gave host arrays. The call's
    array itself when its fresh rows are these samples in order (the trainer's calls put the
    initial requests first), else its rows gathered on the device."""
    refs = [s.fci_row for s in flat]
    if not refs or any(r is None for r in refs) or len({id(r.call) for r in refs}) != 1:
        return None
    scores = refs[0].call.scores
    rows = [r.row for r in refs]
    if rows == list(range(len(rows))):
        return scores
    return fci_rows.gather_rows(scores, rows)


def golds_of(gen: Generation) -> list[tuple[str, ...]]:
    g = gen.group_size
    return [gen.prompts[i // g].problem.answers for i in range(len(gen.responses))]
