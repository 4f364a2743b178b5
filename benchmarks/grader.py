"""Math grader: throughput of the two rewards, and agreement with the authors' hybrid reward.

The mixed set (seeded) is built from the bundled eval sets' gold answers in the paper's response
format (a ``<think>`` block, then the answer):
  exact       the gold boxed at the end                          correct
  equivalent  the gold in another form (``\\frac{2n}{2}``, ``n.0``) correct
  revised     a wrong box, "wait", then the gold boxed           correct (the last box wins)
  multi_box   each part of a multi-part gold in its own box      correct (hybrid only)
  unboxed     "The final answer is $gold$." without a box        correct (hybrid only, when
                                                                  Math-Verify reads the gold)
  perturbed   the gold with one digit changed                    incorrect
  multi_wrong multi-part gold, one part's digit changed, boxed   incorrect
  wrong       another problem's gold                             incorrect
  no_answer   no answer at all                                   incorrect
  adversarial exponent towers, 100 kB responses, deep nesting    incorrect, refused by the guards
  slow        ``(x+1)^{9999}`` vs ``(x+2)^{9999}``               incorrect, at the stage limit
Reported, with the pool (fresh per run, so parse caches start cold):
  - items/s of each reward ("boxed": the last box only, as before; "hybrid": the authors' order)
    on the whole mix, and without the slow items in the pool and serially in-process, the two
    rewards alternating ``--repeats`` times (best of each: other jobs' load varies); the
    fraction of each kind with the expected verdict;
  - ms per long response (8k tokens, 200 kB) for both rewards and Math-Verify's parse alone;
  - agreement of the hybrid reward with the authors' reward (``authors_grade``)
    on the mixed set and on the eval sets' golds (each gold form boxed: correct; another
    problem's gold boxed: incorrect), with every disagreement listed in the JSON.

The reference is the authors' reward reproduced with Math-Verify (benchmarks/grader_reference.py),
run in the same worker pool with a 15 s hard deadline (its own timeouts are 5 s per call).

    python benchmarks/grader.py --json benchmarks/results/grader_cpu.json [--n 4000] [--workers N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import sys
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attnrl_jax.rewards.batch import BatchResult, Grader  # noqa: E402
from attnrl_jax.rewards.math import grade  # noqa: E402
from attnrl_jax.rewards.normalize import canonical, normalize  # noqa: E402
from attnrl_jax.rewards.structure import parse_structure, split_top  # noqa: E402
from benchmarks.grader_reference import authors_grade  # noqa: E402

# the bundled eval sets (attnrl_jax.eval.benchmarks.BENCHMARK_DIR, named here: that module imports
# JAX, and the spawned workers re-import this script)
BENCHMARK_DIR = Path(__file__).resolve().parents[1] / "attnrl_jax" / "eval" / "benchmarks"
EVAL_SETS = ("aime24", "aime25", "amc23", "math500", "minerva", "olympiadbench")
MIX = {
    "exact": 0.27,
    "equivalent": 0.12,
    "revised": 0.05,
    "multi_box": 0.07,
    "unboxed": 0.06,
    "perturbed": 0.12,
    "multi_wrong": 0.04,
    "wrong": 0.19,
    "no_answer": 0.06,
    "adversarial": 0.02,
}
CORRECT = {"exact", "equivalent", "revised", "multi_box", "unboxed"}
HYBRID_ONLY = {"multi_box", "unboxed"}
REWARDS = ("boxed", "hybrid")
SLOW_SHARE = 0.002
REFERENCE_TIMEOUT_S = 15.0
ADVERSARIAL = [
    "\\boxed{9^{9^{9^{9}}}}",
    "\\boxed{" + "{" * 2000 + "1" + "}" * 2000 + "}",
    "y" * 100_000 + "\\boxed{1}",
    "\\boxed{100000!}",
    "\\boxed{1",
]
PAD = "Let me think step by step. " * 80


# --- the mixed set -----------------------------------------------------------------------------


def load_golds() -> list[list[str]]:
    """Every problem's accepted gold forms, from the bundled copies of the eval sets."""
    out = []
    for name in EVAL_SETS:
        for line in (BENCHMARK_DIR / f"{name}.jsonl").read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                out.append(row.get("answers") or [row["answer"]])
    return out


def other_form(gold: str, rng: random.Random) -> str:
    if re.fullmatch(r"\d+", gold):
        n = int(gold)
        return rng.choice([f"\\frac{{{2 * n}}}{{2}}", f"{n}.0", f"0{n}", f"{n} \\text{{ units}}"])
    # (\left.X\right. is left out: Math-Verify cannot parse it, so the reference's stand-in for
    # DeepScaleR's graders would count it wrong where DeepScaleR's normaliser would not)
    return rng.choice([f"${gold}$", f"\\displaystyle {gold}", f"\\; {gold}"])


