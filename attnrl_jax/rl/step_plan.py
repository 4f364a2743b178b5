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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain

import jax
import jax.numpy as jnp
import numpy as np

from attnrl_jax.buckets import power_of_two
from attnrl_jax.rl import ads
from attnrl_jax.rl.grpo import grpo_advantages, keep_groups
from attnrl_jax.rl.packed import TrainProblem
from attnrl_jax.rl.ragged import Ragged, Runs
from attnrl_jax.rl.rollout import Generation, RolloutConfig
from attnrl_jax.rl.tree import (
    ORIGINAL,
    ProblemTree,
    TreeSources,
    assemble,
    pack_tree_inputs,
    tree_values,
)
from attnrl_jax.sampling import Request, Sample
from attnrl_jax.scoring.selection import select, selection_inputs

# [response][branch point] -> the T continuations of that branch point (or their rewards)
Nested = tuple[tuple[tuple, ...], ...]


@dataclass(frozen=True)
class BranchPlan:
    """Branch points per response of a Generation (() = not expanded) and ADS bookkeeping."""

    branch_points: tuple[tuple[int, ...], ...]
    filter_state: ads.AttentionFilterState
    num_filtered: int  # all-correct problems the attention filter left unexpanded


def continuation_requests(
    gen: Generation,
    plan: BranchPlan,
    n: int,
    first_index: int,
    budget: Callable[[int], int] | None = None,
) -> list[Request]:
    """T continuations per branch point, in response then branch-point order.

    budget(prefix_len) -> new tokens of a continuation (RolloutConfig.continuation_budget);
    None: the sampler call's max_new_tokens."""
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
                    max_new_tokens=None if budget is None else budget(b),
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

    rewards: float[P * G]. GRPO (rc.tree False) branches nowhere. Two jitted calls over the whole
    batch (ads.expansion_plan, selection.select); random picks draw from a jax key taken from
    `rng` (the trainer's (seed, step) generator), split between ADS and selection.
    Host-side: padding the layouts / entropies into arrays (selection_inputs: index arrays, no
    loop per response) and turning the offsets into the plan's tuples. The Generation's FCI is
    one padded array: the sampler's stays on its device, a host one goes to the device in one
    copy; either is padded there (the device seam of selection_inputs).
    """
    g = rc.group_size
    p = len(gen.prompts)
    if not rc.tree:
        return BranchPlan(((),) * (p * g), state, 0)
    method = rc.selection.method
    if gen.fci is None and (method == "atb" or rc.ads.all_correct == "attention"):
        raise ValueError("ATB and the attention filter need FCI from the scoring pass")
    if gen.entropies is None and method == "entropy":
        raise ValueError("method 'entropy' needs per-token entropies from the scoring pass")
    problems = power_of_two(p, 8)
    fci = gen.fci  # the sampler's device array as it is; a host one copied once, bucketed
    if isinstance(fci, jax.Array) and not fci.is_fully_addressable:
        fci = gen.fci_host()  # several processes: selection's outputs must be readable here
    if isinstance(fci, np.ndarray):
        fci = jax.device_put(_bucketed(fci, gen.layouts.num_steps, problems * g))
    inputs = selection_inputs(gen.layouts, fci, gen.entropies, rows=problems * g)
    padded = np.zeros((problems, g), np.float32)
    padded[:p] = np.asarray(rewards).reshape(p, g)
    fci = jnp.pad(inputs.fci, ((0, 0), (1, 0))).reshape(problems, g, -1)  # step 0 first
    mean_fci = ads.problem_mean_fci(fci, inputs.num_steps.reshape(problems, g))
    k_ads, k_sel = jax.random.split(jax.random.key(int(rng.integers(2**31))))
    new_state, expand, filtered = ads.expansion_plan(
        padded, np.arange(problems) < p, mean_fci, state, k_ads, rc.ads
    )
    offsets, valid = select(inputs, k_sel, rc.selection)
    expand, filtered, offsets, valid = jax.device_get((expand, filtered, offsets, valid))
    valid = valid[: p * g] & expand.reshape(-1, 1)[: p * g]
    flat = offsets[: p * g][valid].tolist()  # row-major: response by response, choice order
    ends = np.cumsum(valid.sum(1)).tolist()
    points = tuple(tuple(flat[a:b]) for a, b in zip([0, *ends], ends, strict=False))
    state = ads.AttentionFilterState(float(new_state.total), int(new_state.count))
    return BranchPlan(points, state, int(filtered.sum()))


def _bucketed(fci: np.ndarray, num_steps: np.ndarray, rows: int) -> np.ndarray:
    """A Generation's host FCI [B, W] as float32[rows, S_pad + 1] (S_pad: selection_inputs'
    step bucket): the step's one FCI copy to the device has a bucketed shape (no compile per B
    or per S_max)."""
    columns = power_of_two(int(num_steps.max(initial=0)), 16) + 1
    out = np.zeros((rows, columns), np.float32)
    width = min(columns, fci.shape[1])
    out[: len(fci), :width] = fci[:, :width]
    return out


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
    branch point b of response i (`attach`). Values, advantages and the filter are one
    jitted call each over all problems; the host concatenates the responses' and samples'
    tokens and log-probs once (flat arrays with offsets), every kept node's tokens, log-probs
    and versions are runs of those arrays (`tree_nodes.assemble`: views, nothing gathered;
    training rows gather them straight into the rows), and the trees make Segment /
    TrainingPath objects only when read. A TrainProblem's segment_logp / segment_version are
    `Runs` (tree methods) or `Ragged` (GRPO) rows: Sequences of per-segment arrays with `flat`.
    """
    g = rc.group_size
    p = len(gen.prompts)
    rewards = np.asarray(rewards, np.float32)
    logp = Ragged.of(gen.logprobs, np.float32)
    if rc.tree:
        sources, inputs = _tree_sources(gen, rewards, plan, continuations, continuation_rewards,
                                        continuation_version)  # fmt: skip
        values = tree_values(inputs, rc.merge_duplicates)
        keep = ads.keep_problems(inputs, values, rc.ads.zero_advantage_filter)
        inputs, values, keep = jax.device_get((inputs, values, keep))
        kept = np.flatnonzero(keep[:p])
        trees, fields = assemble(sources, inputs, values, kept)
        segment_logp, segment_version = fields["logp"], fields["version"]
        c_valid = np.asarray(inputs.cont_valid)
        leaves = int(inputs.response_valid.sum() + c_valid.sum())
        leaf_sum = float(rewards.sum() + np.where(c_valid, inputs.cont_reward, 0.0).sum())
    else:
        by_problem = rewards.reshape(p, g)
        lengths = logp.lengths.reshape(p, g)
        adv = grpo_advantages(by_problem, rc.grpo_eps)
        keep = keep_groups(by_problem, adv, lengths, rc.ads.zero_advantage_filter)
        adv, keep = jax.device_get((adv, keep))
        kept = np.flatnonzero(keep)
        trees = _grpo_trees(Ragged.of(gen.responses, np.int32), by_problem, adv, kept)
        versions = np.full(len(logp.values), gen.version, np.int32)
        # a GRPO tree's segments are its G whole responses, in order
        segment_logp = [Ragged(logp.values, logp.first[j * g : (j + 1) * g + 1]) for j in kept]
        segment_version = [Ragged(versions, logp.first[j * g : (j + 1) * g + 1]) for j in kept]
        leaves, leaf_sum = p * g, float(rewards.sum())
    problems_out = [
        TrainProblem(np.asarray(gen.prompts[j].prompt_ids, np.int32), tree, lp, ver)
        for j, tree, lp, ver in zip(kept.tolist(), trees, segment_logp, segment_version,
                                    strict=True)
    ]  # fmt: skip
    stats = TreeStats(
        problems=p,
        kept=len(problems_out),
        sequences=sum(t.num_paths for t in trees),
        mean_leaf_reward=leaf_sum / max(leaves, 1),
    )
    return problems_out, stats


