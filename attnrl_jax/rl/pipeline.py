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

Sampling and scoring the initial responses (RolloutConfig, Generation) live in rl/rollout.py.
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
