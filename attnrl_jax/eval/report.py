"""The evaluation report: report.json (every metric), report.md (a table), samples.jsonl.

report.json:

    {"model": DIR, "options": {max_new_tokens, temperature, top_p, seed},
     "benchmarks": {name: {"num_problems", "k", "avg@k", "pass@1", ..., "pass@k", "maj@1", ...,
                           "maj@k", "mean_response_tokens", "truncated"}},
     "average": {"pass@1": unweighted mean over benchmarks (the paper's "avg" column)},
     "num_samples": int, "wall_seconds": float}

Rates are fractions in [0, 1] in the JSON and percentages in the table.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from attnrl_jax.eval.run import EvalOptions, EvalResult

REPORT_JSON, REPORT_MD, SAMPLES = "report.json", "report.md", "samples.jsonl"


def report_dict(result: EvalResult, model: str, options: EvalOptions, wall_s: float) -> dict:
    opts = dataclasses.asdict(options)
    opts.pop("instruction")
    return {
        "model": model,
        "options": opts,
        "benchmarks": result.metrics,
        "average": {"pass@1": result.average()},
        "num_samples": len(result.samples),
        "wall_seconds": wall_s,
    }


def markdown_table(report: dict) -> str:
    """One row per benchmark: problems, k, avg@k, pass@k, maj@k, mean tokens, truncated."""
    lines = [
        "| benchmark | problems | k | avg@k % | pass@k % | maj@k % | mean tokens | truncated % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in report["benchmarks"].items():
        k = m["k"]
        lines.append(
            f"| {name} | {m['num_problems']} | {k} | {100 * m[f'avg@{k}']:.1f} | "
            f"{100 * m[f'pass@{k}']:.1f} | {100 * m[f'maj@{k}']:.1f} | "
            f"{m['mean_response_tokens']:.0f} | {100 * m['truncated']:.1f} |"
        )
    lines.append(f"| average (pass@1) | | | {100 * report['average']['pass@1']:.1f} | | | | |")
    return "\n".join(lines) + "\n"


def write_report(result: EvalResult, report: dict, output: str | Path) -> Path:
    """Writes report.json, report.md and samples.jsonl into `output` (created if needed)."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    (output / REPORT_JSON).write_text(json.dumps(report, indent=2) + "\n")
    (output / REPORT_MD).write_text(markdown_table(report))
    with open(output / SAMPLES, "w") as f:
        for r in result.samples:
            f.write(json.dumps(dataclasses.asdict(r)) + "\n")
    return output
