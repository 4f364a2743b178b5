"""Sample efficiency of GRPO, TreeRL, AttnRL and its ablations at one budget of generated tokens.

    python benchmarks/sample_efficiency.py --out benchmarks/results/sample_efficiency
    python benchmarks/sample_efficiency.py --out ... --report --json OUT.json   # tables, plots

Tasks: `demo` is the `make demo` setting (its warm start: 600 supervised steps); `weak` is the
same task from a weak warm start (WEAK_WARM_START_STEPS steps), where most answers are wrong;
`chain` is the chain task (configs/demo_chain.py: named quantities built from earlier ones, its
warm start demo/warm_start.RECIPES["chain"]). Methods: configs/variants.py's, `first_two_steps`
being the ICLR ablation (the `earliest` selector).
Per task one warm start is shared by every run. A run (task, method, seed) trains from it with
configs/demo.py and the method's keys from configs/variants.py (their step counts are not used)
until it has generated --token_budget tokens, and measures held-out accuracy (avg@k on problems
outside the training set, the same evaluation seeds for every run) at fixed fractions of the
budget. `seed` is the run's seed (sampling, data order); the task's problems and the warm start
do not change with it (data.demo_seed).

Wall time is the training steps' time without JAX compilation (CompileWatch) and without the
evaluations, so the method that happens to run first does not pay for everyone's compiles.
Each finished run is appended to OUT/runs.jsonl, and runs already there are skipped: an
interrupted benchmark resumes. `--shard K/N` runs every N-th run of the list from the K-th, so
that N processes (one per core, e.g. under `taskset`) share one OUT. --report reads runs.jsonl
and writes OUT/*.png plus a markdown table (stdout) and, with --json, rows in the benchmarks'
common format.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "configs"))

from table_defs import METHOD_LABELS as LABELS  # noqa: E402  (benchmarks/, the script's dir)
from table_defs import (  # noqa: E402
    Rows,
    sample_efficiency,
    sample_efficiency_curve,
    sample_efficiency_paired,
    sample_efficiency_seeds,
    sample_efficiency_steps,
)

METHODS = (
    "grpo", "treerl", "treerl_off_policy", "treerl_atb", "first_two_steps", "no_attention_filter",
    "no_difficulty_expansion", "attnrl",
)  # fmt: skip
TASKS = ("demo", "weak", "chain")
TASK_CONFIGS = {"demo": "demo.py", "weak": "demo.py", "chain": "demo_chain.py"}
WEAK_WARM_START_STEPS = 150
EVAL_FRACTIONS = (1 / 3, 2 / 3, 1.0)
STEP_KEYS = (
    "tokens_generated", "valid_ratio", "prompt_batch_size", "sequences", "mc_valid_ratio",
    "reward", "accuracy", "time_step", "time_sampling", "time_scoring", "time_update",
    "clip_frac", "approx_kl", "kl", "grad_norm", "entropy",  # update health; None: not logged
)  # fmt: skip
PHASE_SHARES = ("sampling", "scoring", "update")  # of time_step, per method (FCI: sampling)
# the paired comparisons the chain study reports (issue 16): method against baseline
# the first two are the study's primary comparisons: their p-values also get Holm's correction
PAIRS = (("treerl_atb", "treerl"), ("attnrl", "treerl"), ("first_two_steps", "treerl"),
         ("treerl_atb", "first_two_steps"))  # fmt: skip


def task_config(task: str, method: str, seed: int, out: Path):
    """The demo run config with `method`'s variant keys, for one run (model.path: the warm
    start)."""
    from variants import apply_variant

    from attnrl_jax.demo.__main__ import load_config
    from attnrl_jax.rl.settings import resolve

    c = load_config(ROOT / "configs" / TASK_CONFIGS[task])
    apply_variant(c, method)
    c.seed = seed
    c.model.path = str(out / f"warm_start_{task}")
    c.workdir = str(out / "workdirs" / f"{task}_{method}_{seed}")
    c.log.tensorboard = False
    return resolve(c)


def warm_start(task: str, out: Path):
    from attnrl_jax.demo.warm_start import load_or_build_warm_start, recipe_for

    c = task_config(task, "attnrl", 0, out)
    # demo and chain: their task's recipe (demo/warm_start.RECIPES); weak: the demo's, shorter
    steps = WEAK_WARM_START_STEPS if task == "weak" else None
    model, seconds = load_or_build_warm_start(c, Path(c.model.path), steps=steps)
    if seconds:
        steps = steps or recipe_for(c.data.builtin_task or "demo").steps
        print(f"[{task}] warm start: {steps} supervised steps in {seconds:.0f} s", flush=True)
    return model


EVAL_SEED = 1234  # held-out sampling seeds: the same for every run, so runs compare paired


def held_out_accuracy(model, c, problems: int, k: int) -> Callable[[Any], float]:
    """params -> avg@k on `problems` held-out problems of the task, with EVAL_SEED."""
    from transformers import AutoTokenizer

    from attnrl_jax.demo.__main__ import held_out_config
    from attnrl_jax.eval.training import held_out_accuracy_fn
    from attnrl_jax.sampling.eos import eos_ids

    tokenizer = AutoTokenizer.from_pretrained(c.model.path)
    e = held_out_config(c, problems, k, seed=EVAL_SEED)
    eos = eos_ids(tokenizer, c.model.path, model.config.eos_token_id)
    return held_out_accuracy_fn(e, tokenizer, model.config, eos)


def run_one(
    task: str,
    method: str,
    seed: int,
    out: Path,
    budget: int,
    held: Callable[[Any], float],
    eval_fractions: tuple[float, ...] = EVAL_FRACTIONS,
) -> dict:
    from attnrl_jax.compile_watch import CompileWatch
    from attnrl_jax.train import build_trainer

    c = task_config(task, method, seed, out)
    shutil.rmtree(c.workdir, ignore_errors=True)
    trainer = build_trainer(c)
    steps, curve = [], []
    tokens, wall, compile_s = 0, 0.0, 0.0
    marks = [f * budget for f in eval_fractions]
    try:
        while marks:
            with CompileWatch() as watch:
                m = trainer.train_step()
            tokens += m["tokens_generated"]
            wall += max(m["time_step"] - watch.seconds, 0.0)
            compile_s += watch.seconds
            steps.append({k: m.get(k) for k in STEP_KEYS} | {"step": m["step"]})
            if tokens >= marks[0]:
                while marks and tokens >= marks[0]:
                    marks.pop(0)
                accuracy = held(trainer.params)
                curve.append(
                    {"step": m["step"], "tokens": tokens, "wall": wall, "accuracy": accuracy}
                )
                print(
                    f"[{task} {method} seed {seed}] step {m['step']}: {tokens:,} tokens, "
                    f"{wall:.0f} s, held-out {accuracy:.3f}", flush=True,
                )  # fmt: skip
    finally:
        trainer.close()
    shutil.rmtree(c.workdir, ignore_errors=True)
    return {
        "task": task, "method": method, "seed": seed, "token_budget": budget,
        "off_policy": bool(c.off_policy), "compile_seconds": compile_s, "curve": curve,
        "steps": steps,
    }  # fmt: skip


def read_runs(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def append_run(path: Path, record: dict) -> None:
    """One line per run; locked, since --shard processes append to the same file."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(json.dumps(record) + "\n")


