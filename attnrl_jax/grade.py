"""Grade math answers: the command-line contract of the reward.

    python -m attnrl_jax.grade --input IN.jsonl --output OUT.jsonl [--timeout S] [--workers N]
        [--reward hybrid|boxed]

Each non-blank input line is a JSON object with "response" (str) and "answer" (a gold string or a
list of accepted forms). Each output line is the input object plus "correct", "extracted" and
"reason", in input order. The whole input is checked first: a malformed line stops the run with
one message naming the line and nothing is written. Output is written to a temporary file and
renamed, so it is complete or absent. A summary (n, accuracy, timeouts) goes to stderr.
--reward: "hybrid" (default; the authors' order: last box, then Math-Verify over the whole answer
text) or "boxed" (the last box only); see rewards/math.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from attnrl_jax.data.sources import DataError, read_json_lines
from attnrl_jax.rewards.batch import Grader


class GradeInputError(ValueError):
    """A problem with the input file: names the file and line."""


def read_input(path: Path) -> list[dict]:
    """The JSON objects of every non-blank line, validated."""
    try:
        lines = read_json_lines(path)
    except DataError as e:
        raise GradeInputError(str(e)) from None
    rows = []
    for n, obj in lines:
        where = f"{path} line {n}"
        if not isinstance(obj.get("response"), str):
            raise GradeInputError(f"{where}: 'response' must be a string")
        ans = obj.get("answer")
        ok = isinstance(ans, str) or (
            isinstance(ans, list) and ans and all(isinstance(a, str) for a in ans)
        )
        if not ok:
            raise GradeInputError(f"{where}: 'answer' must be a string or a list of strings")
        rows.append(obj)
    return rows


def write_atomic(path: Path, rows: list[dict]) -> None:
    """Write JSON lines to a temporary file in the same folder, then rename it into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent or ".", prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")  # ASCII-escaped: lone surrogates stay writable
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--input", type=Path, required=True)
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per item (hard deadline)")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: CPUs)")
    p.add_argument("--reward", choices=("hybrid", "boxed"), default="hybrid")
    args = p.parse_args(argv)
    if args.timeout <= 0 or (args.workers is not None and args.workers < 1):
        p.error("--timeout must be > 0 and --workers >= 1")
    try:
        rows = read_input(args.input)
    except GradeInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with Grader(timeout_s=args.timeout, num_workers=args.workers, reward=args.reward) as grader:
        out = grader.grade([r["response"] for r in rows], [r["answer"] for r in rows])
    for r, g in zip(rows, out.results, strict=True):
        r.update(correct=g.correct, extracted=g.extracted, reason=g.reason)
    write_atomic(args.output, rows)
    print(
        f"n={len(rows)} accuracy={out.accuracy:.4f} timeouts={out.num_timeouts} "
        f"errors={out.num_errors} ({out.items_per_s:.0f} items/s)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