def perturb(gold: str, rng: random.Random) -> str | None:
    """The gold with one digit changed, or None when it has no digit."""
    spots = [m.start() for m in re.finditer(r"\d", gold)]
    if not spots:
        return None
    i = rng.choice(spots)
    return gold[:i] + str((int(gold[i]) + rng.randint(1, 9)) % 10) + gold[i + 1 :]


def parts(gold: str) -> list[str]:
    """The top-level parts of a multi-part gold (a list or set), else []."""
    s = parse_structure(normalize(gold))
    if s.kind == "set":
        return list(s.items)
    if s.kind == "list" and len(split_top(gold, ",")) == len(s.items):
        return [p.strip() for p in split_top(gold, ",")]
    return []


def respond(answer_text: str, think_box: str = "0") -> str:
    return f"<think>{PAD}\\boxed{{{think_box}}}</think> {answer_text}"


def build(n: int, seed: int = 0) -> tuple[list[str], list[str], list[str]]:
    rng = random.Random(seed)
    pool = [forms[0] for forms in load_golds()]
    multi = [g for g in pool if len(parts(g)) >= 2]
    kinds = rng.choices(list(MIX), weights=list(MIX.values()), k=n)
    for i in rng.sample(range(n), max(1, int(SLOW_SHARE * n))):
        kinds[i] = "slow"
    responses, answers = [], []
    for kind in kinds:
        gold = rng.choice(multi if kind in ("multi_box", "multi_wrong") else pool)
        wrong = next(
            g for g in rng.sample(pool, 8) if canonical(normalize(g)) != canonical(normalize(gold))
        )
        if kind == "exact":
            resp = respond(f"So the answer is \\boxed{{{gold}}}.")
        elif kind == "equivalent":
            resp = respond(f"So the answer is \\boxed{{{other_form(gold, rng)}}}.")
        elif kind == "revised":
            resp = respond(f"First \\boxed{{{wrong}}}. Wait, that is wrong: \\boxed{{{gold}}}.")
        elif kind == "multi_box":
            resp = respond(
                "The answers are " + " and ".join(f"\\boxed{{{p}}}" for p in parts(gold))
            )
        elif kind == "unboxed":
            resp = respond(f"The final answer is ${gold}$.")
        elif kind == "perturbed":
            resp = respond(f"So the answer is \\boxed{{{perturb(gold, rng) or wrong}}}.")
        elif kind == "multi_wrong":
            ps = parts(gold)
            j = rng.randrange(len(ps))
            ps[j] = perturb(ps[j], rng) or wrong
            resp = respond("The answers are " + " and ".join(f"\\boxed{{{p}}}" for p in ps))
        elif kind == "wrong":
            resp = respond(f"So the answer is \\boxed{{{wrong}}}.")
        elif kind == "no_answer":
            resp = respond("I could not finish this one.")
        elif kind == "adversarial":
            resp, gold = rng.choice(ADVERSARIAL), "-7"
        else:  # slow
            resp, gold = respond("So the answer is \\boxed{(x+1)^{9999}}."), "(x+2)^{9999}"
        responses.append(resp)
        answers.append(gold)
    return responses, answers, kinds


def eval_gold_items() -> tuple[list[str], list[list[str]], list[bool]]:
    """Each gold form boxed against its problem (correct) and, once per problem, the next
    distinct problem's first gold form boxed against it (incorrect unless equal as strings)."""
    golds = load_golds()
    responses, answers, expected = [], [], []
    for i, forms in enumerate(golds):
        for f in forms:
            responses.append(respond(f"Therefore the answer is \\boxed{{{f}}}."))
            answers.append(forms)
            expected.append(True)
        other = golds[(i + 1) % len(golds)][0]
        responses.append(respond(f"Therefore the answer is \\boxed{{{other}}}."))
        answers.append(forms)
        expected.append(any(canonical(normalize(other)) == canonical(normalize(g)) for g in forms))
    return responses, answers, expected


# --- long responses: what the whole-text fallback costs -----------------------------------------


def long_response(chars: int, ending: str, seed: int = 0) -> str:
    """Prose with inline math and no ``</think>`` (a truncated or non-thinking response: the
    whole text is the answer region), about ``chars`` long, then ``ending``."""
    rng = random.Random(seed)
    parts, n = [], 0
    while n < chars:
        k = rng.randint(1, 99)
        part = rng.choice(
            [
                f"Then $x_{{{k}}} = \\frac{{{k}}}{{{k + 1}}}$, so the sum grows. ",
                f"We check $({k}+1)^2 = {(k + 1) ** 2}$ and move on. ",
                f"Let me think about case {k} again; it gives ${k}$ ways. ",
            ]
        )
        parts.append(part)
        n += len(part)
    return "".join(parts) + ending