def run_all(args) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    runs_path, base_path = args.out / "runs.jsonl", args.out / "warm_starts.json"
    done = {(r["task"], r["method"], r["seed"]) for r in read_runs(runs_path)}
    bases = json.loads(base_path.read_text()) if base_path.exists() else {}
    held = {}
    for task in args.tasks:
        model = warm_start(task, args.out)
        c = task_config(task, "attnrl", 0, args.out)
        held[task] = held_out_accuracy(model, c, args.held_out, args.k)
        if task not in bases:
            bases[task] = held[task](model.params())
            base_path.write_text(json.dumps(bases, indent=1))
        print(f"[{task}] warm start held-out accuracy {bases[task]:.3f}", flush=True)
    # seeds outermost, so that an interrupted benchmark has whole seeds of every task and method;
    # methods interleaved, so that drift in the machine's load hits every method alike
    jobs = [(t, m, s) for s in args.seeds for t in args.tasks for m in args.methods]
    shard, shards = args.shard
    fractions = tuple(i / args.eval_points for i in range(1, args.eval_points + 1))
    for task, method, seed in jobs[shard::shards]:
        if (task, method, seed) in done:
            continue
        start = time.perf_counter()
        record = run_one(task, method, seed, args.out, args.token_budget, held[task], fractions)
        record["elapsed_seconds"] = time.perf_counter() - start
        append_run(runs_path, record)


# ----- report -----


def mean_spread(values) -> tuple[float, float, float, float]:
    v = np.asarray(values, float)
    return (
        float(v.mean()),
        float(v.std(ddof=1)) if len(v) > 1 else 0.0,
        float(v.min()),
        float(v.max()),
    )


