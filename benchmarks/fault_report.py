"""Runs the fault-injection suite and writes its outcome table into README.md (RELIABILITY).

    python benchmarks/fault_report.py            # run the fault tests, write the JSON + table
    python benchmarks/fault_report.py --table    # rewrite the table from the saved JSON only
    python benchmarks/fault_report.py --check    # exit 1 when README's table differs from it
    python benchmarks/fault_report.py --rerun tests/test_gcs.py  # rerun one file, keep the rest

Every test of the SUITE files (tests/test_faults.py; gs:// on a local GCS emulator:
tests/test_gcs.py; 2 processes sharing a workdir: tests/test_shared_workdir.py) labelled
`@fault(what, outcome)` (tests/faults.py) is one injected fault (each parametrised case counts
once). Its required outcome is "survived" (the run ends with the
result of an undisturbed run, nothing lost) or "clear error" (one clear message, nothing the
user wrote deleted); a case whose test fails broke that guarantee and is counted as such.
The cases go to benchmarks/results/faults.json; the README table between
`<!-- reliability-table -->` and `<!-- /reliability-table -->` is generated from it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "faults.json"
README = ROOT / "README.md"
SUITE = ("tests/test_faults.py", "tests/test_gcs.py", "tests/test_shared_workdir.py")
BLOCK = re.compile(r"(<!-- reliability-table -->\n)(.*?)(<!-- /reliability-table -->)", re.S)


class Collector:
    """A pytest plugin: the fault label and result of every labelled test case."""

    def __init__(self):
        self.labels: dict[str, tuple[str, str]] = {}
        self.cases: dict[str, dict] = {}

    def pytest_collection_modifyitems(self, items):
        for item in items:
            label = getattr(getattr(item, "function", None), "fault", None)
            if label is not None:
                self.labels[item.nodeid] = label

    def pytest_runtest_logreport(self, report):
        if report.nodeid not in self.labels:
            return
        what, outcome = self.labels[report.nodeid]
        case = self.cases.setdefault(
            report.nodeid,
            {"test": report.nodeid, "fault": what, "outcome": outcome, "passed": True},
        )
        if report.failed or (report.when == "call" and report.skipped):
            case["passed"] = False


def run_suite(files: tuple[str, ...] = SUITE) -> dict:
    import os

    import pytest

    os.chdir(ROOT)
    collector = Collector()
    # the README check reads what this run writes: not part of the run
    skip = f"{SUITE[0]}::test_readme_reliability_table_matches_its_results"
    args = ["-q", "-p", "no:cacheprovider", "-W", "ignore", *files, "--deselect", skip]
    code = pytest.main(args, plugins=[collector])
    return {
        "suite": ", ".join(SUITE),
        "pytest_exit_code": int(code),
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {platform.system()}, CPU",
        "cases": [collector.cases[n] for n in collector.labels if n in collector.cases],
    }


def merge(saved: dict, files: list[str]) -> dict:
    """`saved` with the cases of `files` replaced by a new run of those files (suite order)."""
    new = run_suite(tuple(files))
    kept = [c for c in saved["cases"] if c["test"].split("::")[0] not in files]
    order = {f: i for i, f in enumerate(SUITE)}
    cases = sorted(kept + new["cases"], key=lambda c: order[c["test"].split("::")[0]])
    code = max(int(not all(c["passed"] for c in kept)), new["pytest_exit_code"])
    return dict(new, suite=", ".join(SUITE), cases=cases, pytest_exit_code=code)


def render(results: dict) -> str:
    """The markdown table: one row per fault kind, then the totals."""
    kinds: dict[str, dict] = {}
    for c in results["cases"]:
        k = kinds.setdefault(c["fault"], {"cases": 0, "survived": 0, "clear error": 0, "broken": 0})
        k["cases"] += 1
        k[c["outcome"] if c["passed"] else "broken"] += 1
    head = "| fault injected | cases | survived (correct result) | clear error | guarantee broken |"
    lines = [head, "|---|---:|---:|---:|---:|"]
    for name, k in kinds.items():
        lines.append(
            f"| {name} | {k['cases']} | {k['survived']} | {k['clear error']} | {k['broken']} |"
        )
    total = {key: sum(k[key] for k in kinds.values()) for key in ("cases", "survived")}
    total.update({key: sum(k[key] for k in kinds.values()) for key in ("clear error", "broken")})
    lines.append(
        f"| **all** | **{total['cases']}** | **{total['survived']}** | "
        f"**{total['clear error']}** | **{total['broken']}** |"
    )
    lost = total["broken"]
    return (
        "\n".join(lines)
        + f"\n\nRuns lost or silently wrong: {lost} of {total['cases']} injected faults "
        f"({results['suite']}, {results['date']}, {results['machine']}).\n"
    )


def replace_table(text: str, table: str) -> str:
    if not BLOCK.search(text):
        raise SystemExit(f"{README}: no <!-- reliability-table --> ... <!-- /reliability-table -->")
    return BLOCK.sub(lambda m: m[1] + table + m[3], text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--table", action="store_true", help="only rewrite the table from the JSON")
    mode.add_argument("--check", action="store_true", help="exit 1 if the README table differs")
    mode.add_argument(
        "--rerun", nargs="+", choices=SUITE, help="run these files; keep the others' saved cases"
    )
    args = parser.parse_args(argv)
    if args.rerun:
        merged = merge(json.loads(RESULTS.read_text()), args.rerun)
        RESULTS.write_text(json.dumps(merged, indent=1) + "\n")
    elif not (args.table or args.check):
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(run_suite(), indent=1) + "\n")
    text = README.read_text()
    new = replace_table(text, render(json.loads(RESULTS.read_text())))
    if args.check:
        if new != text:
            print(f"{README}: the RELIABILITY table differs from {RESULTS}", file=sys.stderr)
            return 1
        return 0
    README.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
