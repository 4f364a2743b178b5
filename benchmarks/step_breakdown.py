"""Time per training step by phase: one-step off-policy, on-policy, split devices; tree packing.

Runs the real trainer (train.build_trainer, Trainer.train_step) for --steps steps per mode and
reports, per mode, the mean and median over steps 2..n of the trainer's phase times (metrics
time_<phase>, rl/trainer.py PHASES): sampling, scoring (log-probs, entropies and FCI), grading,
reference (the frozen policy's forward for the KL term) and update (the policy's forward,
backward and AdamW). Step 1 is reported apart: it compiles every program (CompileWatch measures
the seconds spent tracing and compiling) and, off-policy, also samples the first batch. Later
steps should compile nothing; their compile counts are reported so a regression shows.

Rewards: a random model never answers the demo task, so every problem would be filtered and no
update would run. The math grader therefore grades every response (its time is the "grading"
phase), but the reward used for training is the parity of the response text's length (mixed
0/1, deterministic). Tree packing: the token counts of both layouts (packed.tokens_processed)
on the trees each step actually trained, and time per trained token (the token weight sum,
the same work in either layout) of the update and of the whole step, which compares the
layouts end to end (run once with each; an idle machine):

    python benchmarks/step_breakdown.py --preset cpu --steps 8 --modes off_policy \
        --set train.packing=path --json benchmarks/results/step_packing_path_cpu.json
    python benchmarks/step_breakdown.py --preset cpu --steps 8 --modes off_policy \
        --set train.packing=tree --json benchmarks/results/step_packing_tree_cpu.json

    python benchmarks/step_breakdown.py --preset cpu --steps 8 \\
        --json benchmarks/results/step_breakdown_cpu.json
    python benchmarks/step_breakdown.py --preset gpu_0p5b --steps 3 --json step_breakdown_gpu.json

--set key=value overrides any config key (repeatable), after the preset.

Split devices (mode "split": one-step off-policy with mesh.rollout_devices = --rollout_devices,
default half of the devices): batch s + 1's initial responses are sampled on the rollout group
while batch s updates on the others (rl/trainer.py). Per step the metrics' timeline gives the
overlap: the fraction of the update span during which the initial sampling span was running
("hidden"). On a CPU, --cpu_devices 8 forces 8 host devices in each mode's process; they share
the machine's cores, so the overlap is real in time but not a parallel speed-up.

    python benchmarks/step_breakdown.py --preset cpu --steps 6 --cpu_devices 8 \
        --modes off_policy,on_policy,split --json benchmarks/results/step_overlap_cpu.json

Projection to the paper's 1.5B run (printed and stored as "projection"): the paper's AttnRL
step on 8 H100 (Table 3: 62.6 h / 500 steps = 451 s, with the one-step off-policy merged call)
is cut into this run's measured shares: sampling (sampler + scoring pass) and update (policy,
reference and proximal forwards) of the off-policy mode's steady steps, the rest (grading, ADS,
trees, host); the continuation share of sampling comes from the on-policy mode, whose two calls
are timed apart (or from the split mode's spans). With r of the 8 GPUs sampling, each phase's
time is assumed to scale with 1 / (its group's devices): step(r) = 451 s x [c 8/r + rest +
max(u 8/(8-r), i 8/r)] with c, i the continuation and initial sampling shares and u the update
share; the best r is reported, and the bound with devices to spare (each group as fast as all
8: c + rest + max(u, i)). The shares are this machine's and this model's: a CPU run with the
tiny model is update-bound, so the projection means something only from a GPU run of a large
preset (benchmarks/run_gpu_overlap.sh).
"""

from __future__ import annotations

import argparse
import ast
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from attnrl_jax.compile_watch import CompileWatch  # noqa: E402
from attnrl_jax.rl import trainer as trainer_module  # noqa: E402
from attnrl_jax.rl.packed import tokens_processed  # noqa: E402
from attnrl_jax.rl.phases import PHASES  # noqa: E402
from attnrl_jax.rl.settings import resolve  # noqa: E402
from attnrl_jax.train import build_trainer, make_reward_fn  # noqa: E402
from configs.demo import get_config  # noqa: E402