def _grpo_trees(tokens: Ragged, rewards: np.ndarray, adv: np.ndarray, kept: np.ndarray) -> list:
    """The GRPO groups `kept` of [P, G] rewards / advantages as ProblemTrees from node columns
    (what grpo.grpo_tree builds from objects: each response one segment under the root, one
    path each), their tokens views of `tokens` (response rows, problem by problem)."""
    g = rewards.shape[1]
    fixed = {
        "response": np.arange(g),
        "parent": np.full(g, -1),
        "start": np.zeros(g, np.int64),
        "branch": np.full(g, ORIGINAL),
        "continuation": np.full(g, ORIGINAL),
        "path_count": np.ones(g, np.int64),
        "depth": np.zeros(g, np.int64),
        "leaf": np.ones(g, bool),
    }
    chain_id = np.arange(g)[:, None]
    begin, lengths = tokens.first[:-1], tokens.lengths
    trees = []
    for j in kept.tolist():
        r = rewards[j]
        nodes = {**fixed, "value": r, "reward": r, "advantage": np.asarray(adv[j])}
        at = slice(j * g, (j + 1) * g)
        runs = Runs(tokens.values, begin[at], lengths[at])
        trees.append(ProblemTree.from_nodes(float(np.mean(r)), nodes, runs, chain_id))
    return trees