def summarize(runs: list[dict], bases: dict) -> list[dict]:
    """One row per (task, method): final accuracy and the per-step statistics over seeds."""
    rows = []
    for task in TASKS:
        for method in METHODS:
            group = [r for r in runs if r["task"] == task and r["method"] == method]
            if not group:
                continue
            final = [r["curve"][-1]["accuracy"] for r in group]
            points = min(len(r["curve"]) for r in group)
            steps = [s for r in group for s in r["steps"]]
            mc = [s["mc_valid_ratio"] for s in steps if s["mc_valid_ratio"] is not None]
            rows.append({
                "task": task, "method": method, "seeds": len(group),
                "before": bases.get(task), "final": mean_spread(final),
                "tokens": float(np.mean([r["curve"][-1]["tokens"] for r in group])),
                "wall": float(np.mean([r["curve"][-1]["wall"] for r in group])),
                "steps": float(np.mean([len(r["steps"]) for r in group])),
                "valid_ratio": float(np.mean([s["valid_ratio"] for s in steps])),
                "mc_valid_ratio": float(np.mean(mc)) if mc else None,
                "sampling_s_per_ktoken": (
                    1000 * sum(s["time_sampling"] for s in steps)
                    / sum(s["tokens_generated"] for s in steps)
                    if all(s.get("time_sampling") is not None for s in steps) else None
                ),
                "phase_shares": {
                    phase: float(np.mean([s[f"time_{phase}"] / s["time_step"] for s in steps]))
                    for phase in PHASE_SHARES
                    if all(s.get(f"time_{phase}") is not None for s in steps)
                },
                "by_seed": {r["seed"]: r["curve"][-1]["accuracy"] for r in group},
                "curve": [  # (mean tokens, mean accuracy, sd) at each evaluation
                    (np.mean([r["curve"][i]["tokens"] for r in group]),)
                    + mean_spread([r["curve"][i]["accuracy"] for r in group])[:2]
                    for i in range(points)
                ],
                "prompts_first_last": (
                    float(np.mean([r["steps"][0]["prompt_batch_size"] for r in group])),
                    float(np.mean([r["steps"][-1]["prompt_batch_size"] for r in group])),
                ),
            })  # fmt: skip
    return rows


def json_rows(rows: list[dict], budget: int | None) -> list[dict]:
    out = []
    for r in rows:
        params = {"task": r["task"], "method": r["method"], "seeds": r["seeds"],
                  "token_budget": budget}  # fmt: skip
        metrics = {
            "final_accuracy_mean": (r["final"][0], "avg@k"),
            "final_accuracy_sd": (r["final"][1], "avg@k"),
            "final_accuracy_min": (r["final"][2], "avg@k"),
            "final_accuracy_max": (r["final"][3], "avg@k"),
            "warm_start_accuracy": (r["before"], "avg@k"),
            "tokens": (r["tokens"], "tokens"),
            "wall": (r["wall"], "s"),
            "steps": (r["steps"], "steps"),
            "valid_ratio": (r["valid_ratio"], "fraction"),
            "mc_valid_ratio": (r["mc_valid_ratio"], "fraction"),
            "prompt_batch_size_first": (r["prompts_first_last"][0], "prompts"),
            "prompt_batch_size_last": (r["prompts_first_last"][1], "prompts"),
        }
        for phase, share in r["phase_shares"].items():
            metrics[f"time_share_{phase}"] = (share, "fraction of step time")
        if r["sampling_s_per_ktoken"] is not None:
            metrics["sampling_s_per_ktoken"] = (r["sampling_s_per_ktoken"], "s per 1k tokens")
        for seed, accuracy in r["by_seed"].items():
            out.append(_row("sample_efficiency", params | {"seed": seed},
                            "final_accuracy_of_seed", accuracy))  # fmt: skip
        for i, (tokens, mean, sd) in enumerate(r["curve"], 1):
            at = params | {"evaluation": i}
            out.append(_row("sample_efficiency", at, "evaluation_tokens", float(tokens), "tokens"))
            out.append(_row("sample_efficiency", at, "evaluation_accuracy_mean", float(mean)))
            out.append(_row("sample_efficiency", at, "evaluation_accuracy_sd", float(sd)))
        for metric, (value, unit) in metrics.items():
            out.append(_row("sample_efficiency", params, metric, value, unit))
    return out


def _row(benchmark: str, params: dict, metric: str, value, unit: str = "avg@k") -> dict:
    """One row in the benchmarks' common format."""
    return {"benchmark": benchmark, "system": "attnrl_jax", "params": params, "metric": metric,
            "value": value, "unit": unit}  # fmt: skip


