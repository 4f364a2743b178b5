"""Raw rows from local data files, each tagged with where it came from.

Formats: JSONL, JSON (an array, or JSONL under a .json name), Parquet, Hugging Face `datasets`
directories written by `save_to_disk` (read with pyarrow directly: the arrow files are IPC
streams listed in state.json, so the `datasets` package is not needed), and TFDS datasets in
array_record format (read with `builder.as_data_source`, which needs no TensorFlow).

Every row carries a location string ("FILE line N" for text formats, 1-based as editors show it;
"FILE row N" for tabular ones, 0-based as pyarrow and TFDS index them), so a bad row can be named.
A row that cannot be parsed comes back with `error` set instead of raising, so the caller's
skip-or-reject policy (records.py) sees it; a file that cannot be read at all raises DataError.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

FORMATS = ("jsonl", "json", "parquet", "hf", "tfds")

_SUFFIX_FORMATS = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet"}
_JSON_SPACE = re.compile(r"[ \t\n\r]*")


class DataError(ValueError):
    """A data file, row or setting that cannot be used; the message names it."""


@dataclasses.dataclass(frozen=True)
class RawRow:
    """One row as read: a dict, or None with `error` saying why it could not be parsed."""

    where: str
    value: dict[str, Any] | None
    error: str | None = None


def infer_format(path: str | Path) -> str:
    """The format of `path` from its suffix, or from the marker files of a dataset directory."""
    path = Path(path)
    if path.is_dir():
        if (path / "state.json").exists() or (path / "dataset_dict.json").exists():
            return "hf"
        if (path / "features.json").exists() and (path / "dataset_info.json").exists():
            return "tfds"
        raise DataError(
            f"{path}: a directory, but neither a Hugging Face save_to_disk directory (state.json "
            "or dataset_dict.json) nor a TFDS dataset directory (dataset_info.json and "
            "features.json); set the format explicitly or point at the right directory"
        )
    if path.suffix in _SUFFIX_FORMATS:
        return _SUFFIX_FORMATS[path.suffix]
    raise DataError(f"{path}: cannot tell the format from the name; one of {FORMATS}")


def read_rows(path: str | Path, fmt: str = "auto", split: str = "train") -> Iterator[RawRow]:
    """Rows of a local file or dataset directory in file order. `split` is used by dataset
    directories holding several splits (HF DatasetDict, TFDS)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    fmt = infer_format(path) if fmt == "auto" else fmt
    if fmt == "jsonl":
        return _read_jsonl(path, _read_text(path))
    if fmt == "json":
        return _read_json(path)
    if fmt == "parquet":
        return _read_parquet(path)
    if fmt == "hf":
        return _read_hf_dir(path, split)
    if fmt == "tfds":
        return _read_tfds(path, split)
    raise DataError(f"{path}: unknown format {fmt!r}; one of {FORMATS} or 'auto'")


