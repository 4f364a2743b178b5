"""`python -m attnrl_jax.generate`: the documented output, and clear errors on bad input."""

import gc
import json
import weakref

import jax
import numpy as np
import pytest
from hf_reference import saved_checkpoint

from attnrl_jax.data.tokenizer import build_tiny_tokenizer
from attnrl_jax.generate import main
from attnrl_jax.models import load_pretrained
from attnrl_jax.sampling import Request, SamplingOptions, sample

MAX_POSITIONS = 128


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    return saved_checkpoint(tmp_path_factory.mktemp("generate"), tokenizer, 4, MAX_POSITIONS)


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _generate(model_dir, src, out, *extra):
    return main(["--model", str(model_dir), "--input", str(src), "--output", str(out), *extra])


def test_cli_writes_documented_samples(tmp_path, model_dir, tokenizer):
    rows = [
        {"prompt": "What is 12 + 30?"},
        "",
        {"prompt_ids": [5, 6, 7], "prefix_ids": [8, 9], "answer": "ignored"},
        {"prompt_ids": [10, 11]},
    ]
    src, out = _write(tmp_path / "in.jsonl", rows), tmp_path / "out" / "samples.jsonl"
    args = ["--n", "2", "--max_new_tokens", "12", "--temperature", "0.8", "--top_p", "0.95"]
    assert _generate(model_dir, src, out, *args, "--seed", "3") == 0
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["index"], r["sample"]) for r in results] == [
        (i, s) for i in (0, 2, 3) for s in (0, 1)
    ]
    for r in results:
        assert set(r) == {"index", "sample", "token_ids", "text", "logprobs", "finish_reason"}
        assert 1 <= len(r["token_ids"]) <= 12 and len(r["logprobs"]) == len(r["token_ids"])
        assert all(lp <= 0 for lp in r["logprobs"])
        ends_in_eos = r["token_ids"][-1] == tokenizer.eos_token_id
        assert r["finish_reason"] == ("eos" if ends_in_eos else "length")
        text_ids = r["token_ids"][:-1] if ends_in_eos else r["token_ids"]
        assert r["text"] == tokenizer.decode(text_ids)

    # The same ids through the library, with the line number as the random stream's index.
    model = load_pretrained(model_dir)
    options = SamplingOptions(
        max_new_tokens=12, temperature=0.8, top_p=0.95, seed=3, eos_ids=(tokenizer.eos_token_id,)
    )
    library = sample(
        model.params(), model.config, [Request([5, 6, 7], [8, 9], n=2, index=2)], options
    )
    for s, r in zip(library, results[2:4], strict=True):
        assert s.token_ids.tolist() == r["token_ids"]
        np.testing.assert_allclose(s.logprobs, r["logprobs"], atol=1e-5)


