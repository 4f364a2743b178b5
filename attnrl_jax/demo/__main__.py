"""`python -m attnrl_jax.demo` (what `make demo` runs): AttnRL visibly learning on a CPU.

1. warm start: a tiny random Qwen2 (configs/demo.py) fine-tuned on step-by-step solutions of the
   built-in arithmetic task, saved in Hugging Face format (reused when the workdir has it);
2. held-out accuracy of the warm start (problems not in the training set, real grader);
3. AttnRL from the warm start with the real pipeline: sampler, scoring pass with FCI, ATB
   branching, ADS, one-step off-policy updates (a progress bar and one line per step);
4. held-out accuracy after RL; metrics.jsonl, plot.png and summary.json in the workdir.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import shutil
import time
from pathlib import Path

import ml_collections

from attnrl_jax.demo.report import plot_metrics, write_summary
from attnrl_jax.demo.warm_start import WARM_START_STEPS, load_or_build_warm_start
from attnrl_jax.eval.training import held_out_accuracy_fn
from attnrl_jax.rl.settings import EvalSection, RunConfig, resolve

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.py"


def load_config(path: Path = DEMO_CONFIG) -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location("demo_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def held_out_config(c: RunConfig, problems: int, k: int, seed: int | None = None) -> RunConfig:
    """Run config `c` with an eval section of avg@k on `problems` held-out problems of its
    built-in task (default demo), sampled like training (temperature, no top-p, response
    length) with `seed` (default c.seed): for eval/training.held_out_accuracy_fn."""
    held_out = EvalSection(
        every=c.eval.every, benchmarks=c.data.builtin_task or "demo", files=(), k=k,
        max_new_tokens=c.rollout.max_new_tokens, temperature=c.rollout.temperature, top_p=1.0,
        num_problems=problems,
    )  # fmt: skip
    return dataclasses.replace(c, seed=c.seed if seed is None else seed, eval=held_out)


def step_line(m: dict, total: int) -> str:
    return (
        f"step {m['step']:3d}/{total}: reward {m['reward']:.2f}, initial accuracy "
        f"{m['accuracy']:.2f}, valid ratio {m['valid_ratio']:.2f}, prompts "
        f"{m['prompt_batch_size']:3d}, sequences {m['sequences']:3d}, {m['time_step']:.1f} s"
    )


def main(argv: list[str] | None = None, config: ml_collections.ConfigDict | None = None) -> dict:
    """Runs the demo; returns summary.json's content. config: instead of configs/demo.py."""
    parser = argparse.ArgumentParser(description="AttnRL on a tiny model and a built-in task")
    parser.add_argument("--workdir", type=Path, default=Path("runs/demo"))
    parser.add_argument("--rl_steps", type=int, default=None, help="default: the demo config's")
    parser.add_argument(
        "--warm_start_steps", type=int, default=None,
        help=f"default: the task's recipe (demo: {WARM_START_STEPS}; demo/warm_start.RECIPES)",
    )  # fmt: skip
    parser.add_argument("--held_out", type=int, default=128, help="held-out problems")
    parser.add_argument(
        "--config", type=Path, default=DEMO_CONFIG, help="configs/demo_chain.py: the chain task"
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    workdir = args.workdir.resolve()
    print(f"attnrl-jax demo; everything goes to {workdir}")

    config = config or load_config(args.config)
    config.model.path = str(workdir / "warm_start")
    config.workdir = str(workdir / "rl")
    if args.rl_steps is not None:
        config.total_steps = args.rl_steps
    c = resolve(config)
    model, sft_seconds = load_or_build_warm_start(
        c, Path(c.model.path), steps=args.warm_start_steps
    )
    reused = "reused" if sft_seconds == 0 else f"trained in {sft_seconds:.0f} s"
    print(f"1. warm start ({reused}): {c.model.path}")

    from transformers import AutoTokenizer

    from attnrl_jax.sampling.eos import eos_ids

    tokenizer = AutoTokenizer.from_pretrained(c.model.path)
    k, temperature = 4, c.rollout.temperature
    eos = eos_ids(tokenizer, c.model.path, model.config.eos_token_id)
    accuracy = held_out_accuracy_fn(
        held_out_config(c, args.held_out, k), tokenizer, model.config, eos
    )
    before = accuracy(model.params())
    print(
        f"2. held-out accuracy before RL: {before:.3f} (avg@{k} at temperature {temperature} "
        f"on {args.held_out} problems outside the training set)"
    )

    from attnrl_jax.train import build_trainer

    if Path(c.workdir).exists():
        print(f"   starting RL afresh: removing the previous run in {c.workdir}")
        shutil.rmtree(c.workdir)
    print(
        f"3. AttnRL for {c.total_steps} steps (method {c.method.name}, off-policy {c.off_policy})"
    )
    from tqdm.auto import tqdm

    trainer = build_trainer(c, log_fn=lambda m: tqdm.write("   " + step_line(m, c.total_steps)))
    try:
        metrics = trainer.run(progress=True)
    finally:
        trainer.close()
    after = accuracy(trainer.params)
    gain = after - before
    print(f"4. held-out accuracy after RL: {after:.3f} ({gain * 100:+.1f} points)")

    plot = plot_metrics(metrics, before, after, workdir / "plot.png")
    wall = time.perf_counter() - start
    summary = {
        "accuracy_before": before,
        "accuracy_after": after,
        "accuracy_gain_points": 100 * gain,
        "accuracy_metric": f"avg@{k}, temperature {temperature}, {args.held_out} problems",
        "steps": trainer.step,
        "wall_seconds": wall,
        "warm_start_seconds": sft_seconds,
        "metrics": str(Path(c.workdir) / "metrics.jsonl"),
        "plot": str(plot),
    }
    path = write_summary(workdir / "summary.json", summary)
    print(f"   plot: {plot}\n   summary: {path}\n   metrics: {c.workdir}/metrics.jsonl")
    print(f"done in {wall:.0f} s")
    return summary


if __name__ == "__main__":
    main()
