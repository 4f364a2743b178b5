"""The rollout side of a training step (ALGORITHM.md section 7), as host functions over ids.

    Generation(k)  = initial responses of prompt batch k, sampled and scored with theta_{k-1}
    step k:  grade Generation(k) -> branch points (ATB / entropy / ...) + ADS expansion plan
             ONE sampler call with theta_k: G samples per prompt of batch k+1, plus T
             continuations per branch point of batch k
             score batch k+1 (theta_k): behaviour log-probs, entropies, FCI -> Generation(k+1)
             grade continuations -> trees -> zero-advantage filter -> TrainProblems(k)
The on-policy variant samples batch k and its continuations with theta_k in two calls.

Behaviour log-probs are stitched per segment: tokens of the initial response keep the scoring
pass values of the weights that sampled them (version k-1 off-policy), continuation tokens take
the sampler's values (version k). Every token carries its policy version, so the trainer can
check that none is more than one update stale.

FCI source (`RolloutConfig.fci_source`): "scoring" computes FCI in the scoring forward over the
new responses; "sampler" has the sampler accumulate it while decoding them (SamplingOptions.fci,
sampling/fci_decode.py). Then the scoring forward runs only where something else needs it:
for token entropies (entropy branching) or when temperature != 1 (the sampler's log-probs are
of the tempered distribution); otherwise the initial responses keep the sampler's log-probs
(the same distribution at temperature 1, as continuations already do) and have no entropies.
Responses the sampler cannot score exactly (no "\n\n" step separator, more steps than its
bucket) are scored with FCI by the scoring forward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from attnrl_jax.data.pipeline import Prompt
from attnrl_jax.data.records import Problem
from attnrl_jax.models.config import ModelConfig
from attnrl_jax.models.qwen2 import Params
from attnrl_jax.rl import ads
from attnrl_jax.rl.grpo import grpo_tree
from attnrl_jax.rl.packed import TrainProblem
from attnrl_jax.rl.tree import ORIGINAL, Continuation, Response, build_tree
from attnrl_jax.sampling import Request, Sample, SamplerConfig, SamplerFci, SamplingOptions, sample
from attnrl_jax.scoring.forward import ScoringConfig, score_sequences
from attnrl_jax.scoring.selection import SelectionConfig, select_branch_points
from attnrl_jax.scoring.steps import SeparatorIds, StepLayout, segment_steps, step_bucket

FCI_SOURCES = ("sampler", "scoring")

# (response texts, gold answers per response) -> float[N] 0/1 rewards
RewardFn = Callable[[Sequence[str], Sequence[tuple[str, ...]]], np.ndarray]


@dataclass(frozen=True)
class RolloutConfig:
    """Static rollout settings, already resolved from the method (see trainer.resolve).

    tree: build branching trees (attnrl, treerl) or train on the initial responses with GRPO
    advantages (grpo). group_size: G samples per prompt. continuations: T per branch point.
    fci_source: "sampler" or "scoring" (see the module docstring); used when scoring.with_fci.
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
    fci: float32[S_i + 1] per response, or None when the scoring pass ran without FCI.
    entropies is None when no scoring forward ran (fci_source "sampler", see the module doc).
    """

    prompts: tuple[Prompt, ...]
    responses: tuple[np.ndarray, ...]
    logprobs: tuple[np.ndarray, ...]
    entropies: tuple[np.ndarray, ...] | None
    fci: tuple[np.ndarray, ...] | None
    layouts: tuple[StepLayout, ...]
    version: int


@dataclass(frozen=True)
class BranchPlan:
    """Branch points per response of a Generation (() = not expanded) and ADS bookkeeping."""

    branch_points: tuple[tuple[int, ...], ...]
    filter_state: ads.AttentionFilterState
    num_filtered: int  # all-correct problems the attention filter left unexpanded


def initial_requests(prompts: Sequence[Prompt], group_size: int, first_index: int = 0):
    return [
        Request(p.prompt_ids, n=group_size, index=first_index + i) for i, p in enumerate(prompts)
    ]


def continuation_requests(
    gen: Generation, plan: BranchPlan, n: int, first_index: int
) -> list[Request]:
    """T continuations per branch point, in response then branch-point order."""
    g = len(gen.responses) // len(gen.prompts)
    requests = []
    for i, points in enumerate(plan.branch_points):
        prompt = gen.prompts[i // g].prompt_ids
        for b in points:
            requests.append(
                Request(
                    prompt,
                    tuple(int(t) for t in gen.responses[i][:b]),
                    n=n,
                    index=len(requests) + first_index,
                )
            )
    return requests


def sample_all(
    params: Params,
    cfg: ModelConfig,
    requests: Sequence[Request],
    rc: RolloutConfig,
    seed: int,
    sampler: SamplerConfig,
    fci: SamplerFci | None = None,
) -> list[list[Sample]]:
    """One sampler call; the samples of each request, in request order.

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
    flat = sample(params, cfg, requests, options, sampler) if requests else []
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
        fci=None if not rc.scoring.with_fci else tuple(s.fci for s in scored),
        layouts=tuple(s.layout for s in scored),
        version=version,
    )


