"""Agreement with a peer's equivalence suite: Math-Verify's own regression cases, and ours.

Reads the ``(gold, pred, expected)`` cases of the ``pytest.mark.parametrize`` lists in the test
files of a Math-Verify checkout (not bundled, not copied: give its ``tests`` folder) without
importing them (``ast.literal_eval`` of the literal lists), then grades each case three ways:
  math_verify  as the suite's own ``compare_strings`` does (the test function's ``match_types``,
               default latex + expr with boxed priority, its ``precision`` and
               ``allow_set_relation_comp`` when the case gives them)
  hybrid       ``grade(pred, gold)``, the authors' order (rewards/math.py)
  boxed        ``grade(pred, gold, reward="boxed")``, the last box only
  authors      the authors' reward reproduced in benchmarks/grader.py (``authors_grade``), on the
               same gold as ``grade``: what the paper's rules say
and reports how often each agrees with the suite's label. The gold handed to ``grade``: a gold
with boxes whole (``grade`` takes its last box, or last run of boxes), else its ``$...$``
contents, else the string Math-Verify reads from it. Cases of other shapes (string extraction,
configs, timeouts) are skipped. Every case where the hybrid, the authors' or Math-Verify's verdict
differs from the label is listed in the JSON by its id (the suite's text is not copied).

    python benchmarks/grader_peer.py --suite PATH/Math-Verify/tests --json OUT.json
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import re
import sys
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attnrl_jax.rewards.math import grade  # noqa: E402
from benchmarks.grader_reference import authors_grade  # noqa: E402

# Labels judged against the paper's rules (the authors' reward, ALGORITHM.md section 4), by case
# id in Math-Verify 5d148cf (2025-07-02). Agreement is also reported without them.
AGAINST_PAPER_RULES = {
    "test_all.py::test_latex_notation[5]": "label 0, but the authors' fallback "
    "(parse of the whole text, default config) reads the 9: reward 1",
    "test_all.py::test_latex_notation[6]": "as [5], with \\( \\)",
    "test_all.py::test_complex_math_expressions[7]": "label 1 only at the case's precision=2; "
    "0.33 is not 1/3 at the authors' default 6-decimal rounding (nor at our 1e-4)",
    "test_all.py::test_complex_math_expressions[13]": "as [7]: 2.6667 vs 8/3 at precision=2",
    "test_all.py::test_set_rel_assymetry[2]": "label 1 only with allow_set_relation_comp=True, "
    "which the authors' verify call does not set",
    "test_boxed.py::test_boxed[0]": "gold '35 cm ++++++ 4' read as the set {35 cm, 4}; "
    "the authors take a gold's last box: 4",
    "test_open_thoughts.py::test_open_thoughts[27]": "gold '\\boxed{1} papers and "
    "\\boxed{2} bins' read as {1, 2}; the authors take the last box: 2",
    "test_yujianll.py::test_string_extraction[9]": "label 1 for 1 - 1/e against 1 + 1/e: not equal",
}
_WRAPPED = re.compile(r"^\s*(\$\$|\$|\\\(|\\\[)(.*?)(\$\$|\$|\\\)|\\\])\s*$", re.S)
ARG_NAMES = ("gold", "pred")


def _match_types(fn: ast.FunctionDef) -> list[str]:
    """The ``match_types`` literal of the function's ``compare_strings`` call (default both)."""
    for node in ast.walk(fn):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "compare_strings":
            for kw in node.keywords:
                if kw.arg == "match_types":
                    return ast.literal_eval(kw.value)
    return ["latex", "expr"]


