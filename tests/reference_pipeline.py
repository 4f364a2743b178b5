"""REFERENCE (tests only): the former host bodies of rl/step_plan.py's plan_branches and
build_problems (tree methods), over the host reference modules, one response / problem at a time.
tests/test_rl_step_plan.py checks the jitted pipeline against them."""

from __future__ import annotations

import numpy as np
import reference_ads as ads
import reference_selection as sel
from reference_tree import ORIGINAL, Continuation, Response, build_tree


def host_selection_config(config):
    return sel.SelectionConfig(
        config.method, config.rho, config.num_points, config.min_token_distance
    )


def plan_branches(gen, rewards, state, rng, rc):
    """(branch points per response, filter state, num_filtered) as the host code planned them."""
    g, p = rc.group_size, len(gen.prompts)
    rewards = np.asarray(rewards).reshape(p, g)
    cfg = rc.ads
    mean_fci = np.zeros(p)
    if cfg.all_correct == "attention":
        for j in range(p):
            rows = range(j * g, (j + 1) * g)
            steps = np.array([max(gen.layouts[i].num_steps, 1) for i in rows])
            width = max(len(gen.fci[i]) for i in rows)
            fci = np.zeros((g, max(width, int(steps.max()) + 1)))
            for r, i in enumerate(rows):
                fci[r, : len(gen.fci[i])] = gen.fci[i]
            mean_fci[j] = ads.problem_mean_fci(fci, steps)
    all_correct = (rewards > 0).all(axis=1)
    new_state, chosen = ads.plan_expansions(rewards, mean_fci, state, rng, cfg)
    filtered = int(sum(1 for j in range(p) if all_correct[j] and len(chosen[j]) == 0))
    points = [()] * (p * g)
    for j, picked in enumerate(chosen):
        for r in picked:
            i = j * g + int(r)
            offsets = sel.select_branch_points(
                gen.layouts[i], host_selection_config(rc.selection), fci=gen.fci[i], rng=rng
            )
            points[i] = tuple(int(o) for o in offsets)
    return tuple(points), new_state, filtered


def build_problems(gen, rewards, branch_points, continuations, continuation_rewards, rc):
    """[(problem index, tree, segment log-probs)] of the kept problems and the stats tuple
    (problems, kept, sequences, mean_leaf_reward), as the host code built them."""
    g = rc.group_size
    cfg = rc.ads
    out, leaves, leaf_sum, cursor = [], 0, 0.0, 0
    starts = np.cumsum([0] + [len(p) for p in branch_points])
    for j in range(len(gen.prompts)):
        rows = range(j * g, (j + 1) * g)
        responses = []
        for i in rows:
            groups = []
            for _ in branch_points[i]:
                samples, rew = continuations[cursor], continuation_rewards[cursor]
                groups.append(
                    tuple(
                        Continuation(s.token_ids, float(r))
                        for s, r in zip(samples, rew, strict=True)
                    )
                )
                cursor += 1
            responses.append(
                Response(gen.responses[i], float(rewards[i]), branch_points[i], tuple(groups))
            )
        tree = build_tree(responses, rc.merge_duplicates)
        leaf_rewards = [p.reward for p in tree.paths]
        leaf_rewards += [float(rewards[i]) for i in rows if not branch_points[i]]
        leaves += len(leaf_rewards)
        leaf_sum += sum(leaf_rewards)
        if not ads.keep_problem(tree, cfg):
            continue
        logp = []
        for seg in tree.segments:
            i = j * g + seg.response
            if seg.branch == ORIGINAL:
                logp.append(gen.logprobs[i][seg.start : seg.start + len(seg.tokens)])
            else:
                logp.append(continuations[starts[i] + seg.branch][seg.continuation].logprobs)
        out.append((j, tree, logp))
    sequences = sum(len(t.paths) for _, t, _ in out)
    return out, (len(gen.prompts), len(out), sequences, leaf_sum / max(leaves, 1))