def long_rows(row) -> None:
    """ms per item (median of 3, cold caches, after a warm-up import) of the hybrid and boxed
    rewards and of Math-Verify's parse alone, on 8k-token (~32 kB) and 200 kB responses with a
    wrong final box (so the fallback runs) or no box."""
    from math_verify import parse

    grade("So \\boxed{1}.", "2")  # imports Math-Verify and builds the parsers

    for chars in (32_000, 200_000):
        for ending, name in (
            ("So the answer is \\boxed{17}.", "wrong_box"),
            ("So the answer is $17$.", "unboxed"),
        ):
            text = long_response(chars, ending)
            for label, fn in (
                ("hybrid", lambda t=text: grade(t, "18")),
                ("boxed", lambda t=text: grade(t, "18", reward="boxed")),
                ("math_verify_parse", lambda t=text: parse(t, parsing_timeout=None)),
            ):
                times = []
                for _ in range(3):
                    clear_caches()
                    t0 = time.monotonic()
                    fn()
                    times.append(1000 * (time.monotonic() - t0))
                ms = sorted(times)[1]
                row("long_response_ms", ms, "ms", chars=chars, ending=name, grader=label)


# --- running -----------------------------------------------------------------------------------


def run_info(command: str) -> dict:
    names = ("math-verify", "sympy", "latex2sympy2_extended")
    return {
        "command": command,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "shared": True},
        "machine_note": "shared with other agents' jobs: rates are noisy; re-measure when idle",
        "versions": {name: version(name) for name in names},
    }


def clear_caches() -> None:
    """Cold parse caches for a serial run, as each pool run starts with."""
    from math_verify import parser

    from attnrl_jax.rewards import equivalence, symbolic

    for f in (symbolic.to_sympy, equivalence._mv_parse, parser.parse_latex_cached):
        f.cache_clear()
    parser.parse_expr_cached.cache_clear()


def run_pool(rs, gs, workers: int, timeout_s: float, **kw) -> tuple[float, BatchResult]:
    """A fresh pool per run (cold parse caches); returns (start-up s, result)."""
    start = time.monotonic()
    with Grader(timeout_s=timeout_s, num_workers=workers, **kw) as grader:
        grader.grade(["\\boxed{1}"] * workers, ["1"] * workers)
        return time.monotonic() - start, grader.grade(rs, gs)