def test_per_line_max_new_tokens(tmp_path, model_dir, tokenizer):
    # Each line's budget bounds its samples, and the tokens are the library's for the same
    # per-request budgets (line 2's budget is above --max_new_tokens, line 0's below).
    rows = [
        {"prompt_ids": [5, 6, 7], "max_new_tokens": 3},
        {"prompt_ids": [10, 11]},
        {"prompt_ids": [12], "prefix_ids": [4], "max_new_tokens": 9},
    ]
    src, out = _write(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    args = ["--n", "2", "--max_new_tokens", "6", "--temperature", "0.8", "--seed", "5"]
    assert _generate(model_dir, src, out, *args) == 0
    results = [json.loads(line) for line in out.read_text().splitlines()]
    budgets = {0: 3, 1: 6, 2: 9}
    for r in results:
        assert len(r["token_ids"]) <= budgets[r["index"]]
        if r["finish_reason"] == "length":
            assert len(r["token_ids"]) == budgets[r["index"]]
    assert any(len(r["token_ids"]) > 6 for r in results if r["index"] == 2)
    model = load_pretrained(model_dir)
    options = SamplingOptions(
        max_new_tokens=6, temperature=0.8, seed=5, eos_ids=(tokenizer.eos_token_id,)
    )
    requests = [
        Request([5, 6, 7], n=2, max_new_tokens=3, index=0),
        Request([10, 11], n=2, index=1),
        Request([12], [4], n=2, max_new_tokens=9, index=2),
    ]
    library = sample(model.params(), model.config, requests, options)
    assert [s.token_ids.tolist() for s in library] == [r["token_ids"] for r in results]


def test_chat_template_wraps_text_prompts(tmp_path, model_dir, tokenizer):
    question = "Let's think step by step."
    text = "<|im_start|>user\nLet's think step by step.<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer.encode(text, add_special_tokens=False)
    src = _write(tmp_path / "in.jsonl", [{"prompt": question}, {"prompt_ids": ids}])
    out = tmp_path / "out.jsonl"
    args = ["--chat_template", "--temperature", "0", "--max_new_tokens", "8"]
    assert _generate(model_dir, src, out, *args) == 0
    templated, direct = [json.loads(line) for line in out.read_text().splitlines()]
    assert templated["token_ids"] == direct["token_ids"]


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"prompt_ids": [1]}, "{not json"], "line 2: invalid JSON"),
        ([{"prompt_ids": [1]}, {"prompt_ids": [3, 600]}], "line 2: token id 600 is outside"),
        ([["a list"]], "line 1: expected a JSON object"),
        ([{"prompt": "hi", "prompt_ids": [1]}], "line 1: needs exactly one of"),
        ([{}, {"prompt_ids": [1]}], "line 1: needs exactly one of"),
        ([{"prompt_ids": [1, "2"]}], "line 1: 'prompt_ids' must be a list of integer"),
        ([{"prompt_ids": [1], "prefix_ids": 7}], "line 1: 'prefix_ids' must be a list"),
        ([{"prompt_ids": []}], "line 1: the prompt is empty"),
        (["", {"prompt_ids": [2] * MAX_POSITIONS}], "line 2: prompt + prefix is 128 tokens"),
        ([{"prompt_ids": [1], "max_new_tokens": 0}], "line 1: 'max_new_tokens' must be a posi"),
        ([{"prompt_ids": [1], "max_new_tokens": "5"}], "line 1: 'max_new_tokens' must be a posi"),
        ([{"prompt_ids": [1], "max_new_tokens": 2.0}], "line 1: 'max_new_tokens' must be a posi"),
        ([{"prompt_ids": [1], "max_new_tokens": True}], "line 1: 'max_new_tokens' must be a pos"),
        (
            [{"prompt_ids": [1]}, {"prompt_ids": [2] * 100, "max_new_tokens": 29}],
            "line 2: 'max_new_tokens' 29 after a context of 100 tokens passes the model's "
            "position limit of 128",
        ),
    ],
)
def test_bad_input_names_the_line_and_writes_nothing(tmp_path, capsys, model_dir, rows, message):
    src = _write(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    assert _generate(model_dir, src, out, "--max_new_tokens", "4") == 2
    err = capsys.readouterr().err
    assert f"{src} {message}" in err
    assert "was not written" in err
    assert list(tmp_path.iterdir()) == [src]  # no output, no temporary file left behind


def test_bad_options_are_reported(tmp_path, capsys, model_dir):
    src = _write(tmp_path / "in.jsonl", [{"prompt_ids": [1, 2]}])
    for args, message in [
        (["--top_p", "0"], "top_p must be in (0, 1]"),
        (["--temperature", "-1"], "temperature must be >= 0"),
        (["--n", "0"], "--n must be >= 1"),
        (["--mesh", "3,1,1"], "does not match"),
    ]:
        assert _generate(model_dir, src, tmp_path / "out.jsonl", *args) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "out.jsonl").exists()


def test_the_engine_holds_the_only_copy_of_the_weights(tmp_path, model_dir, monkeypatch):
    """On a mesh whose fsdp axis splits the loaded params, generate samples from the engine's
    decode-layout copy alone: no reference to the loaded params is kept beside it."""
    from attnrl_jax.models import hf_io
    from attnrl_jax.sampling.engine import NativeEngine

    loaded, seen, real_load, real_generate = [], [], hf_io.load_pretrained, NativeEngine.generate

    def spy(*args, **kwargs):
        model = real_load(*args, **kwargs)
        loaded.extend(weakref.ref(x) for x in jax.tree.leaves(model.params()))
        return model

    def generate(engine, *args, **kwargs):  # what is alive while the engine samples
        gc.collect()
        held = jax.tree.leaves(engine.params)
        seen.append(([r() is not None for r in loaded], [x.sharding for x in held]))
        return real_generate(engine, *args, **kwargs)

    monkeypatch.setattr(hf_io, "load_pretrained", spy)
    monkeypatch.setattr(NativeEngine, "generate", generate)
    src, out = _write(tmp_path / "in.jsonl", [{"prompt_ids": [5, 6, 7]}]), tmp_path / "out.jsonl"
    assert _generate(model_dir, src, out, "--mesh", "1,-1,1", "--max_new_tokens", "4") == 0
    ((alive, shardings),) = seen
    assert loaded and not any(alive)
    assert all(s.is_fully_replicated for s in shardings)  # the decode copy (a tiny model)
    assert len(out.read_text().splitlines()) == 1