def _tree_sources(gen, rewards, plan, continuations, continuation_rewards, version):
    """(TreeSources, TreeInputs) of the batch's trees from flat arrays: one concatenation of the
    responses' and of the continuation samples' tokens and log-probs (no object per response)."""
    b = len(gen.responses)
    points = np.fromiter(map(len, plan.branch_points), np.int64, b)
    if len(continuations) != b or len(continuation_rewards) != b:
        raise ValueError(
            f"{len(continuations)} continuation and {len(continuation_rewards)} reward lists for "
            f"{b} responses"
        )
    per_response = np.fromiter(map(len, continuations), np.int64, b)
    if (per_response != points).any():
        i = int(np.flatnonzero(per_response != points)[0])
        raise ValueError(
            f"response {i}: {points[i]} branch points but {per_response[i]} continuation groups"
        )
    groups = [group for branches in continuations for group in branches]
    graded = [np.asarray(r, np.float64) for branches in continuation_rewards for r in branches]
    conts = np.fromiter(map(len, groups), np.int64, len(groups))
    if (
        len(graded) != len(groups)
        or (np.fromiter(map(len, graded), np.int64, len(graded)) != conts).any()
    ):
        raise ValueError("continuation rewards do not match the continuation samples")
    samples = [s for group in groups for s in group]
    cont_reward = np.concatenate([np.zeros(0), *graded])
    # one concatenation per field: responses, then continuations (split into two views)
    tokens, cont_tokens = Ragged.of([*gen.responses, *(s.token_ids for s in samples)],
                                    np.int32).split(b)  # fmt: skip
    logp, cont_logp = Ragged.of([*gen.logprobs, *(s.logprobs for s in samples)],
                                np.float32).split(b)  # fmt: skip

    def versions(rows, v):
        return Ragged(
            np.full(int(rows.first[-1] - rows.first[0]), v, np.int32), rows.first - rows.first[0]
        )

    problem_sizes = np.full(len(gen.prompts), gen.group_size, np.int64)
    sources = TreeSources.of(
        problem_sizes, points, conts, rewards, cont_reward,
        pool={
            "tokens": (tokens, cont_tokens),
            "logp": (logp, cont_logp),
            "version": (versions(tokens, gen.version), versions(cont_tokens, version)),
        },
    )  # fmt: skip
    inputs = pack_tree_inputs(
        problem_sizes, rewards, tokens.lengths, points,
        np.fromiter(chain.from_iterable(plan.branch_points), np.int32, int(points.sum())),
        conts, cont_reward, cont_tokens.lengths,
    )  # fmt: skip
    return sources, inputs


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
