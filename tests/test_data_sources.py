"""Data sources: every format, field mapping, and malformed rows named by file and line."""

import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow_datasets as tfds

from attnrl_jax.data.records import Problem, SourceSpec, get_field, load_many, load_problems
from attnrl_jax.data.sources import DataError, infer_format, read_json_lines, read_rows

ROWS = [
    {"problem": "What is 1+1?", "answer": "2"},
    {"problem": "Name a prime.", "answer": ["2", "3"]},
    {"problem": "Half of 3?", "answer": 1.5},
]
EXPECTED = [("What is 1+1?", ("2",)), ("Name a prime.", ("2", "3")), ("Half of 3?", ("1.5",))]


def _pairs(problems: list[Problem]) -> list[tuple[str, tuple[str, ...]]]:
    return [(p.problem, p.answers) for p in problems]


def test_jsonl_rows_lines_and_separators(tmp_path):
    path = tmp_path / "train.jsonl"
    # A byte-order mark, a blank line, CRLF endings, and U+2028 inside a string (JSON allows it
    # unescaped; it must not split the line, as str.splitlines would).
    lines = [json.dumps(ROWS[0]), "", json.dumps(ROWS[1]) + "\r", json.dumps(ROWS[2])]
    text = "\ufeff" + "\n".join(lines).replace("Half", "Half\u2028") + "\n"
    path.write_text(text, encoding="utf-8")
    problems, report = load_problems(SourceSpec(str(path)))
    assert [p.where for p in problems] == [f"{path} line {n}" for n in (1, 3, 4)]
    assert _pairs(problems)[:2] == EXPECTED[:2]
    assert problems[2].problem == "Half\u2028 of 3?"
    assert (report.source, report.rows, report.kept, report.skipped) == ("train", 3, 3, ())


def test_json_array_with_line_numbers_and_json_lines_under_json_name(tmp_path):
    array = tmp_path / "a.json"
    array.write_text(json.dumps(ROWS, indent=2))
    problems, _ = load_problems(SourceSpec(str(array)))
    assert _pairs(problems) == EXPECTED
    starts = [n + 1 for n, line in enumerate(array.read_text().split("\n")) if line == "  {"]
    assert [p.where for p in problems] == [f"{array} line {n}" for n in starts]

    lines = tmp_path / "l.json"
    lines.write_text("\n".join(json.dumps(r) for r in ROWS))
    assert _pairs(load_problems(SourceSpec(str(lines)))[0]) == EXPECTED

    empty = tmp_path / "e.json"
    empty.write_text(" [ ] ")
    assert list(read_rows(empty)) == []


def test_json_array_syntax_error_names_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n{"problem": "a", "answer": "1"},\n{"problem": "b", "answer": }\n]')
    with pytest.raises(DataError, match=r"bad.json line 3 column \d+: invalid JSON"):
        load_problems(SourceSpec(str(path)), on_error="skip")
    path.write_text('[{"problem": "a", "answer": "1"}\n{"problem": "b", "answer": "2"}]')
    with pytest.raises(DataError, match=r"bad.json line 2: expected ',' or '\]'"):
        load_problems(SourceSpec(str(path)), on_error="skip")


def test_parquet_with_nested_verl_style_fields(tmp_path):
    path = tmp_path / "train.parquet"
    table = pa.Table.from_pylist(
        [
            {
                "prompt": [{"role": "user", "content": r["problem"]}],
                "reward_model": {
                    "ground_truth": r["answer"]
                    if isinstance(r["answer"], list)
                    else [str(r["answer"])]
                },
            }
            for r in ROWS
        ]
    )
    pq.write_table(table, path, row_group_size=2)
    spec = SourceSpec(
        str(path), problem_key="prompt.0.content", answer_key="reward_model.ground_truth"
    )
    problems, report = load_problems(spec)
    assert _pairs(problems) == EXPECTED
    assert [p.where for p in problems] == [f"{path} row {n}" for n in range(3)]
    assert report.kept == 3