PRESETS = {
    # The demo config with longer responses and a few more prompts: a CPU step of ~1 s.
    "cpu": {
        "rollout.max_new_tokens": 64,
        "ads.initial_prompt_batch_size": 4,
        "ads.target_sequences": 80,
        "rollout.sampler_rows": 64,
    },
    # A random model with the Qwen2.5-0.5B body (24 layers, hidden 896, 14 heads, 2 KV heads,
    # MLP 4864; the demo tokenizer's 512-token vocabulary, so the LM head is tiny), bf16,
    # responses of up to 1,024 tokens.
    "gpu_0p5b": {
        "model.tiny_hidden_size": 896,
        "model.tiny_intermediate_size": 4864,
        "model.tiny_layers": 24,
        "model.tiny_heads": 14,
        "model.tiny_kv_heads": 2,
        "model.dtype": "bfloat16",
        "rollout.max_new_tokens": 1024,
        "rollout.min_token_distance": 128,
        "rollout.sampler_rows": 128,
        "rollout.score_batch_size": 16,
        "ads.initial_prompt_batch_size": 4,
        "ads.target_sequences": 80,
        "train.minibatch_problems": 4,
        "train.microbatch_rows": 8,
        "optim.learning_rate": 1e-6,
    },
}


def set_key(c, key: str, value) -> None:
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value


def parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


MODES = ("off_policy", "on_policy", "split")
UPDATE_PHASES = ("update", "reference", "proximal")  # the policy update's share of a step
# the paper's AttnRL 1.5B step: 62.6 h for 500 steps on 8 H100 (ALGORITHM.md section 9, Table 3)
PAPER_STEP_S, PAPER_DEVICES = 62.6 * 3600 / 500, 8


def make_config(preset: str, overrides: list[str], mode: str, workdir: str, rollout: int):
    c = get_config()
    for key, value in PRESETS[preset].items():
        set_key(c, key, value)
    for item in overrides:
        key, _, value = item.partition("=")
        set_key(c, key, parse_value(value))
    c.off_policy = mode != "on_policy"
    if mode == "split":
        c.mesh.rollout_devices = rollout
    c.workdir = workdir
    c.log.progress = False
    c.log.tensorboard = False
    return resolve(c)


def run_mode(c, steps: int) -> list[dict]:
    """steps train_steps; per step the trainer's metrics plus compile and packing counts."""
    grade, close_grader = make_reward_fn(c)

    def reward(texts, golds):
        grade(texts, golds)  # timed as "grading"; see the module docstring
        return np.array([len(t) % 2 == 0 for t in texts], float)

    trained = []
    real_run_updates = trainer_module.run_updates

    def recording_run_updates(params, opt_state, ref_params, problems, **kw):
        trained.append(list(problems))  # counted after the step, outside the update's timer
        return real_run_updates(params, opt_state, ref_params, problems, **kw)

    trainer_module.run_updates = recording_run_updates
    trainer = build_trainer(c, reward_fn=reward)
    out = []
    try:
        for _ in range(steps):
            trained.clear()
            with CompileWatch() as watch:
                start = time.perf_counter()
                m = trainer.train_step()
                wall = time.perf_counter() - start
            problems = trained[0] if trained else []
            m.update(
                wall_s=wall,
                compile_s=watch.seconds,
                compiles=len(watch.names),
                compiled=sorted(set(watch.names)),
                tokens_tree=tokens_processed(problems, "tree"),
                tokens_path=tokens_processed(problems, "path"),
            )
            out.append(m)
    finally:
        trainer.close()
        close_grader()
        trainer_module.run_updates = real_run_updates
    return out


def span_s(step: dict, name: str) -> float:
    a, b = step["timeline"].get(name, (0.0, 0.0))
    return b - a


def overlap_s(step: dict) -> float:
    """Seconds during which the update span and the initial sampling span both ran."""
    t = step["timeline"]
    update, sample = t["update"], t.get("sample_initial", (0.0, 0.0))
    return max(0.0, min(update[1], sample[1]) - max(update[0], sample[0]))