ENDPOINTS = {  # run -> the accuracy a paired comparison compares
    "final": lambda run: run["curve"][-1]["accuracy"],  # at the budget (the primary endpoint)
    "mean": lambda run: float(np.mean([p["accuracy"] for p in run["curve"]])),  # over the run
}


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of a family of p-values (None: no test, left out)."""
    tested = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    out: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        out[i] = running
    return out


def paired(runs: list[dict], budget: int | None, endpoints: dict | None = None) -> list[dict]:
    """PAIRS on each task and ENDPOINTS: accuracy differences over the seeds both methods ran,
    their mean and sd, a paired t-test and the exact sign-flip test (two-sided); the first two
    pairs' p-values also Holm-adjusted as one family."""
    import itertools

    from scipy import stats

    out = []
    for endpoint, accuracy in (endpoints or ENDPOINTS).items():
        value = {(r["task"], r["method"], r["seed"]): accuracy(r) for r in runs}
        for task in TASKS:
            tests = []
            for method, baseline in PAIRS:
                seeds = sorted(s for t, m, s in value if t == task and m == method
                               and (task, baseline, s) in value)  # fmt: skip
                if len(seeds) < 2:
                    continue
                d = np.array([value[task, method, s] - value[task, baseline, s] for s in seeds])
                t_p = float(stats.ttest_1samp(d, 0.0).pvalue) if d.std() > 0 else None
                signs = itertools.product((1, -1), repeat=len(d))
                flip_p = float(np.mean([abs(np.dot(d, s)) >= abs(d.sum()) - 1e-12 for s in signs]))
                params = {"task": task, "method": method, "baseline": baseline, "seeds": len(seeds),
                          "token_budget": budget, "endpoint": endpoint}  # fmt: skip
                tests.append((method, baseline, params, t_p, flip_p))
                for metric, v in (
                    ("paired_difference_mean", float(d.mean())),
                    ("paired_difference_sd", float(d.std(ddof=1))),
                    ("paired_t_p", t_p),
                    ("paired_sign_flip_p", flip_p),
                ):
                    out.append(_row("sample_efficiency_paired", params, metric, v))
            primary = [t for t in tests if (t[0], t[1]) in PAIRS[:2]]
            if len(primary) == 2:
                for column, metric in ((3, "paired_t_p_holm"), (4, "paired_sign_flip_p_holm")):
                    adjusted = holm([t[column] for t in primary])
                    for t, v in zip(primary, adjusted, strict=True):
                        out.append(_row("sample_efficiency_paired", t[2], metric, v))
    return out