def read_cases(suite: Path) -> list[dict]:
    """Every literal (gold, pred, expected[, extra]) case of the suite's test functions."""
    cases = []
    for path in sorted(suite.glob("test_*.py")):
        tree = ast.parse(path.read_text())
        for fn in [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]:
            for dec in fn.decorator_list:
                if not (
                    isinstance(dec, ast.Call) and getattr(dec.func, "attr", "") == "parametrize"
                ):
                    continue
                names = [x.strip() for x in ast.literal_eval(dec.args[0]).split(",")]
                if names[:2] != list(ARG_NAMES) or names[2] not in ("expected", "result"):
                    continue
                try:
                    values = ast.literal_eval(dec.args[1])
                except ValueError:
                    continue
                for i, v in enumerate(values):
                    case = dict(zip(names, v, strict=True))
                    cases.append(
                        {
                            "where": f"{path.name}::{fn.name}[{i}]",
                            "gold": case["gold"],
                            "pred": case["pred"],
                            "label": bool(case[names[2]]),
                            "precision": case.get("precision", 6),
                            "allow_set_relation_comp": case.get("allow_set_relation_comp", False),
                            "match_types": _match_types(fn),
                        }
                    )
    return cases


def math_verify_verdict(case: dict) -> bool:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    configs = {
        "latex": LatexExtractionConfig(boxed_match_priority=0),
        "expr": ExprExtractionConfig(),
    }
    targets = [configs[t] for t in case["match_types"]]
    gold, pred = parse(case["gold"], targets), parse(case["pred"], targets)
    return bool(
        verify(
            gold,
            pred,
            float_rounding=case["precision"],
            allow_set_relation_comp=case["allow_set_relation_comp"],
        )
    )


def gold_answer(gold: str) -> tuple[str, str]:
    """(the gold for ``grade``, how it was taken: box | dollars | math_verify | as_is)."""
    if "\\boxed" in gold or "\\fbox" in gold:  # grade takes its last box (or run of boxes)
        return gold, "box"
    m = _WRAPPED.match(gold)
    if m and "$" not in m.group(2):
        return m.group(2).strip(), "dollars"
    from math_verify import parse

    parsed = parse(gold)
    if len(parsed) >= 2:
        return str(parsed[1]), "math_verify"
    return gold, "as_is"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", type=Path, required=True, help="the tests folder of Math-Verify")
    p.add_argument("--json", type=Path)
    p.add_argument("--source", default="", help="where the suite came from (recorded)")
    args = p.parse_args()
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    cases = read_cases(args.suite)
    if not cases:
        raise SystemExit(f"no (gold, pred, expected) cases under {args.suite}")
    counts = {"math_verify": 0, "hybrid": 0, "boxed": 0, "authors": 0}
    sources: dict[str, int] = {}
    listed = []
    for c in cases:
        g, how = gold_answer(c["gold"])
        sources[how] = sources.get(how, 0) + 1
        verdicts = {
            "math_verify": math_verify_verdict(c),
            "hybrid": grade(c["pred"], g).correct,
            "boxed": grade(c["pred"], g, reward="boxed").correct,
            "authors": authors_grade(c["pred"], g).correct,
        }
        for k, v in verdicts.items():
            counts[k] += v == c["label"]
        if any(verdicts[k] != c["label"] for k in ("hybrid", "math_verify", "authors")):
            listed.append({"where": c["where"], "label": c["label"], **verdicts})
    n = len(cases)
    summary = {k: {"agree": v, "n": n, "fraction": round(v / n, 4)} for k, v in counts.items()}
    reviewed = {d["where"]: d for d in listed if d["where"] in AGAINST_PAPER_RULES}
    for k, v in counts.items():
        kept = v - sum(d[k] == d["label"] for d in reviewed.values())
        m = n - len(reviewed)
        summary[k].update(agree_without_reviewed=kept, n_without_reviewed=m)
        print(
            f"{k:<12} agrees with the label on {v}/{n} ({v / n:.4f}); without the "
            f"{len(reviewed)} labels judged against the paper's rules {kept}/{m} ({kept / m:.4f})"
        )
    for d in listed:
        d["review"] = AGAINST_PAPER_RULES.get(d["where"], "")
    print("gold taken by:", sources)
    if args.json:
        out = {
            "command": "python " + " ".join(sys.argv),
            "source": args.source,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "versions": {k: version(k) for k in ("math-verify", "sympy")},
            "summary": summary,
            "gold_sources": sources,
        }
        args.json.write_text(json.dumps({**out, "cases": listed}, indent=1) + "\n")


if __name__ == "__main__":
    main()
