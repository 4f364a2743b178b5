"""`python -m attnrl_jax.score`: the documented output fields, and clear errors on bad input."""

import json

import numpy as np
import pytest
from hf_reference import make_hf_checkpoint

from attnrl_jax.data.tokenizer import build_tiny_tokenizer
from attnrl_jax.models import load_pretrained
from attnrl_jax.score import main
from attnrl_jax.scoring.forward import ScoringConfig, score_sequences
from attnrl_jax.scoring.steps import SeparatorIds

RESPONSE = (
    "<think>First, compute the sum: 12 + 30 = 42.\n\nWait, let me check again.\n\n"
    "Step 1\n\nStep 2\n\nStep 3\n\nNow we are done\n\nCheck the result\n\n</think>"
    "So the answer is \\boxed{42}."
)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("cli") / "model"
    return make_hf_checkpoint(path, seed=5, tokenizer=tokenizer, vocab_size=len(tokenizer))


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _paths(model, src, out):
    return ["--model", str(model), "--input", str(src), "--output", str(out)]


def test_cli_writes_documented_fields(tmp_path, model_dir, tokenizer):
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 12 + 30?"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    ids = tokenizer.encode(RESPONSE, add_special_tokens=False)
    rows = [
        {"prompt": prompt, "response": RESPONSE},
        {"prompt_ids": [1, 2, 3], "response_ids": ids[:9]},
        {"prompt_ids": [4], "response_ids": []},
    ]
    out = tmp_path / "out" / "scores.jsonl"
    src = _write(tmp_path / "in.jsonl", rows)
    assert main([*_paths(model_dir, src, out), "--query-chunk", "16"]) == 0
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(results) == 3
    for r in results:
        assert set(r) == {"logprobs", "entropies", "step_bounds", "fci", "branch_points"}

    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
    model = load_pretrained(model_dir)
    expected = score_sequences(
        model.params(),
        model.config,
        ScoringConfig(),
        [prompt_ids, [1, 2, 3], [4]],
        [ids, ids[:9], []],
        SeparatorIds.from_tokenizer(tokenizer),
    )
    for r, e in zip(results, expected, strict=True):
        assert r["step_bounds"] == [list(b) for b in e.layout.bounds]
        np.testing.assert_allclose(r["logprobs"], e.logprobs, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(r["entropies"], e.entropies, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(r["fci"], e.fci, rtol=1e-5, atol=1e-7)

    text = results[0]
    bounds = text["step_bounds"]
    assert bounds[0] == [0, len(prompt_ids)] and bounds[-1][1] == len(prompt_ids) + len(ids)
    assert len(text["logprobs"]) == len(ids) and len(text["fci"]) == len(bounds) == 9
    assert all(v <= 0 for v in text["logprobs"]) and all(v >= 0 for v in text["entropies"])
    assert text["fci"][:2] == [0.0, 0.0] and text["fci"][-1] == 0.0  # </think> in the last step
    starts = {b[0] - len(prompt_ids) for b in bounds[2:]}
    assert len(text["branch_points"]) == 2 and set(text["branch_points"]) <= starts
    assert results[2] == {
        "logprobs": [],
        "entropies": [],
        "step_bounds": [[0, 1]],
        "fci": [0.0],
        "branch_points": [],
    }


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "line 2: invalid JSON"),
        ({"prompt_ids": [1, 2]}, "line 2: needs both 'prompt_ids' and 'response_ids'"),
        ({"prompt": "a"}, "line 2: needs 'prompt_ids' and 'response_ids', or"),
        ({"prompt_ids": [1], "response_ids": [99999]}, "outside the model's vocabulary"),
        ({"prompt_ids": [1], "response_ids": ["a"]}, "must be a list of integer token ids"),
        ({"prompt_ids": [], "response_ids": [5]}, "line 2: the prompt is empty"),
        ([1, 2], "line 2: expected a JSON object"),
    ],
)
def test_bad_line_is_named_and_output_untouched(tmp_path, model_dir, capsys, line, message):
    good = {"prompt_ids": [1, 2], "response_ids": [3, 4]}
    src = _write(tmp_path / "in.jsonl", [good, line])
    out = tmp_path / "out.jsonl"
    out.write_text("previous\n")
    assert main(_paths(model_dir, src, out)) == 2
    assert message in capsys.readouterr().err
    assert out.read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]


def test_bad_options_and_missing_model(tmp_path, model_dir, capsys):
    src = _write(tmp_path / "in.jsonl", [{"prompt_ids": [1], "response_ids": [2]}])
    out = tmp_path / "out.jsonl"
    assert main([*_paths(model_dir, src, out), "--layers", "0,7"]) == 2
    assert "layers [7] out of range" in capsys.readouterr().err
    assert main(_paths(tmp_path / "nope", src, out)) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not out.exists()