def plot(runs: list[dict], bases: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in TASKS if any(r["task"] == t for r in runs)]
    colors = dict(zip(METHODS, plt.get_cmap("tab10").colors, strict=False))
    paths = []
    for x_key, x_label, name in (
        ("tokens", "generated tokens", "accuracy_vs_tokens.png"),
        ("wall", "training wall time without compiles (s)", "accuracy_vs_wall.png"),
        ("step", "optimizer steps", "accuracy_vs_steps.png"),
    ):
        fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.2), squeeze=False)
        for ax, task in zip(axes[0], tasks, strict=True):
            for method in METHODS:
                group = [r for r in runs if r["task"] == task and r["method"] == method]
                if not group:
                    continue
                points = min(len(r["curve"]) for r in group)
                x = np.array([[0.0] + [p[x_key] for p in r["curve"][:points]] for r in group])
                y = np.array(
                    [[bases[task]] + [p["accuracy"] for p in r["curve"][:points]] for r in group]
                )
                ax.plot(x.mean(0), y.mean(0), "o-", color=colors[method], label=LABELS[method])
                ax.fill_between(x.mean(0), y.min(0), y.max(0), color=colors[method], alpha=0.12)
            ax.set(title=f"task {task} (mean, min-max over seeds)", xlabel=x_label,
                   ylabel="held-out accuracy (avg@k)")  # fmt: skip
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        paths.append(out / name)
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    keys = (
        ("valid_ratio", "valid ratio (problems kept)"),
        ("prompt_batch_size", "prompt batch size"),
        ("mc_valid_ratio", "MC valid ratio"),
    )
    fig, axes = plt.subplots(len(tasks), 3, figsize=(16, 4 * len(tasks)), squeeze=False)
    for row, task in zip(axes, tasks, strict=True):
        for ax, (key, label) in zip(row, keys, strict=True):
            for method in METHODS:
                group = [r for r in runs if r["task"] == task and r["method"] == method]
                if not group:
                    continue
                n = min(len(r["steps"]) for r in group)
                vals = np.array([[np.nan if s[key] is None else s[key] for s in r["steps"][:n]]
                                 for r in group], float)  # fmt: skip
                if np.isnan(vals).all():  # GRPO has no continuations: no MC valid ratio
                    continue
                ax.plot(np.arange(1, n + 1), np.nanmean(vals, 0), color=colors[method],
                        label=LABELS[method])  # fmt: skip
            ax.set(title=f"task {task}: {label}", xlabel="step")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    paths.append(out / "per_step.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def fewest_steps(runs: list[dict], task: str) -> int:
    return min(r["curve"][-1]["step"] for r in runs if r["task"] == task)


def accuracy_at_step(run: dict, step: float, base: float) -> float:
    """The run's evaluations (and the warm start `base` at step 0), linearly interpolated."""
    steps = [0] + [p["step"] for p in run["curve"]]
    return float(np.interp(step, steps, [base] + [p["accuracy"] for p in run["curve"]]))


def at_equal_steps(runs: list[dict], bases: dict, budget: int | None) -> list[dict]:
    """Held-out accuracy after the same number of optimizer steps for every method
    (accuracy_at_step at the fewest steps any run of the task took). Methods whose trees cost
    fewer tokens take more steps within the budget; this separates what a step buys from how
    many steps the budget buys."""
    out = []
    for task in TASKS:
        if not any(r["task"] == task for r in runs):
            continue
        step = fewest_steps(runs, task)
        for method in METHODS:
            accuracy = [accuracy_at_step(r, step, bases[task]) for r in runs
                        if r["task"] == task and r["method"] == method]  # fmt: skip
            if not accuracy:
                continue
            params = {"task": task, "method": method, "seeds": len(accuracy), "step": step,
                      "token_budget": budget}  # fmt: skip
            mean, sd = mean_spread(accuracy)[:2]
            out.append(_row("sample_efficiency_steps", params, "accuracy_at_step_mean", mean))
            out.append(_row("sample_efficiency_steps", params, "accuracy_at_step_sd", sd))
    return out


def report(args) -> None:
    runs = read_runs(args.out / "runs.jsonl")
    if not runs:
        raise SystemExit(f"no runs in {args.out / 'runs.jsonl'}: run the benchmark first")
    bases = json.loads((args.out / "warm_starts.json").read_text())
    budget = max(r["token_budget"] for r in runs)
    rows = json_rows(summarize(runs, bases), budget) + paired(runs, budget)
    rows += at_equal_steps(runs, bases, budget)
    # exploratory: the pairs after equal optimizer steps
    steps = {task: fewest_steps(runs, task) for task in {r["task"] for r in runs}}
    by_steps = {"steps": lambda r: accuracy_at_step(r, steps[r["task"]], bases[r["task"]])}
    rows += paired(runs, budget, by_steps)
    print(sample_efficiency(Rows("sample_efficiency", rows)))
    print(sample_efficiency_paired(Rows("sample_efficiency", rows)))
    print(sample_efficiency_curve(Rows("sample_efficiency", rows)))
    print(sample_efficiency_seeds(Rows("sample_efficiency", rows)))
    print(sample_efficiency_steps(Rows("sample_efficiency", rows)))
    for path in plot(runs, bases, args.out):
        print(f"plot: {path}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


def main(argv: list[str] | None = None) -> None:
    def names(allowed):
        def parse(text: str) -> list[str]:
            items = [s.strip() for s in text.split(",") if s.strip()]
            bad = [s for s in items if s not in allowed]
            if bad:
                raise argparse.ArgumentTypeError(f"unknown {bad}; known: {', '.join(allowed)}")
            return items

        return parse

    def shard(text: str) -> tuple[int, int]:
        k, _, n = text.partition("/")
        if not (k.isdigit() and n.isdigit() and int(k) < int(n)):
            raise argparse.ArgumentTypeError(f"{text!r}: want K/N with 0 <= K < N, e.g. 0/2")
        return int(k), int(n)

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="runs.jsonl, warm starts, plots")
    parser.add_argument("--tasks", type=names(TASKS), default=list(TASKS))
    parser.add_argument("--methods", type=names(METHODS), default=list(METHODS))
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    parser.add_argument("--token_budget", type=int, default=200_000)
    parser.add_argument("--held_out", type=int, default=128, help="held-out problems")
    parser.add_argument("--k", type=int, default=4, help="samples per held-out problem")
    parser.add_argument("--eval_points", type=int, default=3, help="evaluations per run")
    parser.add_argument(
        "--shard", type=shard, default=(0, 1), help="K/N: this process's share of the runs"
    )
    parser.add_argument("--report", action="store_true", help="only summarize runs.jsonl")
    parser.add_argument("--json", type=Path, help="--report: rows in the common format")
    args = parser.parse_args(argv)
    if args.report:
        report(args)
    else:
        run_all(args)


if __name__ == "__main__":
    main()
