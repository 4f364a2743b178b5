"""One training step's plan, as pure host functions over ids (ALGORITHM.md section 7).

The data flows one way:

    Generation (initial responses, flat: response i belongs to prompt i // G)
      + rewards -> plan_branches -> BranchPlan (branch points per response, ADS bookkeeping)
      -> continuation_requests -> (the engine samples them) -> attach -> continuations
         nested [response][branch point] -> T samples (and their rewards, nested alike)
      -> build_problems -> TrainProblems (trees or GRPO groups, zero-advantage filter,
         stitched behaviour log-probs and policy versions) + TreeStats

The trainer (rl/trainer.py) owns everything around it: the prompt stream, the engine calls, the
on-/off-policy schedule, grading, the update, metrics and checkpoints.

Behaviour log-probs are stitched per segment: tokens of the initial response keep the scoring
pass values of the weights that sampled them (version k-1 off-policy), continuation tokens take
the sampler's values (version k). Every token carries its policy version, so the trainer can
check that none is more than one update stale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from attnrl_jax.rl import ads
from attnrl_jax.rl.grpo import grpo_tree
from attnrl_jax.rl.packed import TrainProblem
from attnrl_jax.rl.rollout import Generation, RolloutConfig
from attnrl_jax.rl.tree import ORIGINAL, Continuation, Response, build_tree
from attnrl_jax.sampling import Request, Sample
from attnrl_jax.scoring.selection import select_branch_points

# [response][branch point] -> the T continuations of that branch point (or their rewards)
Nested = tuple[tuple[tuple, ...], ...]


@dataclass(frozen=True)
class BranchPlan:
    """Branch points per response of a Generation (() = not expanded) and ADS bookkeeping."""

    branch_points: tuple[tuple[int, ...], ...]
    filter_state: ads.AttentionFilterState
    num_filtered: int  # all-correct problems the attention filter left unexpanded


def continuation_requests(
    gen: Generation, plan: BranchPlan, n: int, first_index: int
) -> list[Request]:
    """T continuations per branch point, in response then branch-point order."""
    g = gen.group_size
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
    continuations: Sequence[Sequence[Sequence[Sample]]],
    continuation_rewards: Sequence[Sequence[np.ndarray]],
    continuation_version: int,
    rc: RolloutConfig,
) -> tuple[list[TrainProblem], TreeStats]:
    """Trees (or GRPO groups), zero-advantage filter, stitched behaviour log-probs and versions.

    continuations[i][b] / continuation_rewards[i][b]: the samples and float[T] 0/1 rewards of
    branch point b of response i (`attach`).
    """
    g = rc.group_size
    problems, leaves, leaf_sum = [], 0, 0.0
    for j, prompt in enumerate(gen.prompts):
        rows = range(j * g, (j + 1) * g)
        if rc.tree:
            responses = []
            for i in rows:
                groups = [
                    tuple(
                        Continuation(s.token_ids, float(r))
                        for s, r in zip(samples, rew, strict=True)
                    )
                    for samples, rew in zip(continuations[i], continuation_rewards[i], strict=True)
                ]
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
                logp.append(continuations[i][seg.branch][seg.continuation].logprobs)
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


def attach(plan: BranchPlan, per_request: Sequence) -> Nested:
    """A flat sequence in continuation_requests order (samples or rewards of each branch point)
    nested as [response][branch point]."""
    counts = [len(points) for points in plan.branch_points]
    if sum(counts) != len(per_request):
        raise ValueError(f"{len(per_request)} continuation groups for {sum(counts)} branch points")
    ends = np.cumsum(counts)
    return tuple(tuple(per_request[e - n : e]) for n, e in zip(counts, ends, strict=True))


def mc_valid_ratio(rewards: np.ndarray, continuation_rewards: Nested) -> float | None:
    """The paper's "MC valid ratio": the fraction of continuations whose 0/1 reward differs from
    the reward of the response they branch from (None without continuations).

    rewards: float[P * G] of the initial responses; continuation_rewards[i][b]: float[T].
    """
    differs = [
        float(r != rewards[i])
        for i, branches in enumerate(continuation_rewards)
        for group in branches
        for r in group
    ]
    return float(np.mean(differs)) if differs else None


def continuation_golds(gen: Generation, continuations: Nested) -> list[tuple[str, ...]]:
    """The gold answers of every continuation sample, flattened in response, branch point, then
    sample order (the order of `flat_samples`)."""
    g = gen.group_size
    return [
        gen.prompts[i // g].problem.answers
        for i, branches in enumerate(continuations)
        for group in branches
        for _ in group
    ]


def flat_samples(continuations: Nested) -> list[Sample]:
    return [s for branches in continuations for group in branches for s in group]


def nest_rewards(continuations: Nested, flat: np.ndarray) -> Nested:
    """float rewards in flat_samples order, nested like `continuations` (one array per group)."""
    out, k = [], 0
    for branches in continuations:
        groups = []
        for group in branches:
            groups.append(np.asarray(flat[k : k + len(group)]))
            k += len(group)
        out.append(tuple(groups))
    if k != len(flat):
        raise ValueError(f"{len(flat)} rewards for {k} continuation samples")
    return tuple(out)