def _generation_from_sampler(
    params, cfg, rc, prompts, samples, prompt_ids, responses, seps, version
) -> Generation:
    """FCI from the sampler; the scoring forward only for the rows without it (with FCI) and,
    when rc.needs_scoring_forward, for the others' log-probs and entropies (without FCI)."""
    flat = [s for group in samples for s in group]
    missing = [i for i, s in enumerate(flat) if s.fci is None]
    rest = [i for i, s in enumerate(flat) if s.fci is not None]
    fci = [s.fci for s in flat]
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
    return Generation(
        prompts=tuple(prompts),
        responses=tuple(responses),
        logprobs=tuple(logprobs),
        entropies=None if entropies is None else tuple(entropies),
        fci=tuple(fci),
        layouts=tuple(
            segment_steps(len(p), r, seps) for p, r in zip(prompt_ids, responses, strict=True)
        ),
        version=version,
    )


def golds_of(gen: Generation) -> list[tuple[str, ...]]:
    g = len(gen.responses) // len(gen.prompts)
    return [gen.prompts[i // g].problem.answers for i in range(len(gen.responses))]


def plan_branches(
    gen: Generation,
    rewards: np.ndarray,
    state: ads.AttentionFilterState,
    rng: np.random.Generator,
    rc: RolloutConfig,
) -> BranchPlan:
    """ADS expansion plan (which responses) and branch points (where) for a graded Generation.

    rewards: float[P * G]. GRPO (rc.tree False) branches nowhere.
    """
    g = rc.group_size
    p = len(gen.prompts)
    if not rc.tree:
        return BranchPlan(((),) * (p * g), state, 0)
    rewards = np.asarray(rewards).reshape(p, g)
    mean_fci = np.zeros(p)
    if rc.ads.all_correct == "attention":
        if gen.fci is None:
            raise ValueError("the attention filter needs FCI from the scoring pass")
        for j in range(p):
            rows = range(j * g, (j + 1) * g)
            steps = np.array([max(gen.layouts[i].num_steps, 1) for i in rows])
            width = max(len(gen.fci[i]) for i in rows)
            fci = np.zeros((g, max(width, int(steps.max()) + 1)))
            for r, i in enumerate(rows):
                fci[r, : len(gen.fci[i])] = gen.fci[i]
            mean_fci[j] = ads.problem_mean_fci(fci, steps)
    all_correct = (rewards > 0).all(axis=1)
    new_state, chosen = ads.plan_expansions(rewards, mean_fci, state, rng, rc.ads)
    filtered = int(sum(1 for j in range(p) if all_correct[j] and len(chosen[j]) == 0))
    points: list[tuple[int, ...]] = [()] * (p * g)
    for j, picked in enumerate(chosen):
        for r in picked:
            i = j * g + int(r)
            offsets = select_branch_points(
                gen.layouts[i],
                rc.selection,
                fci=None if gen.fci is None else gen.fci[i],
                entropy=None if gen.entropies is None else gen.entropies[i],
                rng=rng,
            )
            points[i] = tuple(int(o) for o in offsets)
    return BranchPlan(tuple(points), new_state, filtered)


@dataclass(frozen=True)
class TreeStats:
    problems: int  # problems in the batch
    kept: int  # problems left after the zero-advantage filter
    sequences: int  # training paths of the kept problems (B'' of the batch size rule)
    mean_leaf_reward: float  # over every leaf of every tree (before filtering)


def build_problems(
    gen: Generation,
    rewards: np.ndarray,
    plan: BranchPlan,
    continuations: Sequence[Sequence[Sample]],
    continuation_rewards: Sequence[np.ndarray],
    continuation_version: int,
    rc: RolloutConfig,
) -> tuple[list[TrainProblem], TreeStats]:
    """Trees (or GRPO groups), zero-advantage filter, stitched behaviour log-probs and versions.

    continuations[c] / continuation_rewards[c]: the samples and 0/1 rewards of the c-th branch
    point in plan order (continuation_requests order).
    """
    g = rc.group_size
    problems, leaves, leaf_sum, cursor = [], 0, 0.0, 0
    for j, prompt in enumerate(gen.prompts):
        rows = range(j * g, (j + 1) * g)
        if rc.tree:
            responses = []
            for i in rows:
                groups = []
                for _ in plan.branch_points[i]:
                    samples, rew = continuations[cursor], continuation_rewards[cursor]
                    groups.append(
                        tuple(
                            Continuation(s.token_ids, float(r))
                            for s, r in zip(samples, rew, strict=True)
                        )
                    )
                    cursor += 1
                responses.append(
                    Response(
                        gen.responses[i], float(rewards[i]), plan.branch_points[i], tuple(groups)
                    )
                )
            tree = build_tree(responses, rc.merge_duplicates)
        else:
            tree = grpo_tree(
                [gen.responses[i] for i in rows], np.asarray(rewards)[list(rows)], rc.grpo_eps
            )
        leaf_rewards = [p.reward for p in tree.paths]
        if rc.tree:  # unexpanded responses are leaves too
            leaf_rewards += [float(rewards[i]) for i in rows if not plan.branch_points[i]]
        leaves += len(leaf_rewards)
        leaf_sum += sum(leaf_rewards)
        if not ads.keep_problem(tree, rc.ads):
            continue
        logp, vers = [], []
        for seg in tree.segments:
            i = j * g + seg.response
            if seg.branch == ORIGINAL:
                logp.append(gen.logprobs[i][seg.start : seg.start + len(seg.tokens)])
                vers.append(np.full(len(seg.tokens), gen.version, np.int32))
            else:
                first = cursor_of(plan, i, seg.branch)
                logp.append(continuations[first][seg.continuation].logprobs)
                vers.append(np.full(len(seg.tokens), continuation_version, np.int32))
        problems.append(
            TrainProblem(np.asarray(prompt.prompt_ids, np.int32), tree, tuple(logp), tuple(vers))
        )
    stats = TreeStats(
        problems=len(gen.prompts),
        kept=len(problems),
        sequences=sum(len(p.tree.paths) for p in problems),
        mean_leaf_reward=leaf_sum / max(leaves, 1),
    )
    return problems, stats


def branch_owners(plan: BranchPlan) -> list[int]:
    """The response index of each branch point, in continuation_requests order."""
    return [i for i, points in enumerate(plan.branch_points) for _ in points]


def mc_valid_ratio(
    rewards: np.ndarray, plan: BranchPlan, continuation_rewards: Sequence[np.ndarray]
) -> float | None:
    """The paper's "MC valid ratio": the fraction of continuations whose 0/1 reward differs from
    the reward of the response they branch from (None without continuations).

    rewards: float[P * G] of the initial responses; continuation_rewards[c]: float[T] of the
    c-th branch point in continuation_requests order.
    """
    differs = [
        float(r != rewards[i])
        for i, group in zip(branch_owners(plan), continuation_rewards, strict=True)
        for r in group
    ]
    return float(np.mean(differs)) if differs else None


def continuation_golds(
    gen: Generation, plan: BranchPlan, continuations: Sequence[Sequence[Sample]]
) -> list[tuple[str, ...]]:
    """The gold answers of every continuation sample, flattened in request then sample order."""
    g = len(gen.responses) // len(gen.prompts)
    return [
        gen.prompts[i // g].problem.answers
        for i, group in zip(branch_owners(plan), continuations, strict=True)
        for _ in group
    ]


def cursor_of(plan: BranchPlan, response: int, branch: int) -> int:
    """Index of (response, branch) among all branch points in continuation_requests order."""
    return sum(len(p) for p in plan.branch_points[:response]) + branch


def problem_from_json(d: dict) -> Prompt:
    return Prompt(Problem(d["problem"], tuple(d["answers"]), d["where"]), tuple(d["prompt_ids"]))


def prompt_to_json(p: Prompt) -> dict:
    return {
        "problem": p.problem.problem,
        "answers": list(p.problem.answers),
        "where": p.problem.where,
        "prompt_ids": [int(t) for t in p.prompt_ids],
    }


def generation_to_state(gen: Generation) -> tuple[dict, dict]:
    """(numpy arrays, JSON metadata) that restore the Generation exactly (layouts recomputed)."""
    n = len(gen.responses)
    lengths = np.array([len(r) for r in gen.responses], np.int32)
    width = max(int(lengths.max()), 1)

    def pad(xs, dtype):
        out = np.zeros((n, width), dtype)
        for i, x in enumerate(xs):
            out[i, : len(x)] = x
        return out

    arrays = {
        "lengths": lengths,
        "responses": pad(gen.responses, np.int32),
        "logprobs": pad(gen.logprobs, np.float32),
    }
    if gen.entropies is not None:
        arrays["entropies"] = pad(gen.entropies, np.float32)
    if gen.fci is not None:
        steps = max(len(f) for f in gen.fci)
        fci = np.zeros((n, steps), np.float32)
        for i, f in enumerate(gen.fci):
            fci[i, : len(f)] = f
        arrays["fci"] = fci
    meta = {"prompts": [prompt_to_json(p) for p in gen.prompts], "version": gen.version}
    return arrays, meta


def generation_from_state(arrays: dict, meta: dict, seps: SeparatorIds) -> Generation:
    prompts = tuple(problem_from_json(d) for d in meta["prompts"])
    lengths = np.asarray(arrays["lengths"])
    g = len(lengths) // len(prompts)
    responses = tuple(np.asarray(arrays["responses"][i, :n]) for i, n in enumerate(lengths))
    layouts = tuple(
        segment_steps(len(prompts[i // g].prompt_ids), r, seps) for i, r in enumerate(responses)
    )
    fci = None
    if "fci" in arrays:
        fci = tuple(
            np.asarray(arrays["fci"][i, : lay.num_steps + 1]) for i, lay in enumerate(layouts)
        )
    return Generation(
        prompts=prompts,
        responses=responses,
        logprobs=tuple(np.asarray(arrays["logprobs"][i, :n]) for i, n in enumerate(lengths)),
        entropies=None
        if "entropies" not in arrays
        else tuple(np.asarray(arrays["entropies"][i, :n]) for i, n in enumerate(lengths)),
        fci=fci,
        layouts=layouts,
        version=int(meta["version"]),
    )
