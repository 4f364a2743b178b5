"""Math grader throughput: items/s of the parallel ``Grader`` on 10,000 mixed responses.

The mix (seeded) is built from the shared eval sets' gold answers, as an RL step would see it:
  exact       the gold boxed at the end of a ~2 kB response with a </think> block
  equivalent  the gold in another form (``\\frac{2n}{2}``, ``n.0``, ``$...$``): sympy path
  wrong       another problem's gold: every stage runs, Math-Verify included
  no_answer   no box at all
  adversarial exponent towers, 100 kB responses, deep nesting: refused by the guards
  slow        ``(x+1)^{9999}`` vs ``(x+2)^{9999}``: runs until the in-process stage limit
Reported: items/s of the whole mix (the slow items cost a worker the 4 s stage budget each), of
the mix without them, and of the serial in-process ``grade`` on 2,000 of those (the no-pool
baseline). Each run starts cold (a fresh pool, fresh parse caches); the pool's start-up time
(spawned workers importing sympy); and whether each kind got the expected verdict.

    python benchmarks/grader.py --json grader.json [--n 10000] [--workers N] [--timeout 5]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import time
from pathlib import Path

from attnrl_jax.rewards.batch import BatchResult, Grader
from attnrl_jax.rewards.math import grade
from attnrl_jax.rewards.normalize import canonical, normalize

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FALLBACK_GOLDS = ["25", "\\frac{3}{4}", "2\\sqrt{2}", "(1, 2)", "\\{1, 3\\}", "x^2+1", "9.6"]
MIX = {"exact": 0.40, "equivalent": 0.20, "wrong": 0.30, "no_answer": 0.078, "adversarial": 0.02}
SLOW_SHARE = 0.002
ADVERSARIAL = [
    "\\boxed{9^{9^{9^{9}}}}",
    "\\boxed{" + "{" * 2000 + "1" + "}" * 2000 + "}",
    "y" * 100_000 + "\\boxed{1}",
    "\\boxed{100000!}",
    "\\boxed{1",
]


def load_golds() -> list[str]:
    golds = []
    for path in sorted(DATA.glob("*.jsonl")) + sorted(DATA.glob("attnrl_eval/*.jsonl")):
        golds += [json.loads(line)["answer"] for line in path.read_text().splitlines() if line]
    return golds or FALLBACK_GOLDS


def other_form(gold: str, rng: random.Random) -> str:
    if re.fullmatch(r"\d+", gold):
        n = int(gold)
        return rng.choice([f"\\frac{{{2 * n}}}{{2}}", f"{n}.0", f"0{n}", f"{n} \\text{{ units}}"])
    return rng.choice([f"${gold}$", f"\\displaystyle {gold}", f"\\left.{gold}\\right."])


def build(n: int, seed: int = 0) -> tuple[list[str], list[str], list[str]]:
    rng = random.Random(seed)
    golds = load_golds()
    pad = "Let me think step by step. " * 80
    kinds = rng.choices(list(MIX), weights=list(MIX.values()), k=n)
    for i in rng.sample(range(n), max(1, int(SLOW_SHARE * n))):
        kinds[i] = "slow"
    responses, answers = [], []
    for kind in kinds:
        gold = rng.choice(golds)
        norm_gold = canonical(normalize(gold))
        if kind == "exact":
            box = gold
        elif kind == "equivalent":
            box = other_form(gold, rng)
        elif kind == "wrong":
            others = [g for g in rng.sample(golds, 8) if canonical(normalize(g)) != norm_gold]
            box = others[0]
        elif kind == "slow":
            box, gold = "(x+1)^{9999}", "(x+2)^{9999}"
        if kind == "no_answer":
            resp = f"<think>{pad}</think> The answer is {gold}."
        elif kind == "adversarial":
            resp, gold = rng.choice(ADVERSARIAL), "-7"
        else:
            resp = f"<think>{pad}\\boxed{{0}}</think> So the answer is \\boxed{{{box}}}."
        responses.append(resp)
        answers.append(gold)
    return responses, answers, kinds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--workers", type=int, default=None, help="default: all CPUs")
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--json", type=Path, help="write the rows here")
    args = p.parse_args()
    responses, answers, kinds = build(args.n)
    workers = args.workers or os.cpu_count() or 1
    params = {"n": args.n, "workers": workers, "timeout_s": args.timeout, "cpus": os.cpu_count()}
    rows = []

    def row(metric: str, value: float, unit: str, **extra) -> None:
        rows.append(
            {
                "benchmark": "grader",
                "system": "attnrl_jax",
                "params": {**params, **extra},
                "metric": metric,
                "value": round(value, 3),
                "unit": unit,
            }
        )

    def run_pool(rs: list[str], gs: list[str]) -> tuple[float, BatchResult]:
        """A fresh pool per run, so parse caches start cold; returns (start-up s, result)."""
        start = time.monotonic()
        with Grader(timeout_s=args.timeout, num_workers=workers) as grader:
            grader.grade(["\\boxed{1}"] * workers, ["1"] * workers)
            return time.monotonic() - start, grader.grade(rs, gs)

    startup, out = run_pool(responses, answers)
    row("pool_startup", startup, "s")
    fast = [i for i, k in enumerate(kinds) if k != "slow"]
    _, out_fast = run_pool([responses[i] for i in fast], [answers[i] for i in fast])
    row("items_per_s", out.items_per_s, "items/s", mode="parallel")
    row("elapsed", out.elapsed_s, "s", mode="parallel")
    row("items_per_s", out_fast.items_per_s, "items/s", mode="parallel_without_slow", n=len(fast))
    row("accuracy", out.accuracy, "fraction")
    row("timeouts", out.num_timeouts, "items")
    row("stage_timeouts", out.reasons.get("stage_timeout", 0), "items")
    ok = {k: 0 for k in MIX} | {"slow": 0}
    for k, r in zip(kinds, out.results, strict=True):
        ok[k] += r.correct == (k in ("exact", "equivalent"))
    for k in ok:
        total = kinds.count(k)
        row(f"expected_verdicts_{k}", ok[k] / total if total else 1.0, "fraction", items=total)

    m = min(2000, len(fast))
    t0 = time.monotonic()
    for i in fast[:m]:
        grade(responses[i], answers[i], time_budget_s=0.8 * args.timeout)
    row("items_per_s", m / (time.monotonic() - t0), "items/s", mode="serial_without_slow", n=m)

    print(f"{'metric':<34}{'value':>12}  unit")
    for r in rows:
        label = r["metric"] + (f" ({r['params']['mode']})" if "mode" in r["params"] else "")
        print(f"{label:<34}{r['value']:>12}  {r['unit']}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
