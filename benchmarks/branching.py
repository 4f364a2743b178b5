"""Branch selection + ADS + tree advantages: the former host code vs the jitted batch functions.

The paper-size batch: 100 problems x 6 responses, every response 1,024 steps of 8 tokens (8,192
tokens, prompt 256), FCI random with 20% zeros; a third of the problems all-correct, a third
all-wrong, a third mixed; every expanded response branches at N = 2 points with T = 2 graded
continuations of 1,024 tokens. Phases, each the median of --rounds after a warm-up (the jitted
side's compile time is reported separately):

  selection    host: ATB per expanded response (tests/reference_selection.py);
               jitted: selection.select over all 600 rows (padded arrays already built)
  ads          host: problem mean FCI per problem + plan_expansions (tests/reference_ads.py);
               jitted: ads.problem_mean_fci + ads.expansion_plan
  advantages   host: build_tree + keep_problem per problem (values, advantages and the
               token-level assembly in one pass, tests/reference_tree.py);
               jitted: tree.tree_values + ads.keep_problems
  packing      jitted side only, host: selection_inputs + tree_inputs (padding into arrays by
               index arrays: the layouts, FCI and rewards as the Generation holds them)
  assembly     jitted side only, host: tree.assemble_trees (node fields by index arrays, then
               the Segment / TrainingPath objects; per-token path arrays are built on use)
  total_with_host  jitted total + packing + assembly (the issue's target: under 50 ms)
  selection_padding_device_fci  jitted side only: selection_inputs from flat StepLayouts and the
               FCI as one device array [B, S + 1] (the seam plan_branches uses: the Generation's
               FCI array goes to the device in one copy)

Host parts of the step outside the total (rows with system "host_vectorised", and the former
per-response form as "host_per_response" where it is still expressible):
  layouts      segment_batch of the 600 responses (8,192 tokens, a "\n\n" id every 8th) vs
               segment_steps once per response
  fci_finish   sampling.fci_decode.finish of 600 decode rows [600, 2,048] (mean pooling)
  tree_sources build_problems' flat sources: TreeSources.of + pack_tree_inputs from arrays
  assembly_objects  assemble_trees + reading every tree's segments and paths (the objects
               tests/reference_packed.py reads; "assembly" above builds the trees lazily)
  rows_tree, rows_path  training rows of all 100 problems' trees (600 responses), tree-packed
               and per path: the former per-object code (tests/reference_packed.py, its trees'
               objects made beforehand) as "host_per_response" vs packed.make_rows

    python benchmarks/branching.py --json benchmarks/results/cpu_branching.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # this checkout; the host references in tests/

import reference_ads as ref_ads  # noqa: E402
import reference_packed as ref_packed  # noqa: E402
import reference_selection as ref_sel  # noqa: E402
import reference_tree as ref_tree  # noqa: E402

from attnrl_jax.buckets import power_of_two  # noqa: E402
from attnrl_jax.rl import ads  # noqa: E402
from attnrl_jax.rl.packed import TrainProblem, make_rows  # noqa: E402
from attnrl_jax.rl.ragged import Ragged  # noqa: E402
from attnrl_jax.rl.tree import (  # noqa: E402
    Continuation,
    Response,
    TreeSources,
    assemble,
    assemble_trees,
    pack_tree_inputs,
    tree_inputs,
    tree_values,
)
from attnrl_jax.sampling import fci_decode  # noqa: E402
from attnrl_jax.scoring.fci import FciConfig  # noqa: E402
from attnrl_jax.scoring.selection import (  # noqa: E402
    SelectionConfig,
    select,
    selection_inputs,
)
from attnrl_jax.scoring.steps import (  # noqa: E402
    SeparatorIds,
    StepLayout,
    StepLayouts,
    segment_batch,
    segment_steps,
)


def make_batch(problems: int, group: int, steps: int, step_len: int, prompt: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    layouts, fci = [], []
    for _ in range(problems * group):
        ends = prompt + step_len * np.arange(steps + 1)
        bounds = ((0, prompt),) + tuple(zip(ends[:-1].tolist(), ends[1:].tolist(), strict=True))
        layouts.append(StepLayout(prompt, bounds, None))
        y = np.where(rng.random(steps + 1) < 0.2, 0.0, rng.random(steps + 1))
        fci.append(y.astype(np.float32))
    rewards = (rng.random((problems, group)) < 0.5).astype(np.float32)
    rewards[0::3] = 1.0
    rewards[1::3] = 0.0
    return layouts, fci, rewards


def tree_problems(rewards, points, response_len, cont_len, seed=1):
    """Responses with their branch points and T = 2 graded continuations each (int32 tokens, as
    the sampler and the Generation hold them)."""
    rng = np.random.default_rng(seed)
    p, g = rewards.shape
    out = []
    for j in range(p):
        responses = []
        for r in range(g):
            pts = points[j * g + r]
            conts = tuple(
                tuple(
                    Continuation(
                        rng.integers(1, 1000, cont_len, dtype=np.int32), float(rng.integers(2))
                    )
                    for _ in range(2)
                )
                for _ in pts
            )
            toks = rng.integers(1, 1000, response_len, dtype=np.int32)
            responses.append(Response(toks, float(rewards[j, r]), tuple(pts), conts))
        out.append(responses)
    return out


def to_reference(problem):
    return [
        ref_tree.Response(
            x.tokens,
            x.reward,
            x.branch_points,
            tuple(
                tuple(ref_tree.Continuation(c.tokens, c.reward) for c in g) for g in x.continuations
            ),
        )
        for x in problem
    ]


def host_vectorised_parts(problems, responses, args, t_host, values) -> dict:
    """Seconds of the vectorised host parts (see the module doc), keyed (system, phase)."""
    rng = np.random.default_rng(2)
    seps = SeparatorIds(double_newline=(1,), newline=(1, 2), think_end=())
    length = args.steps * args.step_len
    ids = rng.integers(3, 1000, (responses, length), dtype=np.int32)
    ids[:, args.step_len - 1 :: args.step_len] = 1
    rows = list(ids)
    prompts = np.full(responses, args.prompt)
    out = {
        ("host_vectorised", "layouts"): timed(
            lambda: segment_batch(prompts, rows, seps), args.rounds
        ),
        ("host_per_response", "layouts"): timed(
            lambda: [segment_steps(args.prompt, r, seps) for r in rows], args.rounds
        ),
    }
    layouts = segment_batch(prompts, rows, seps)
    option = fci_decode.SamplerFci(seps, FciConfig(), max_steps=2048)
    raw = rng.random((responses, 2048), dtype=np.float32)
    fresh = np.ones(responses, bool)
    out["host_vectorised", "fci_finish"] = timed(
        lambda: fci_decode.finish(raw, layouts, fresh, rows, option, 28), args.rounds
    )
    flat = [x for responses in problems for x in responses]
    groups = [conts for x in flat for conts in x.continuations]
    conts = [c for group in groups for c in group]
    tokens = [x.tokens for x in flat]
    cont_tokens = [c.tokens for c in conts]
    reward = np.array([x.reward for x in flat])
    points = np.array([len(x.branch_points) for x in flat])
    offsets = np.array([b for x in flat for b in x.branch_points], np.int32)
    per_point = np.array([len(gr) for gr in groups])
    cont_reward = np.array([c.reward for c in conts])
    sizes = np.array([len(x) for x in problems])

    def sources():  # as build_problems: one concatenation, responses then continuations
        resp, cont = Ragged.of([*tokens, *cont_tokens], np.int32).split(len(tokens))
        pool = {"tokens": (resp, cont)}
        src = TreeSources.of(sizes, points, per_point, reward, cont_reward, pool)
        packed = pack_tree_inputs(
            sizes, reward, resp.lengths, points, offsets, per_point, cont_reward, cont.lengths
        )
        return src, packed

    out["host_vectorised", "tree_sources"] = timed(sources, args.rounds)
    src = sources()[0]

    def objects():
        return [(t.segments, t.paths) for t in assemble_trees(src, t_host, values)]

    out["host_vectorised", "assembly_objects"] = timed(objects, args.rounds)
    out.update(row_building(problems, args, t_host, values))
    return out


def row_building(problems, args, t_host, values) -> dict:
    """Seconds of the training rows of every problem (no zero-advantage filter), each packing:
    the former per-object code (tests/reference_packed.py, reading the trees' Segment /
    TrainingPath objects, made before the timing) vs packed.make_rows (flat node arrays, token
    fields gathered from the pool). Trees, log-probs and versions as build_problems makes
    them: one pool per field, nodes as views of it."""
    rng = np.random.default_rng(3)
    flat = [x for responses in problems for x in responses]
    conts = [c for x in flat for group in x.continuations for c in group]
    tokens = Ragged.of([x.tokens for x in flat] + [c.tokens for c in conts], np.int32)
    logp = Ragged(-rng.random(len(tokens.values), dtype=np.float32), tokens.first)
    version = Ragged(np.zeros(len(tokens.values), np.int32), tokens.first)
    src = TreeSources.of(
        np.array([len(x) for x in problems]),
        np.array([len(x.branch_points) for x in flat]),
        np.array([len(g) for x in flat for g in x.continuations], np.int64),
        np.array([x.reward for x in flat]),
        np.array([c.reward for c in conts]),
        pool={name: rows.split(len(flat)) for name, rows in
              (("tokens", tokens), ("logp", logp), ("version", version))},
    )  # fmt: skip
    trees, fields = assemble(src, t_host, values)
    train = [
        TrainProblem(rng.integers(1, 1000, args.prompt).astype(np.int32), tree, lp, ver)
        for tree, lp, ver in zip(trees, fields["logp"], fields["version"], strict=True)
    ]
    for t in trees:  # the reference reads objects: make them outside its timing
        _ = t.segments, t.paths
    out = {}
    for packing in ("tree", "path"):
        out["host_per_response", f"rows_{packing}"] = timed(
            lambda p=packing: ref_packed.make_rows(train, p), args.rounds
        )
        out["host_vectorised", f"rows_{packing}"] = timed(
            lambda p=packing: make_rows(train, p), args.rounds
        )
    return out


def timed(fn, rounds: int) -> float:
    """Median seconds of fn() over rounds (after one warm-up call)."""
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--problems", type=int, default=100)
    parser.add_argument("--group", type=int, default=6)
    parser.add_argument("--steps", type=int, default=1024)
    parser.add_argument("--step-len", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=256)
    parser.add_argument("--cont-len", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    p, g = args.problems, args.group
    layouts, fci, rewards = make_batch(p, g, args.steps, args.step_len, args.prompt)
    cfg = SelectionConfig()  # ATB, rho 0.2, N = 2, 512-token distance
    ads_cfg = ads.ADSConfig()
    host_cfg = ref_sel.SelectionConfig()
    host_ads = ref_ads.ADSConfig()

    # ----- host reference (the former plan_branches / build_problems arithmetic) -----
    def host_ads_plan():
        mean = np.array(
            [
                ref_ads.problem_mean_fci(
                    np.stack(fci[j * g : (j + 1) * g]),
                    np.array([lay.num_steps for lay in layouts[j * g : (j + 1) * g]]),
                )
                for j in range(p)
            ]
        )
        return ref_ads.plan_expansions(
            rewards, mean, ref_ads.AttentionFilterState(), np.random.default_rng(0), host_ads
        )

    _, chosen = host_ads_plan()
    expanded = [j * g + int(r) for j, picked in enumerate(chosen) for r in picked]

    def host_selection():
        return {i: ref_sel.select_branch_points(layouts[i], host_cfg, fci=fci[i]) for i in expanded}

    points = [()] * (p * g)
    for i, pts in host_selection().items():
        points[i] = tuple(pts)
    problems = tree_problems(rewards, points, args.steps * args.step_len, args.cont_len)
    reference = [to_reference(x) for x in problems]

    def host_advantages():
        trees = [ref_tree.build_tree(x) for x in reference]
        return [ref_ads.keep_problem(t, host_ads) for t in trees]

    host = {
        "selection": timed(host_selection, args.rounds),
        "ads": timed(host_ads_plan, args.rounds),
        "advantages": timed(host_advantages, args.rounds),
    }

    # ----- jitted -----
    key = jax.random.key(0)
    rows = power_of_two(p, 8)
    sel_in = jax.device_put(selection_inputs(layouts, fci, rows=rows * g))
    pad_rewards = np.zeros((rows, g), np.float32)
    pad_rewards[:p] = rewards
    problem_valid = np.arange(rows) < p
    t_in = jax.device_put(tree_inputs(problems))

    def jit_selection():
        return jax.block_until_ready(select(sel_in, key, cfg))

    def jit_ads():
        fci = jnp.pad(sel_in.fci, ((0, 0), (1, 0))).reshape(rows, g, -1)  # step 0 first
        mean = ads.problem_mean_fci(fci, sel_in.num_steps.reshape(rows, g))
        out = ads.expansion_plan(
            pad_rewards, problem_valid, mean, ads.AttentionFilterState(), key, ads_cfg
        )
        return jax.block_until_ready(out)

    def jit_advantages():
        values = tree_values(t_in, True)
        return jax.block_until_ready((values, ads.keep_problems(t_in, values, "same_reward")))

    compile_s = {}
    for name, fn in (
        ("selection", jit_selection),
        ("ads", jit_ads),
        ("advantages", jit_advantages),
    ):
        start = time.perf_counter()
        fn()
        compile_s[name] = time.perf_counter() - start
    jitted = {
        "selection": timed(jit_selection, args.rounds),
        "ads": timed(jit_ads, args.rounds),
        "advantages": timed(jit_advantages, args.rounds),
    }
    t_host = tree_inputs(problems)
    values = jax.device_get(tree_values(t_in, True))
    jitted_host = {
        "packing": timed(
            lambda: (selection_inputs(layouts, fci, rows=rows * g), tree_inputs(problems)),
            args.rounds,
        ),
        "assembly": timed(lambda: assemble_trees(problems, t_host, values), args.rounds),
    }
    # the seam for a sampler that keeps FCI on the device: one [B, S + 1] array, flat layouts
    flat = StepLayouts.stack(layouts)
    fci_device = jax.device_put(np.stack(fci))

    def device_fci_padding():
        inputs = selection_inputs(flat, fci_device, rows=rows * g)
        return jax.block_until_ready(inputs.fci)

    device_fci_ms = 1000 * timed(device_fci_padding, args.rounds)
    host_parts = host_vectorised_parts(problems, p * g, args, t_host, values)

    device = jax.devices()[0]
    base = {
        "problems": p,
        "group": g,
        "steps": args.steps,
        "step_len": args.step_len,
        "cont_len": args.cont_len,
        "rounds": args.rounds,
    }
    meta = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "platform": device.platform,
        "device": device.device_kind,
        "python": platform.python_version(),
        "jax": jax.__version__,
        "numpy": np.__version__,
    }
    out = []

    def row(system, phase, metric, value, unit):
        params = {**base, "phase": phase}
        out.append(
            {
                "benchmark": "branching",
                "system": system,
                "params": params,
                "metric": metric,
                "value": round(value, 3),
                "unit": unit,
                **meta,
            }
        )

    for phase in ("selection", "ads", "advantages"):
        row("host_reference", phase, "ms", 1000 * host[phase], "ms")
        row("jitted", phase, "ms", 1000 * jitted[phase], "ms")
        row("jitted", phase, "compile_s", compile_s[phase], "s")
    row("host_reference", "total", "ms", 1000 * sum(host.values()), "ms")
    row("jitted", "total", "ms", 1000 * sum(jitted.values()), "ms")
    for phase, value in jitted_host.items():
        row("jitted", phase, "ms", 1000 * value, "ms")
    with_host = sum(jitted.values()) + sum(jitted_host.values())
    row("jitted", "total_with_host", "ms", 1000 * with_host, "ms")
    row("jitted", "selection_padding_device_fci", "ms", device_fci_ms, "ms")
    for (system, phase), value in host_parts.items():
        row(system, phase, "ms", 1000 * value, "ms")
    for r in out:
        print(f"{r['system']:15s} {r['params']['phase']:11s} {r['metric']:9s} {r['value']}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
