"""Which warm start learns the chain task? Variants of model size and supervised recipe.

    python benchmarks/chain_warm_start.py --out OUT --name L4 --layers 4 --steps 800

Builds one warm start of configs/demo_chain.py with the given model size and recipe
(demo/warm_start.Recipe) into OUT/NAME, then measures what the mechanism check needs it to
have learned: held-out accuracy (avg@k at temperature 1, problems outside the training set, as
`make demo` measures it) and greedy next-token accuracy by the role of the token on held-out gold
solutions (benchmarks/mechanism.role_accuracy: name, definition, copied value, result). Appends
one JSON line per variant to OUT/variants.jsonl (settings, loss every 50 steps, seconds, the
measurements; with --checkpoint_every N also the model every N steps, saved into
OUT/NAME_steps/STEP, and its next-token accuracy by role: one run's learning curve); --report
prints them as a markdown table (BENCHMARKS.md's chain_warm_start), --report --json writes
them as rows for benchmarks/tables.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIG = ROOT / "configs" / "demo_chain.py"


def build_and_measure(args) -> dict:
    import jax
    from transformers import AutoTokenizer

    from attnrl_jax.data.builtin_tasks import builtin_task
    from attnrl_jax.data.chain_task import held_out_chains
    from attnrl_jax.data.prompts import encode_prompts
    from attnrl_jax.demo.__main__ import held_out_config, load_config
    from attnrl_jax.demo.warm_start import build_warm_start, recipe_for
    from attnrl_jax.eval.training import held_out_accuracy_fn
    from attnrl_jax.models import load_pretrained, save_pretrained
    from attnrl_jax.models.lm import from_params
    from attnrl_jax.rl.settings import resolve
    from attnrl_jax.sampling.eos import eos_ids
    from attnrl_jax.train import tiny_model_config
    from benchmarks.mechanism import role_accuracy

    config = load_config(CONFIG)
    path = args.out / args.name
    config.model.path = str(path)
    config.workdir = str(args.out / "unused")
    for key, value in (("tiny_layers", args.layers), ("tiny_hidden_size", args.hidden),
                       ("tiny_heads", args.heads), ("tiny_kv_heads", args.kv_heads)):  # fmt: skip
        if value is not None:
            config.model[key] = value
    if args.problems is not None:
        config.data.num_demo_problems = args.problems
    c = resolve(config)
    base = recipe_for("chain")
    changes = {
        k: getattr(args, k)
        for k in (
            "steps",
            "batch_size",
            "learning_rate",
            "slip_rate",
            "clean_fraction",
            "short_fraction",
            "warmup_steps",
        )
        if getattr(args, k) is not None
    }
    recipe = dataclasses.replace(base, **changes)
    losses: list[tuple[int, float]] = []
    recent: list[float] = []
    held = held_out_chains(args.role_problems, c.data.num_demo_problems, c.data.demo_seed)
    solutions = [s for _, s, _ in held]
    task_tokenizer = builtin_task("chain").tokenizer(c.model.tiny.vocab_size)
    cfg = tiny_model_config(c, len(task_tokenizer))
    held_prompts = encode_prompts(task_tokenizer, [p.problem for p, _, _ in held])
    checkpoints: list[dict] = []
    checkpoint_seconds = [0.0]

    def log(step: int, loss: float) -> None:
        recent.append(loss)
        if step % 50 == 0 or step == recipe.steps:
            losses.append((step, loss))
            mean = sum(recent[-50:]) / len(recent[-50:])
            print(f"[{args.name}] step {step} loss {loss:.3f} mean50 {mean:.3f}", flush=True)

    def checkpoint(step: int, params) -> None:
        # save the intermediate model and measure what it has learned by role (cheap: one
        # forward); the seconds this takes are not counted as the warm start's
        start = time.perf_counter()
        model = from_params(cfg, jax.device_get(params))
        save_pretrained(
            model, args.out / f"{args.name}_steps" / str(step), tokenizer=task_tokenizer
        )
        roles = role_accuracy(model, task_tokenizer, held_prompts, solutions)
        checkpoints.append({"step": step, "roles": roles})
        checkpoint_seconds[0] += time.perf_counter() - start
        print(f"[{args.name}] step {step} roles "
              + " / ".join(f"{v[0]:.2f}" for v in roles.values()), flush=True)  # fmt: skip

    every = args.checkpoint_every
    seconds = build_warm_start(
        c, path, recipe=recipe, log=log, checkpoint=(every, checkpoint) if every else None
    )
    seconds -= checkpoint_seconds[0]
    print(f"[{args.name}] {recipe.steps} steps in {seconds:.0f} s; loss {losses[-1]}", flush=True)
    model = load_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    start = time.perf_counter()
    eos = eos_ids(tokenizer, str(path), model.config.eos_token_id)
    accuracy = held_out_accuracy_fn(
        held_out_config(c, args.held_out, args.k), tokenizer, model.config, eos
    )(model.params())
    prompts = encode_prompts(tokenizer, [p.problem for p, _, _ in held])
    roles = role_accuracy(model, tokenizer, prompts, solutions)
    print(f"[{args.name}] held-out accuracy {accuracy:.3f}; roles {roles}", flush=True)
    t = c.model.tiny
    return {
        "name": args.name,
        "model": {
            "layers": t.layers,
            "hidden": t.hidden_size,
            "heads": t.heads,
            "kv_heads": t.kv_heads,
        },  # fmt: skip
        "problems": c.data.num_demo_problems,
        "recipe": dataclasses.asdict(recipe),
        "seconds": seconds,
        "eval_seconds": time.perf_counter() - start,
        "loss": losses,
        "accuracy": accuracy,
        "accuracy_metric": f"avg@{args.k}, temperature {c.rollout.temperature}, "
        f"{args.held_out} held-out problems",
        "roles": roles,
        "checkpoints": checkpoints,
        "note": args.note,
    }


def json_rows(path: Path) -> list[dict]:
    """OUT/variants.jsonl as rows in the benchmarks' common format (table_defs.chain_warm_start)."""
    rows = []
    for line in path.read_text().splitlines():
        r = json.loads(line)
        params = {"variant": r["name"], **r["model"], "problems": r["problems"], **r["recipe"],
                  "accuracy_metric": r["accuracy_metric"], "note": r["note"]}  # fmt: skip
        metrics = [("held_out_accuracy", r["accuracy"], "fraction"),
                   ("final_loss", r["loss"][-1][1], "nats/token"),
                   ("warm_start_seconds", r["seconds"], "s")]  # fmt: skip
        metrics += [(f"role_accuracy_{k.replace(' ', '_')}", v[0], "fraction")
                    for k, v in r["roles"].items()]  # fmt: skip
        rows += [
            {"benchmark": "chain_warm_start", "system": "attnrl_jax", "params": params,
             "metric": metric, "value": value, "unit": unit}
            for metric, value, unit in metrics
        ]  # fmt: skip
        # the learning curve (--checkpoint_every): the loss of the batch at that step and the
        # intermediate model's next-token accuracy by role
        loss_at = {step: loss for step, loss, *_ in r["loss"]}
        for point in r.get("checkpoints", []):
            at = params | {"step": point["step"]}
            metrics = [("checkpoint_loss", loss_at.get(point["step"]), "nats/token")]
            metrics += [(f"checkpoint_role_accuracy_{k.replace(' ', '_')}", v[0], "fraction")
                        for k, v in point["roles"].items()]  # fmt: skip
            rows += [
                {"benchmark": "chain_warm_start", "system": "attnrl_jax", "params": at,
                 "metric": metric, "value": value, "unit": unit}
                for metric, value, unit in metrics
            ]  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--name", default="variant")
    parser.add_argument("--report", action="store_true", help="print the table of OUT's variants")
    parser.add_argument("--json", type=Path, help="with --report: rows in the common format")
    parser.add_argument("--layers", type=int)
    parser.add_argument("--hidden", type=int)
    parser.add_argument("--heads", type=int)
    parser.add_argument("--kv_heads", type=int)
    parser.add_argument("--problems", type=int, help="training problems (data.num_demo_problems)")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--batch_size", type=int)
    parser.add_argument("--learning_rate", type=float)
    parser.add_argument("--slip_rate", type=float)
    parser.add_argument("--clean_fraction", type=float)
    parser.add_argument("--short_fraction", type=float, help="curriculum: chains of 2-5 first")
    parser.add_argument("--warmup_steps", type=int)
    parser.add_argument(
        "--checkpoint_every",
        type=int,
        default=0,
        help="save the model every N steps into OUT/NAME_steps/STEP and measure its next-token "
        "accuracy by role (the run's learning curve)",
    )
    parser.add_argument("--held_out", type=int, default=128)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--role_problems", type=int, default=64)
    parser.add_argument("--note", default="")
    args = parser.parse_args(argv)
    log = args.out / "variants.jsonl"
    if args.report:
        from benchmarks.table_defs import Rows, chain_warm_start, chain_warm_start_curve

        rows = json_rows(log)
        print(chain_warm_start(Rows(log.name, rows)))
        print(chain_warm_start_curve(Rows(log.name, rows)))
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    row = build_and_measure(args)
    with log.open("a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