def summarise(steps: list[dict]) -> dict:
    """Phase statistics over steps 2..n that compiled nothing (a step that meets a new bucket,
    say a longer context, compiles; its compile time is reported, not averaged)."""
    later = [s for s in steps[1:] if s["compiles"] == 0]
    includes_compiles = not later  # too few steps to meet every bucket: say so, average all
    later = later or steps[1:]

    def stats(key):
        values = [s.get(key, 0.0) for s in later]  # a phase that never ran has no time_ key
        return {"mean": statistics.mean(values), "median": statistics.median(values)}

    tree = sum(s["tokens_tree"] for s in steps[1:])
    path = sum(s["tokens_path"] for s in steps[1:])
    # Trained tokens (the token weight sum: every response token once per path through it)
    # are the same work in either packing, so time per trained token compares the packings.
    trained = sum(s["trained_tokens"] for s in later)
    update_s = sum(s.get(f"time_{p}", 0.0) for s in later for p in UPDATE_PHASES)
    ratios = [s["slot_ratio"] for s in later if s.get("slot_ratio") is not None]
    return {
        "steps_averaged": len(later),
        "averages_include_compiles": includes_compiles,
        "steps_not_averaged": [i + 1 for i, s in enumerate(steps) if s not in later],
        "phase_s": {p: stats(f"time_{p}") for p in PHASES},
        "step_s": stats("time_step"),
        "other_s": {  # step time outside the five phases (ADS planning, tree building, ...)
            "mean": statistics.mean(
                s["time_step"] - sum(s.get(f"time_{p}", 0.0) for p in PHASES) for s in later
            )
        },
        "first_step": {
            "wall_s": steps[0]["wall_s"],
            "compile_s": steps[0]["compile_s"],
            "compiles": steps[0]["compiles"],
        },
        "later_steps_compiles": sum(s["compiles"] for s in steps[1:]),
        "later_steps_compile_s": sum(s["compile_s"] for s in steps[1:]),
        "later_steps_compiled": sorted({n for s in steps[1:] for n in s["compiled"]}),
        "tokens_generated": stats("tokens_generated"),
        "sampler_calls_per_step": stats("sampler_calls"),
        "spans_s": {
            name: statistics.mean(span_s(s, name) for s in later)
            for name in ("sample_initial", "sample_continuations", "score", "grade", "update")
        },
        # the measure: the fraction of the update span with sampling running beside it
        "update_hidden_under_sampling": statistics.mean(
            overlap_s(s) / max(span_s(s, "update"), 1e-9) for s in later
        ),
        # the gain: the fraction of the initial sampling taken off the critical path
        "initial_sampling_under_update": statistics.mean(
            overlap_s(s) / max(span_s(s, "sample_initial"), 1e-9) for s in later
        ),
        "prompt_batch_size": stats("prompt_batch_size"),
        "per_trained_token": {
            "trained_tokens": trained,
            "row_tokens": sum(s["row_tokens"] for s in later),
            "slot_ratio": statistics.mean(ratios) if ratios else None,
            # update + reference + proximal forwards, and the whole step, per 1,000 tokens
            "update_ms_per_1k": 1e6 * update_s / trained if trained else None,
            "step_ms_per_1k": 1e6 * sum(s["time_step"] for s in later) / trained
            if trained
            else None,
        },
        "packing": {
            "trained_with": None,  # filled by main
            "row_tokens_tree": tree,
            "row_tokens_path": path,
            "tokens_saved_by_tree": 1 - tree / path if path else None,
        },
    }


