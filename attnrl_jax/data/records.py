"""Problems from raw rows: field mapping, validation, and the skip-or-reject policy.

A source names which fields hold the problem and the answer. A key may be a dotted path into
nested values, with integers indexing lists ("reward_model.ground_truth", "prompt.0.content"),
so verl/AttnRL-style Parquet files load without conversion. An answer may be a list of accepted
forms (Minerva has rows with 2-3); numbers are accepted and written as strings.

A row that is malformed (bad JSON, missing or empty field, wrong type) is never dropped silently:
with on_error="skip" it is counted, listed in the LoadReport and logged; with on_error="raise"
the source is rejected with one DataError listing every bad row found (the first ten shown).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from attnrl_jax.data.sources import DataError, RawRow, read_rows

log = logging.getLogger(__name__)

OnError = Literal["skip", "raise"]
_SHOWN = 10


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """Where a set of problems lives and which fields to read.

    fmt: "auto" (from the suffix or directory contents), "jsonl", "json", "parquet", "hf" or
    "tfds". split: for HF DatasetDict and TFDS directories. name: used in reports (default: the
    file name without suffix, or "DIRECTORY:SPLIT").
    """

    path: str
    fmt: str = "auto"
    split: str = "train"
    problem_key: str = "problem"
    answer_key: str = "answer"
    name: str = ""

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        path = Path(self.path)
        return f"{path.name}:{self.split}" if path.is_dir() else path.stem


@dataclasses.dataclass(frozen=True)
class Problem:
    """A problem statement with its accepted answers; `where` locates the row it came from."""

    problem: str
    answers: tuple[str, ...]
    where: str


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """What loading one source did: rows read, problems kept, and each skipped row's reason."""

    source: str
    rows: int
    kept: int
    skipped: tuple[str, ...]

    def summary(self) -> str:
        text = f"{self.source}: {self.kept} of {self.rows} rows kept"
        if self.skipped:
            shown = "; ".join(self.skipped[:_SHOWN])
            more = f" (and {len(self.skipped) - _SHOWN} more)" if len(self.skipped) > _SHOWN else ""
            text += f", {len(self.skipped)} malformed rows skipped: {shown}{more}"
        return text


def load_problems(
    spec: SourceSpec, on_error: OnError = "raise"
) -> tuple[list[Problem], LoadReport]:
    """All well-formed problems of a source, in file order, and a report of what was skipped."""
    if on_error not in ("skip", "raise"):
        raise DataError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
    problems, bad, rows = [], [], 0
    for raw in read_rows(spec.path, spec.fmt, spec.split):
        rows += 1
        try:
            problems.append(_to_problem(raw, spec))
        except DataError as e:
            bad.append(str(e))
    report = LoadReport(spec.label, rows, len(problems), tuple(bad))
    if bad and on_error == "raise":
        shown = "\n  ".join(bad[:_SHOWN])
        more = f"\n  ... and {len(bad) - _SHOWN} more" if len(bad) > _SHOWN else ""
        raise DataError(
            f"{spec.label}: {len(bad)} malformed rows of {rows} (set data.on_error=skip to skip "
            f"them):\n  {shown}{more}"
        )
    if bad:
        log.warning(report.summary())
    if not problems:
        raise DataError(f"{spec.label}: no usable rows in {spec.path}")
    return problems, report


def get_field(row: dict[str, Any], key: str) -> Any:
    """The value at `key`: a top-level key as written, else a dotted path (list indices as ints).

    Raises KeyError naming the missing part.
    """
    if key in row:
        return row[key]
    value: Any = row
    for part in key.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise KeyError(part)
    return value


def _to_problem(raw: RawRow, spec: SourceSpec) -> Problem:
    if raw.error is not None:
        raise DataError(f"{raw.where}: {raw.error}")
    problem = _field(raw, spec.problem_key)
    if not isinstance(problem, str):
        raise DataError(
            f"{raw.where}: {spec.problem_key!r} must be a string, got {type(problem).__name__}"
        )
    if not problem.strip():
        raise DataError(f"{raw.where}: {spec.problem_key!r} is empty")
    value = _field(raw, spec.answer_key)
    forms = value if isinstance(value, list) else [value]
    answers = tuple(_answer_text(form, raw.where, spec.answer_key) for form in forms)
    if not answers:
        raise DataError(f"{raw.where}: {spec.answer_key!r} is an empty list")
    return Problem(problem.strip(), answers, raw.where)


def _field(raw: RawRow, key: str) -> Any:
    try:
        value = get_field(raw.value, key)
    except KeyError as e:
        raise DataError(f"{raw.where}: missing field {key!r} (no {e.args[0]!r})") from None
    if value is None:
        raise DataError(f"{raw.where}: field {key!r} is null")
    return value


def _answer_text(value: Any, where: str, key: str) -> str:
    """An accepted answer as stripped text; integers as written, integral floats without '.0'."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise DataError(
            f"{where}: {key!r} must be a string, a number or a list of them, got "
            f"{type(value).__name__}"
        )
    if isinstance(value, float):
        if not math.isfinite(value):
            raise DataError(f"{where}: {key!r} is {value}")
        value = str(int(value)) if value.is_integer() else repr(value)
    text = str(value).strip()
    if not text:
        raise DataError(f"{where}: {key!r} is empty")
    return text


def load_many(
    specs: Sequence[SourceSpec], on_error: OnError = "raise"
) -> tuple[list[Problem], list[LoadReport]]:
    """Problems of several sources, concatenated in order, with one report per source."""
    problems: list[Problem] = []
    reports = []
    for spec in specs:
        part, report = load_problems(spec, on_error)
        problems.extend(part)
        reports.append(report)
    return problems, reports
