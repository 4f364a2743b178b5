"""Regenerates the tables of BENCHMARKS.md from the raw rows in benchmarks/results/.

    python benchmarks/tables.py            # rewrite every marked table in place
    python benchmarks/tables.py --check    # exit 1 naming each table that differs (for CI)

A generated table sits between `<!-- table: NAME -->` and `<!-- /table -->`; NAME is a key of
table_defs.TABLES, which says which result files the table reads and how it prints them. The
text around the markers (commands, machine, date, discussion) is hand-written and left alone.
Exit status: 0 done / up to date, 1 tables differ (--check), 2 bad markers or missing files.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.table_defs import TABLES, Rows, Table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "BENCHMARKS.md"
RESULTS = Path(__file__).resolve().parent / "results"

OPEN = re.compile(r"<!-- table: ?(.*?) -->")
CLOSE = "<!-- /table -->"
BLOCK = re.compile(r"(<!-- table: (?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)


class TableError(Exception):
    """Bad markers, unknown table names, missing or unreadable result files."""


def find_tables(text: str) -> list[re.Match]:
    """The marked blocks of the document, in order; TableError if the markers do not pair up."""
    blocks = list(BLOCK.finditer(text))
    opens, closes = len(OPEN.findall(text)), text.count(CLOSE)
    nested = [m["name"] for m in blocks if OPEN.search(m["body"])]
    if not (len(blocks) == opens == closes) or nested:
        raise TableError(
            f"table markers do not pair up: {opens} '<!-- table: NAME -->' (NAME of letters, "
            f"digits, _ . -, then a newline), {closes} '{CLOSE}', {len(blocks)} well-formed "
            f"blocks"
            + (f"; unclosed before the next opener: {', '.join(nested)}" if nested else "")
        )
    return blocks


def _load(path: Path):
    data = json.loads(path.read_text())
    return Rows(path.name, data) if isinstance(data, list) else data


def load_sources(table: Table, results: Path) -> list:
    """The table's source files, loaded; a glob source gives a list (sorted by name)."""
    out = []
    for source in table.sources:
        if "*" in source:
            out.append([_load(p) for p in sorted(results.glob(source))])
        else:
            out.append(_load(results / source))
    return out


def _missing(table: Table, results: Path) -> list[str]:
    return [
        source
        for source in table.sources
        if not (any(results.glob(source)) if "*" in source else (results / source).is_file())
    ]


def render(names: list[str], results: Path, tables: dict[str, Table] = TABLES) -> dict[str, str]:
    """name -> generated markdown (no trailing newline). All unknown names, then all missing
    files, are reported in one TableError."""
    unknown = sorted({n for n in names if n not in tables})
    if unknown:
        raise TableError(
            f"unknown table name(s) in the markers: {', '.join(unknown)} "
            f"(known: {', '.join(tables)}; add new ones to TABLES in benchmarks/table_defs.py)"
        )
    missing = sorted({f"{s} (table {n})" for n in names for s in _missing(tables[n], results)})
    if missing:
        raise TableError(f"missing result file(s) in {results}: {', '.join(missing)}")
    out = {}
    for name in dict.fromkeys(names):
        try:
            out[name] = tables[name].render(*load_sources(tables[name], results))
        except (LookupError, ValueError, TypeError) as e:  # KeyError/IndexError are LookupErrors
            raise TableError(f"table {name}: cannot build it from its rows: {e!r}") from e
    return out


def regenerate(text: str, results: Path) -> tuple[str, list[str]]:
    """The document with every marked table regenerated, and the names of those that changed."""
    blocks = find_tables(text)
    generated = render([m["name"] for m in blocks], results)
    changed = []
    pieces, at = [], 0
    for m in blocks:
        body = generated[m["name"]] + "\n"
        if body != m["body"]:
            changed.append(m["name"])
        pieces += [text[at : m.start("body")], body]
        at = m.end("body")
    return "".join(pieces) + text[at:], changed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if stale")
    p.add_argument("--doc", type=Path, default=DOC, help="the markdown file (BENCHMARKS.md)")
    p.add_argument("--results", type=Path, default=RESULTS, help="the raw result files")
    args = p.parse_args(argv)
    try:
        text = args.doc.read_text()
        new, changed = regenerate(text, args.results)
    except (TableError, OSError, json.JSONDecodeError) as e:
        print(f"tables.py: error: {args.doc}: {e}", file=sys.stderr)
        return 2
    unused = [n for n in TABLES if n not in {m["name"] for m in find_tables(text)}]
    if args.check:
        if changed:
            diff = difflib.unified_diff(
                text.splitlines(), new.splitlines(), "BENCHMARKS.md", "generated", lineterm=""
            )
            print("\n".join(diff))
            print(
                f"{args.doc}: table(s) differ from benchmarks/results/: {', '.join(changed)} "
                f"(run python benchmarks/tables.py)"
            )
        if unused:
            print(f"{args.doc}: no markers for registered table(s): {', '.join(unused)}")
        if changed or unused:
            return 1
        print(f"{args.doc}: all tables match benchmarks/results/")
        return 0
    if unused:
        print(f"tables.py: note: no markers for table(s): {', '.join(unused)}", file=sys.stderr)
    if new != text:
        args.doc.write_text(new)
    print(f"{args.doc}: regenerated: {', '.join(changed) or 'none changed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