def project_paper(modes: dict) -> dict | None:
    """The paper's 1.5B step with split devices, from this run's phase shares (module doc)."""
    if "off_policy" not in modes:
        return None
    off = modes["off_policy"]
    phase = {p: off["phase_s"][p]["mean"] for p in PHASES}
    step = off["step_s"]["mean"]
    sampling = (phase["sampling"] + phase["scoring"]) / step
    update = (phase["update"] + phase["reference"] + phase["proximal"]) / step
    rest = max(0.0, 1.0 - sampling - update)
    source = "on_policy" if "on_policy" in modes else "split" if "split" in modes else None
    if source is None:
        return None
    spans = modes[source]["spans_s"]
    cont = spans["sample_continuations"] / (
        spans["sample_continuations"] + spans["sample_initial"] + 1e-12
    )
    c, i, d = sampling * cont, sampling * (1 - cont), PAPER_DEVICES
    by_r = {r: c * d / r + rest + max(update * d / (d - r), i * d / r) for r in range(1, d)}
    best = min(by_r, key=by_r.get)
    return {
        "paper_step_s": PAPER_STEP_S,
        "shares": {"sampling": sampling, "continuation_part_of_sampling": cont,
                   "update": update, "rest": rest, "continuation_share_from": source},
        "split_step_s_by_rollout_gpus": {r: PAPER_STEP_S * v for r, v in by_r.items()},
        "best_rollout_gpus": best,
        "projected_split_step_s": PAPER_STEP_S * by_r[best],
        "projected_with_devices_to_spare_s": PAPER_STEP_S * (c + rest + max(update, i)),
        "method": "paper step x measured shares; each phase scales with 1 / its group's devices",
    }  # fmt: skip


def _ms(value: float | None) -> str:
    return "n/a (nothing trained)" if value is None else f"{value:.1f}"


def markdown(result: dict) -> str:
    modes = result["modes"]
    head = "| phase (s/step, mean over steady steps) | " + " | ".join(modes) + " |"
    lines = [head, "|---" * (len(modes) + 1) + "|"]
    for p in PHASES:
        cells = [f"{modes[m]['phase_s'][p]['mean']:.3f}" for m in modes]
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    rows = [
        ("other (planning, trees, host)", lambda s: f"{s['other_s']['mean']:.3f}"),
        ("**step**", lambda s: f"**{s['step_s']['mean']:.3f}**"),
        ("sampler calls per step", lambda s: f"{s['sampler_calls_per_step']['mean']:.0f}"),
        ("update span hidden under initial sampling",
         lambda s: f"{100 * s['update_hidden_under_sampling']:.0f}%"),
        ("initial sampling span under the update",
         lambda s: f"{100 * s['initial_sampling_under_update']:.0f}%"),
        ("tokens generated per step", lambda s: f"{s['tokens_generated']['mean']:.0f}"),
        ("prompt batch size (mean)", lambda s: f"{s['prompt_batch_size']['mean']:.1f}"),
        ("first step: wall / compile (s)",
         lambda s: f"{s['first_step']['wall_s']:.1f} / {s['first_step']['compile_s']:.1f}"),
        ("steps averaged (of 2..n; the rest compiled)",
         lambda s: f"{s['steps_averaged']}{' (with compiles)' * s['averages_include_compiles']}"),
        ("compiles in steps 2..n (new buckets)",
         lambda s: f"{s['later_steps_compiles']} ({s['later_steps_compile_s']:.1f} s)"),
        ("row tokens tree / path (steps 2..n)",
         lambda s: f"{s['packing']['row_tokens_tree']} / {s['packing']['row_tokens_path']}"),
        ("tokens saved by tree packing",
         lambda s: f"{100 * (s['packing']['tokens_saved_by_tree'] or 0):.1f}%"),
        ("packing trained with", lambda s: str(s["packing"]["trained_with"])),
        ("trained tokens (steady steps)",
         lambda s: f"{s['per_trained_token']['trained_tokens']:.0f}"),
        ("**update ms per 1k trained tokens** (incl. reference, proximal)",
         lambda s: _ms(s["per_trained_token"]["update_ms_per_1k"])),
        ("step ms per 1k trained tokens", lambda s: _ms(s["per_trained_token"]["step_ms_per_1k"])),
    ]  # fmt: skip
    for name, cell in rows:
        lines.append(f"| {name} | " + " | ".join(cell(modes[m]) for m in modes) + " |")
    p = result.get("projection")
    if p:
        lines.append("")
        lines.append(
            f"Projected 1.5B step (paper: {p['paper_step_s']:.0f} s on 8 GPUs shared): "
            f"{p['projected_split_step_s']:.0f} s with {p['best_rollout_gpus']} of 8 GPUs "
            f"sampling; {p['projected_with_devices_to_spare_s']:.0f} s with devices to spare "
            f"(shares: sampling {p['shares']['sampling']:.2f}, of it continuations "
            f"{p['shares']['continuation_part_of_sampling']:.2f}; update "
            f"{p['shares']['update']:.2f}; rest {p['shares']['rest']:.2f})."
        )
    return "\n".join(lines)


