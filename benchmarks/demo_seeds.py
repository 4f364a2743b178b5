"""`make demo` over run seeds, every run from one shared warm start.

    python benchmarks/demo_seeds.py --out runs/demo_seeds --seeds 0,1,2
    python benchmarks/demo_seeds.py --out runs/demo_seeds --seeds 0,1,2 --set loss.tis_cap=0
    python benchmarks/demo_seeds.py --out ... --code ../demo_old   # another checkout's code

The warm start is built first in OUT/warm_start (the demo's own: configs/demo.py, seed 0, 600
supervised steps) unless --warm_start names one; every run links it into its own workdir, so
the demo reuses it and only the RL part and the two held-out evaluations run. A run's seed
(config.seed) sets RL sampling, data order and the held-out evaluation's sampling seed; the
task's problems (data.demo_seed) and the warm start do not change with it, so one seed gives the
same evaluation samples for the same weights. --code: the checkout whose attnrl_jax (and
configs/demo.py) runs, so an old commit can run from the same warm start; a row's warm_start is
the commit that built it (OUT/warm_start/built_by.txt). Each finished run is appended to
OUT/runs.jsonl as it ends; runs already there (same code commit, seed, --set, --tag and
--rl_steps) are skipped, so an interrupted sweep resumes.
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_override(text: str) -> tuple[str, object]:
    """'loss.tis_cap=0' -> ('loss.tis_cap', 0); values are Python literals, else strings."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise SystemExit(f"--set wants KEY=VALUE, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def apply_override(config, key: str, value: object) -> None:
    *parents, leaf = key.split(".")
    node = config
    for name in parents:
        node = node[name]
    node[leaf] = value  # a locked ConfigDict: a misspelt key is an error


def commit_of(code: Path) -> str:
    out = subprocess.run(
        ["git", "-C", str(code), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return out.stdout.strip() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated run seeds")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE config override")
    parser.add_argument("--code", type=Path, default=ROOT, help="checkout whose code runs")
    parser.add_argument("--warm_start", type=Path, default=None, help="default OUT/warm_start")
    parser.add_argument("--tag", default="", help="a label stored with each run")
    parser.add_argument("--rl_steps", type=int, default=None, help="default: the demo config's")
    args = parser.parse_args()
    code = args.code.resolve()
    sys.path.insert(0, str(code))  # before any attnrl_jax import: that checkout's package
    import attnrl_jax
    from attnrl_jax.demo.__main__ import load_config
    from attnrl_jax.demo.__main__ import main as demo_main
    from attnrl_jax.demo.warm_start import WARM_START_STEPS, load_or_build_warm_start
    from attnrl_jax.rl.settings import resolve

    assert Path(attnrl_jax.__file__).resolve().is_relative_to(code), attnrl_jax.__file__
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "runs.jsonl"
    done = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    commit = commit_of(code)
    overrides = [parse_override(s) for s in args.set]
    warm = (args.warm_start or out / "warm_start").resolve()
    if not (warm / "config.json").exists():  # what `make demo` builds: configs/demo.py, seed 0
        config = load_config(code / "configs" / "demo.py")
        config.model.path = str(warm)
        load_or_build_warm_start(resolve(config), warm, steps=WARM_START_STEPS)
        (warm / "built_by.txt").write_text(commit + "\n")
    built = warm / "built_by.txt"  # the commit whose code trained the warm start
    warm_label = built.read_text().strip() if built.exists() else "unknown"
    for seed in [int(s) for s in args.seeds.split(",")]:
        key = {"commit": commit, "seed": seed, "set": args.set, "tag": args.tag}
        key["rl_steps"] = args.rl_steps
        if any({k: d.get(k) for k in key} == key for d in done):
            print(f"skipping {key}: already in {log}")
            continue
        name = f"{commit}_{args.tag or 'default'}_{'_'.join(args.set) or 'base'}_s{seed}"
        workdir = out / name.replace("/", "-").replace("=", "-")
        workdir.mkdir(parents=True, exist_ok=True)
        link = workdir / "warm_start"
        if not link.exists():
            link.symlink_to(warm)
        config = load_config(code / "configs" / "demo.py")
        config.seed = seed
        for k, v in overrides:
            apply_override(config, k, v)
        steps = [] if args.rl_steps is None else ["--rl_steps", str(args.rl_steps)]
        summary = demo_main(["--workdir", str(workdir), *steps], config=config)
        metrics = [json.loads(line) for line in Path(summary["metrics"]).read_text().splitlines()]
        rewards = [m["reward"] for m in metrics if "reward" in m]
        row = key | {
            "code": str(code),
            "warm_start": warm_label,
            "before": summary["accuracy_before"],
            "after": summary["accuracy_after"],
            "gain_points": summary["accuracy_gain_points"],
            "steps": summary["steps"],
            "wall_seconds": summary["wall_seconds"],
            "reward_first10": sum(rewards[:10]) / max(len(rewards[:10]), 1),
            "reward_last10": sum(rewards[-10:]) / max(len(rewards[-10:]), 1),
        }
        with log.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row))


if __name__ == "__main__":
    main()