def disagreements(name, responses, answers, kinds, ours, ref) -> list[dict]:
    return [
        {
            "set": name,
            "kind": k,
            "response_tail": r[-160:],
            "gold": a,
            "hybrid": o.correct,
            "hybrid_reason": o.reason,
            "authors": f.correct,
            "authors_reason": f.reason,
        }
        for r, a, k, o, f in zip(responses, answers, kinds, ours, ref, strict=True)
        if o.correct != f.correct
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=4000)
    p.add_argument("--workers", type=int, default=None, help="default: all CPUs")
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--serial", type=int, default=1000, help="items graded in-process per reward")
    p.add_argument("--repeats", type=int, default=2, help="alternating throughput runs per reward")
    p.add_argument("--json", type=Path, help="write the rows here")
    p.add_argument("--long_only", action="store_true", help="only the long-response timings")
    p.add_argument("--gold_items", type=int, default=0, help="first N eval-gold items (0: all)")
    args = p.parse_args()
    responses, answers, kinds = build(args.n)
    workers = args.workers or os.cpu_count() or 1
    params = {"n": args.n, "workers": workers, "timeout_s": args.timeout, "cpus": os.cpu_count()}
    info = run_info("python " + " ".join(sys.argv))
    rows = []

    def row(metric: str, value: float, unit: str, **extra) -> None:
        rows.append(
            {
                "benchmark": "grader",
                "system": "attnrl_jax",
                "params": {**params, **extra},
                "metric": metric,
                "value": round(value, 4),
                "unit": unit,
            }
        )

    if args.long_only:
        long_rows(row)
        report(rows, [], args.json, info)
        return
    fast = [i for i, k in enumerate(kinds) if k != "slow"]
    fast_rs, fast_gs = [responses[i] for i in fast], [answers[i] for i in fast]
    results = {}
    for reward in REWARDS:  # back to back: the same machine load for both
        startup, out = run_pool(responses, answers, workers, args.timeout, reward=reward)
        results[reward] = out
        row("pool_startup", startup, "s", reward=reward)
        row("items_per_s", out.items_per_s, "items/s", mode="parallel", reward=reward)
        row("timeouts", out.num_timeouts, "items", reward=reward)
        row("stage_timeouts", out.reasons.get("stage_timeout", 0), "items", reward=reward)
        for kind in sorted(set(kinds)):
            idx = [i for i, k in enumerate(kinds) if k == kind]
            want = kind in CORRECT and (reward == "hybrid" or kind not in HYBRID_ONLY)
            ok = sum(out.results[i].correct == want for i in idx)
            row(
                "expected_verdicts",
                ok / len(idx),
                "fraction",
                reward=reward,
                kind=kind,
                items=len(idx),
            )
    # Throughput without the slow items: the rewards alternate, `repeats` times each, and the
    # best rate of each counts (the machine's load from other jobs varies within a run).
    m = min(args.serial, len(fast))
    rates: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeats):
        for reward in REWARDS:
            _, out = run_pool(fast_rs, fast_gs, workers, args.timeout, reward=reward)
            rates.setdefault(("parallel_without_slow", reward), []).append(out.items_per_s)
            clear_caches()
            t0 = time.monotonic()
            for r, g in zip(fast_rs[:m], fast_gs[:m], strict=True):
                grade(r, g, reward=reward, time_budget_s=0.8 * args.timeout)
            rates.setdefault(("serial_without_slow", reward), []).append(
                m / (time.monotonic() - t0)
            )
    for (mode, reward), vals in rates.items():
        n_items = len(fast) if mode.startswith("parallel") else m
        runs = [round(v, 2) for v in vals]
        row("items_per_s", max(vals), "items/s", mode=mode, reward=reward, n=n_items, runs=runs)

    listed = []
    _, ref = run_pool(responses, answers, workers, REFERENCE_TIMEOUT_S, grade_fn=authors_grade)
    ours = results["hybrid"].results
    listed += disagreements("mixed", responses, answers, kinds, ours, ref.results)
    agree = sum(o.correct == f.correct for o, f in zip(ours, ref.results, strict=True))
    row("agreement_with_authors", agree / len(ours), "fraction", set="mixed", items=len(ours))
    boxed_agree = sum(
        o.correct == f.correct for o, f in zip(results["boxed"].results, ref.results, strict=True)
    )
    row(
        "agreement_with_authors_boxed_reward",
        boxed_agree / len(ours),
        "fraction",
        set="mixed",
        items=len(ours),
    )
    row("authors_accuracy", ref.accuracy, "fraction", set="mixed")
    row("hybrid_accuracy", results["hybrid"].accuracy, "fraction", set="mixed")

    g_resp, g_ans, g_exp = eval_gold_items()
    if args.gold_items:
        g_resp, g_ans, g_exp = (
            g_resp[: args.gold_items],
            g_ans[: args.gold_items],
            g_exp[: args.gold_items],
        )
    _, g_ours = run_pool(g_resp, g_ans, workers, args.timeout)
    _, g_ref = run_pool(g_resp, g_ans, workers, REFERENCE_TIMEOUT_S, grade_fn=authors_grade)
    g_kinds = ["gold" if e else "other_gold" for e in g_exp]
    listed += disagreements("eval_golds", g_resp, g_ans, g_kinds, g_ours.results, g_ref.results)
    agree = sum(o.correct == f.correct for o, f in zip(g_ours.results, g_ref.results, strict=True))
    row(
        "agreement_with_authors",
        agree / len(g_resp),
        "fraction",
        set="eval_golds",
        items=len(g_resp),
    )
    for name, res in (("hybrid", g_ours), ("authors", g_ref)):
        ok = sum(r.correct == e for r, e in zip(res.results, g_exp, strict=True))
        row(
            "expected_verdicts",
            ok / len(g_exp),
            "fraction",
            set="eval_golds",
            reward=name,
            items=len(g_exp),
        )

    long_rows(row)
    report(rows, listed, args.json, info)


def report(rows: list[dict], listed: list[dict], path: Path | None, info: dict) -> None:
    print(f"{'metric':<60}{'value':>12}  unit")
    for r in rows:
        keys = ("reward", "mode", "set", "kind", "chars", "ending", "grader")
        tags = ", ".join(str(r["params"][k]) for k in keys if k in r["params"])
        print(f"{r['metric'] + (f' ({tags})' if tags else ''):<60}{r['value']:>12}  {r['unit']}")
    print(f"{len(listed)} disagreements with the authors' reward")
    for d in listed:
        print(json.dumps(d)[:400])
    if path:
        out = {"run": info, "rows": rows, "disagreements": listed}
        path.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