def read_json_lines(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """(1-based line number, object) of every non-blank line of a JSONL file, for tools that
    reject a whole input on its first bad line: a DataError names the file and line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    rows = []
    for number, raw in _numbered_jsonl(path, _read_text(path)):
        if raw.error is not None:
            raise DataError(f"{raw.where}: {raw.error}")
        rows.append((number, raw.value))
    return rows


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")  # -sig: a leading byte-order mark is dropped
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None


def _object_row(where: str, value: Any) -> RawRow:
    if isinstance(value, dict):
        return RawRow(where, value)
    return RawRow(where, None, f"expected a JSON object, got {type(value).__name__}")


def _read_jsonl(path: Path, text: str) -> Iterator[RawRow]:
    for _, row in _numbered_jsonl(path, text):
        yield row


def _numbered_jsonl(path: Path, text: str) -> Iterator[tuple[int, RawRow]]:
    # Split on "\n" only: str.splitlines() also breaks at U+2028 and similar characters, which
    # JSON allows unescaped inside strings (gsm8k_train.jsonl has some).
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            yield number, RawRow(where, None, f"invalid JSON ({e.msg} at column {e.colno})")
            continue
        yield number, _object_row(where, value)


def _read_json(path: Path) -> Iterator[RawRow]:
    text = _read_text(path)
    start = _JSON_SPACE.match(text).end()
    if not text.startswith("[", start):
        return _read_jsonl(path, text)
    return _read_json_array(path, text, start + 1)


def _read_json_array(path: Path, text: str, pos: int) -> Iterator[RawRow]:
    """Elements of a top-level JSON array, each with the line it starts on.

    A syntax error inside the array stops the whole file: after one there is no reliable way to
    find where the next element begins, so skipping cannot be offered.
    """
    decoder = json.JSONDecoder()
    line, counted = 1, 0
    pos = _JSON_SPACE.match(text, pos).end()
    if text.startswith("]", pos):
        return
    while True:
        line += text.count("\n", counted, pos)
        counted = pos
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path} line {e.lineno} column {e.colno}: invalid JSON ({e.msg}); a JSON array "
                "cannot be read past a syntax error, fix the file or convert it to JSONL"
            ) from None
        yield _object_row(f"{path} line {line}", value)
        pos = _JSON_SPACE.match(text, pos).end()
        if text.startswith(",", pos):
            pos = _JSON_SPACE.match(text, pos + 1).end()
        elif text.startswith("]", pos):
            return
        else:
            bad_line = text.count("\n", 0, pos) + 1
            raise DataError(f"{path} line {bad_line}: expected ',' or ']' in the JSON array")


def _read_parquet(path: Path) -> Iterator[RawRow]:
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches()
    except Exception as e:  # pyarrow raises several types for unreadable files
        raise DataError(f"{path}: cannot read as Parquet ({e})") from None
    yield from _table_rows(path, batches)


def _table_rows(path: Path, batches) -> Iterator[RawRow]:
    number = 0
    for batch in batches:
        for value in batch.to_pylist():
            yield RawRow(f"{path} row {number}", value)
            number += 1


def _read_hf_dir(path: Path, split: str) -> Iterator[RawRow]:
    """A `save_to_disk` directory: a Dataset, or a DatasetDict with one folder per split."""
    import pyarrow as pa

    try:
        if (path / "dataset_dict.json").exists():
            splits = json.loads((path / "dataset_dict.json").read_text())["splits"]
            if split not in splits:
                raise DataError(f"{path}: no split {split!r}; it has {splits}")
            path = path / split
        state = json.loads((path / "state.json").read_text())
        files = [path / f["filename"] for f in state["_data_files"]]
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: unreadable dataset metadata ({e!r})") from None

    def stream(file: Path):
        try:
            return pa.ipc.open_stream(pa.memory_map(str(file)))
        except (OSError, pa.ArrowInvalid) as e:
            raise DataError(f"{file}: cannot read as an Arrow stream ({e})") from None

    if state.get("_indices_data_files"):
        raise DataError(
            f"{path}: saved with a row-indices mapping (an old `datasets` version); load it and "
            "save it again with a current `datasets`, which writes the selected rows themselves"
        )
    for file in files:
        yield from _table_rows(file, stream(file))


def _read_tfds(path: Path, split: str) -> Iterator[RawRow]:
    """A TFDS dataset directory (the versioned folder holding dataset_info.json)."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder_from_directory(str(path))
        source = builder.as_data_source(split)
    except Exception as e:  # tfds raises many types for a missing split or bad metadata
        raise DataError(f"{path}: cannot open TFDS split {split!r} ({e})") from None
    for number in range(len(source)):
        where = f"{path} split {split} row {number}"
        try:
            yield RawRow(where, _plain(source[number]))
        except UnicodeDecodeError as e:
            yield RawRow(where, None, f"text that is not UTF-8 ({e})")


def _plain(value: Any) -> Any:
    """TFDS values as JSON-like Python values: bytes to str, numpy arrays to lists."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()] if value.ndim else _plain(value.item())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
