"""Evaluation-overlap and length filters, and preparing training prompts from files."""

import json
from pathlib import Path

import pytest

from attnrl_jax.data.filters import drop_eval_overlap, length_mask, normalize_problem
from attnrl_jax.data.prepare import prepare_prompts
from attnrl_jax.data.prompts import INSTRUCTION, encode_prompts
from attnrl_jax.data.records import Problem, SourceSpec, load_problems
from attnrl_jax.data.sources import DataError
from attnrl_jax.data.tokenizer import build_tiny_tokenizer

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
EVAL_NAMES = ("math500", "aime24", "aime25", "amc23", "minerva", "olympiadbench")


def _problems(*texts: str) -> list[Problem]:
    return [Problem(t, ("1",), f"f line {i + 1}") for i, t in enumerate(texts)]


def test_normalize_problem():
    assert normalize_problem("Find  $x^2 + 1$.\n") == normalize_problem("find $x^2+1$.")
    assert normalize_problem("Ｆｉｎｄ x") == normalize_problem("Find x")  # NFKC full-width
    assert normalize_problem("Find x. " + INSTRUCTION) == normalize_problem("Find x.")
    assert normalize_problem("Find x.") != normalize_problem("Find y.")


def test_drop_eval_overlap_counts_per_eval_set():
    train = _problems("A  b", "c", "d", "e")
    evals = {"one": _problems("a b", "d"), "two": _problems("D"), "three": _problems("z")}
    kept, report = drop_eval_overlap(train, evals)
    assert [p.problem for p in kept] == ["c", "e"]
    assert report.per_eval == {"one": 2, "two": 1, "three": 0}
    assert report.dropped == 2  # "d" matches two sets but is one row
    assert report.where == ("f line 1", "f line 3")
    assert report.summary() == ("eval overlap: 2 training problems dropped (one 2, two 1, three 0)")


def test_length_mask():
    keep, report = length_mask([3, 5, 6, 2], max_prompt_len=5)
    assert keep == [True, True, False, True]
    assert (report.kept, report.dropped, report.longest) == (3, 1, 6)
    assert report.summary() == "prompt length <= 5: 3 kept, 1 dropped (longest 6 tokens)"
    with pytest.raises(ValueError, match="max_prompt_len"):
        length_mask([1], max_prompt_len=0)


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="shared data files not present")
def test_real_training_files_lose_their_eval_problems():
    evals = {}
    for name in EVAL_NAMES:
        main = load_problems(SourceSpec(str(SHARED_DATA / f"{name}.jsonl")))[0]
        paper = load_problems(SourceSpec(str(SHARED_DATA / "attnrl_eval" / f"{name}.jsonl")))[0]
        evals[name] = main + paper
    expected = {
        # SOURCES.md: exact-text overlaps are 6 AMC23, 4 MATH-500, 4 OlympiadBench (DAPO) and 4
        # MATH-500 (AIME 1983-2023); the normalised match also finds a MATH-500 problem that
        # DAPO copies with different spacing ("\sqrt{120 - \sqrt{x}}").
        "dapo_math_17k": {"math500": 5, "amc23": 6, "olympiadbench": 4},
        "aime_1983_2023": {"math500": 4},
        "math_train": {},
        "gsm8k_train": {},
    }
    for train_name, counts in expected.items():
        train = load_problems(SourceSpec(str(SHARED_DATA / "train" / f"{train_name}.jsonl")))[0]
        kept, report = drop_eval_overlap(train, evals)
        assert report.per_eval == {name: counts.get(name, 0) for name in EVAL_NAMES}, train_name
        assert len(kept) == len(train) - report.dropped
        assert report.dropped == sum(counts.values())
        eval_texts = {p.problem for problems in evals.values() for p in problems}
        assert not any(p.problem in eval_texts for p in kept)


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_prepare_prompts_filters_and_reports(tmp_path):
    tokenizer = build_tiny_tokenizer()
    long_problem = "Add these numbers: " + " + ".join(str(i) for i in range(200))
    train = _jsonl(
        tmp_path / "train.jsonl",
        [
            {"problem": "What is 2+2?", "answer": "4"},
            {"problem": "what is  1+1?", "answer": "2"},  # in the eval set, up to case/spacing
            {"problem": long_problem, "answer": "19900"},
            {"problem": "", "answer": "0"},  # malformed
            {"problem": "Find 3*3.", "answer": ["9", "9.0"]},
        ],
    )
    evals = {
        "tiny_eval": SourceSpec(
            _jsonl(tmp_path / "eval.jsonl", [{"problem": "What is 1+1?", "answer": "2"}])
        )
    }
    short_len = max(len(x) for x in encode_prompts(tokenizer, ["What is 2+2?", "Find 3*3."]))
    prompts, report = prepare_prompts(
        [SourceSpec(train)],
        tokenizer,
        max_prompt_len=short_len,
        eval_sets=evals,
        on_error="skip",
    )
    assert [p.problem.problem for p in prompts] == ["What is 2+2?", "Find 3*3."]
    assert prompts[1].problem.answers == ("9", "9.0")
    assert [list(p.prompt_ids) for p in prompts] == encode_prompts(
        tokenizer, ["What is 2+2?", "Find 3*3."]
    )
    assert report.sources[0].skipped[0].startswith(f"{train} line 4: 'problem' is empty")
    assert report.overlap.per_eval == {"tiny_eval": 1}
    assert (report.length.kept, report.length.dropped) == (2, 1)
    lines = report.lines()
    assert lines[0].startswith("train: 4 of 5 rows kept, 1 malformed rows skipped")
    assert lines[1:] == [report.overlap.summary(), report.length.summary()]

    with pytest.raises(DataError, match="1 malformed rows of 5"):
        prepare_prompts([SourceSpec(train)], tokenizer, max_prompt_len=short_len)
    with pytest.raises(
        DataError, match=r"no training prompts left: .*no evaluation sets given.*4 dropped"
    ):
        prepare_prompts([SourceSpec(train)], tokenizer, max_prompt_len=3, on_error="skip")
