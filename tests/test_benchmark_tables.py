"""benchmarks/tables.py: BENCHMARKS.md's marked tables are what benchmarks/results/ says; a
hand-edited number, an unknown marker or a missing result file is reported by name. No JAX."""

import json
import shutil

import pytest

from benchmarks import tables
from benchmarks.table_defs import Rows, Table

DOC = tables.DOC.read_text()


def _copy(tmp_path, text=DOC):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(text)
    return path


def test_repo_doc_matches_results(capsys):
    assert tables.main(["--check"]) == 0, capsys.readouterr().out
    names = [m["name"] for m in tables.find_tables(DOC)]
    assert sorted(names) == sorted(tables.TABLES)  # every registered table is in the doc


def test_changed_numbers_are_named_and_regenerated(tmp_path, capsys):
    # one number in the sampler GPU table, one in the grader table
    edited = DOC.replace("| 16 | 8,499 | 735 |", "| 16 | 8,500 | 735 |", 1)
    edited = edited.replace("| items/s, full mix | 143.5 |", "| items/s, full mix | 143.6 |", 1)
    assert edited.count("8,500") == 1 and "143.6" in edited
    path = _copy(tmp_path, edited)

    assert tables.main(["--check", "--doc", str(path)]) == 1
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "sampler_gpu" in last and "grader" in last
    assert "sampler_cpu" not in last and "memory_plan" not in last
    assert path.read_text() == edited  # --check writes nothing

    assert tables.main(["--doc", str(path)]) == 0
    assert path.read_text() == DOC  # only the two tables changed, back to the data's numbers


def test_unknown_marker_is_one_clear_error(tmp_path, capsys):
    extra = "\n<!-- table: no_such_table -->\n| a |\n|---|\n| 1 |\n<!-- /table -->\n"
    path = _copy(tmp_path, DOC + extra)
    assert tables.main(["--check", "--doc", str(path)]) == 2
    err = capsys.readouterr().err
    assert "unknown table name(s) in the markers: no_such_table" in err
    assert path.read_text() == DOC + extra


def test_missing_result_files_are_named(tmp_path, capsys):
    results = tmp_path / "results"
    shutil.copytree(tables.RESULTS, results)
    (results / "cpu_grader.json").unlink()
    (results / "h200_sampler_gpu.json").unlink()
    assert tables.main(["--check", "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert "cpu_grader.json (table grader)" in err
    assert "h200_sampler_gpu.json (table sampler_gpu)" in err


def test_unpaired_markers_and_unmarked_tables(tmp_path, capsys):
    unclosed = DOC.replace("<!-- /table -->", "", 1)
    assert tables.main(["--check", "--doc", str(_copy(tmp_path, unclosed))]) == 2
    assert "do not pair up" in capsys.readouterr().err

    # a table whose markers were removed would escape the check: it is named instead
    grader = DOC.index("<!-- table: grader -->")
    end = DOC.index("<!-- /table -->", grader) + len("<!-- /table -->\n")
    no_grader = DOC[:grader] + DOC[grader:end].split("\n", 1)[1].replace("<!-- /table -->\n", "")
    no_grader += DOC[end:]
    assert tables.main(["--check", "--doc", str(_copy(tmp_path, no_grader))]) == 1
    assert "no markers for registered table(s): grader" in capsys.readouterr().out


def test_rows_lookup_and_glob_sources(tmp_path):
    rows = Rows(
        "r.json",
        [
            dict(system="a", metric="t", params=dict(batch=b), value=b / 10, unit="s")
            for b in (1, 2, 2)
        ],
    )
    assert rows.value("t", "a", batch=1) == 0.1
    assert rows.find("t", "b") is None
    with pytest.raises(LookupError, match="2 rows"):
        rows.value("t", batch=2)
    assert rows.param_values("batch") == [1, 2]

    # the way a multi-file table (e.g. one file per seed) is registered
    for seed in (1, 0):
        (tmp_path / f"seeds_{seed}.json").write_text(json.dumps([{"seed": seed}]))
    registry = {"seeds": Table(("seeds_*.json",), lambda files: str([f.name for f in files]))}
    out = tables.render(["seeds"], tmp_path, registry)
    assert out == {"seeds": "['seeds_0.json', 'seeds_1.json']"}
    with pytest.raises(tables.TableError, match=r"nothing_\*.json \(table none\)"):
        tables.render(["none"], tmp_path, {"none": Table(("nothing_*.json",), str)})