def _write_hf_split(directory, rows, shards):
    """The layout `datasets.Dataset.save_to_disk` writes (checked against datasets 5.2.0)."""
    directory.mkdir(parents=True)
    names = [f"data-{i:05d}-of-{shards:05d}.arrow" for i in range(shards)]
    per = -(-len(rows) // shards)
    for i, name in enumerate(names):
        table = pa.Table.from_pylist(rows[i * per : (i + 1) * per])
        with (
            pa.OSFile(str(directory / name), "wb") as sink,
            pa.ipc.new_stream(sink, table.schema) as writer,
        ):
            writer.write_table(table)
    state = {
        "_data_files": [{"filename": n} for n in names],
        "_fingerprint": "0123456789abcdef",
        "_format_columns": None,
        "_format_kwargs": {},
        "_format_type": None,
        "_output_all_columns": False,
        "_split": None,
    }
    (directory / "state.json").write_text(json.dumps(state))
    (directory / "dataset_info.json").write_text(json.dumps({"features": {}}))


def test_hf_dataset_and_dataset_dict_directories(tmp_path):
    rows = [{"problem": p, "answer": list(a)} for p, a in EXPECTED]
    _write_hf_split(tmp_path / "ds", rows, shards=2)
    problems, report = load_problems(SourceSpec(str(tmp_path / "ds")))
    assert _pairs(problems) == EXPECTED
    assert problems[2].where == f"{tmp_path / 'ds'}/data-00001-of-00002.arrow row 0"
    assert report.source == "ds:train"

    _write_hf_split(tmp_path / "dd" / "train", rows, shards=1)
    _write_hf_split(tmp_path / "dd" / "test", rows[:1], shards=1)
    (tmp_path / "dd" / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    assert infer_format(tmp_path / "dd") == "hf"
    test = load_problems(SourceSpec(str(tmp_path / "dd"), split="test"))[0]
    assert _pairs(test) == EXPECTED[:1]
    with pytest.raises(DataError, match=r"no split 'validation'; it has \['train', 'test'\]"):
        load_problems(SourceSpec(str(tmp_path / "dd"), split="validation"))


def test_tfds_array_record_dataset(tmp_path):
    class TinyMath(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            features = {
                "question": tfds.features.Text(),
                "answers": tfds.features.Sequence(tfds.features.Text()),
            }
            return tfds.core.DatasetInfo(
                builder=self, features=tfds.features.FeaturesDict(features)
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i, (problem, answers) in enumerate(EXPECTED):
                yield i, {"question": problem, "answers": list(answers)}

    builder = TinyMath(data_dir=str(tmp_path), file_format="array_record")
    builder.download_and_prepare()
    spec = SourceSpec(str(builder.data_dir), problem_key="question", answer_key="answers")
    assert infer_format(builder.data_dir) == "tfds"
    problems, _ = load_problems(spec)
    # TFDS shuffles examples when writing; the source reads them back in its stored order.
    assert sorted(_pairs(problems)) == sorted(EXPECTED)
    assert problems[0].where == f"{builder.data_dir} split train row 0"
    with pytest.raises(DataError, match="cannot open TFDS split 'test'"):
        load_problems(SourceSpec(str(builder.data_dir), split="test", problem_key="question"))


BAD_LINES = [
    '{"problem": "ok", "answer": "1"}',
    '{"problem": "broken", "answer": ',
    '["not", "an", "object"]',
    '{"answer": "1"}',
    '{"problem": "   ", "answer": "1"}',
    '{"problem": 7, "answer": "1"}',
    '{"problem": "p", "answer": {"a": 1}}',
    '{"problem": "p", "answer": true}',
    '{"problem": "p", "answer": null}',
    '{"problem": "p", "answer": []}',
    '{"problem": "p", "answer": ["1", ""]}',
    '{"problem": "also ok", "answer": 12}',
]
BAD_REASONS = [
    "invalid JSON",
    "expected a JSON object, got list",
    "missing field 'problem'",
    "'problem' is empty",
    "'problem' must be a string, got int",
    "'answer' must be a string, a number or a list of them, got dict",
    "'answer' must be a string, a number or a list of them, got bool",
    "field 'answer' is null",
    "'answer' is an empty list",
    "'answer' is empty",
]


def test_malformed_rows_skipped_with_file_and_line(tmp_path, caplog):
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(BAD_LINES))
    with caplog.at_level(logging.WARNING):
        problems, report = load_problems(SourceSpec(str(path)), on_error="skip")
    assert _pairs(problems) == [("ok", ("1",)), ("also ok", ("12",))]
    assert (report.rows, report.kept, len(report.skipped)) == (12, 2, 10)
    for line, (message, reason) in enumerate(zip(report.skipped, BAD_REASONS, strict=True), 2):
        assert message.startswith(f"{path} line {line}: ")
        assert reason in message
    assert "10 malformed rows skipped" in caplog.text
    assert f"{path} line 2" in caplog.text


def test_malformed_rows_rejected_with_one_error(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(BAD_LINES * 2))
    with pytest.raises(DataError) as info:
        load_problems(SourceSpec(str(path)), on_error="raise")
    message = str(info.value)
    assert message.startswith("mixed: 20 malformed rows of 24")
    assert f"{path} line 2: invalid JSON" in message
    assert "... and 10 more" in message


def test_field_paths_and_source_errors(tmp_path):
    row = {"a.b": 1, "a": {"b": 2, "c": [{"d": 3}]}}
    assert get_field(row, "a.b") == 1  # a literal key wins over the path
    assert get_field(row, "a.c.0.d") == 3
    with pytest.raises(KeyError):
        get_field(row, "a.c.1.d")

    with pytest.raises(DataError, match="no such file"):
        load_problems(SourceSpec(str(tmp_path / "missing.jsonl")))
    (tmp_path / "x.csv").write_text("problem,answer\n")
    with pytest.raises(DataError, match="cannot tell the format"):
        load_problems(SourceSpec(str(tmp_path / "x.csv")))
    with pytest.raises(DataError, match="neither a Hugging Face"):
        load_problems(SourceSpec(str(tmp_path)))
    only_bad = tmp_path / "bad.jsonl"
    only_bad.write_text('{"question": "q"}\n')
    with pytest.raises(DataError, match="no usable rows"):
        load_problems(SourceSpec(str(only_bad)), on_error="skip")


def test_load_many_concatenates_in_order(tmp_path):
    for name, rows in (("a", ROWS[:2]), ("b", ROWS[2:])):
        (tmp_path / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    specs = [SourceSpec(str(tmp_path / "a.jsonl")), SourceSpec(str(tmp_path / "b.jsonl"), name="B")]
    problems, reports = load_many(specs)
    assert _pairs(problems) == EXPECTED
    assert [(r.source, r.kept) for r in reports] == [("a", 2), ("B", 1)]


def test_read_json_lines_for_tools(tmp_path):
    """The strict reader the CLIs share: numbered objects; the first bad line is an error."""
    path = tmp_path / "in.jsonl"
    path.write_text('\ufeff{"a": "x\u2028y"}\n\n  \n{"b": 2}\n', encoding="utf-8")
    assert read_json_lines(path) == [(1, {"a": "x\u2028y"}), (4, {"b": 2})]
    path.write_text('{"a": 1}\n[1]\n{bad\n')
    with pytest.raises(DataError, match=r"in.jsonl line 2: expected a JSON object, got list"):
        read_json_lines(path)
    with pytest.raises(DataError, match="no such file"):
        read_json_lines(tmp_path / "missing.jsonl")