def finish(result: dict) -> None:
    """Step-time ratios, the projection and the table of result["modes"]."""
    modes = list(result["modes"])
    steps_s = {m: result["modes"][m]["step_s"]["mean"] for m in modes}
    if {"off_policy", "on_policy"} <= set(modes):
        result["on_over_off_step_time"] = steps_s["on_policy"] / steps_s["off_policy"]
    if {"off_policy", "split"} <= set(modes):
        result["split_over_off_step_time"] = steps_s["split"] / steps_s["off_policy"]
    result["projection"] = project_paper(result["modes"])
    result["markdown"] = markdown(result)


def resummarise(path: Path) -> None:
    result = json.loads(path.read_text())
    for mode, steps in result["per_step"].items():
        packing = result["modes"][mode]["packing"]["trained_with"]
        result["modes"][mode] = summarise(steps)
        result["modes"][mode]["packing"]["trained_with"] = packing
    finish(result)
    print(result["markdown"])
    path.write_text(json.dumps(result, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--steps", type=int, default=8, help="per mode; step 1 is the warm-up")
    parser.add_argument("--modes", default="off_policy,on_policy", help=f"of {MODES}")
    parser.add_argument(
        "--rollout_devices", type=int, default=0, help="split mode (default: half the devices)"
    )
    parser.add_argument(
        "--cpu_devices", type=int, default=0, help="force this many CPU devices per mode"
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", default=None)
    parser.add_argument(
        "--resummarise", default=None, metavar="JSON",
        help="recompute a result file's summaries, projection and table from its per_step rows",
    )  # fmt: skip
    parser.add_argument("--only", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--only_out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.resummarise:
        resummarise(Path(args.resummarise))
        return
    if args.steps < 2:
        parser.error("--steps must be >= 2 (step 1 compiles and is not averaged)")
    modes = [m.strip() for m in args.modes.split(",")]
    bad = [m for m in modes if m not in MODES]
    if bad:
        parser.error(f"unknown modes {bad}; known: {', '.join(MODES)}")
    if args.cpu_devices:  # before this process's first JAX call; children inherit it
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "")
            + f" --xla_force_host_platform_device_count={args.cpu_devices}"
        )
    device = jax.devices()[0]
    rollout = args.rollout_devices or jax.device_count() // 2
    if "split" in modes and not 0 < rollout < jax.device_count():
        parser.error(f"split mode needs 2+ devices (have {jax.device_count()}); --cpu_devices 8")
    result = {
        "command": "python " + " ".join(sys.argv),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": device.platform,
            "device_kind": device.device_kind,
            "devices": jax.device_count(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "jax": jax.__version__,
        },
        "preset": {"name": args.preset, **PRESETS[args.preset]},
        "overrides": args.set,
        "rollout_devices": rollout if "split" in modes else 0,
        "modes": {},
        "per_step": {},
    }
    if args.only:  # child process: one mode, raw per-step metrics to args.only_out
        with tempfile.TemporaryDirectory() as workdir:
            c = make_config(args.preset, args.set, args.only, workdir, rollout)
            steps = run_mode(c, args.steps)
        Path(args.only_out).write_text(json.dumps({"steps": steps, "packing": c.train.packing}))
        return
    for mode in modes:
        # Each mode in a fresh process, so each pays (and reports) its own compiles.
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "steps.json"
            child = [sys.executable, __file__, *sys.argv[1:], "--only", mode, "--only_out", raw]
            subprocess.run([str(x) for x in child], check=True)
            data = json.loads(raw.read_text())
        steps = data["steps"]
        summary = summarise(steps)
        summary["packing"]["trained_with"] = data["packing"]
        result["modes"][mode] = summary
        result["per_step"][mode] = steps
        print(f"{mode}: {summary['step_s']['mean']:.3f} s/step", file=sys.stderr)
    finish(result)
    print(result["markdown"])
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
