"""Evaluation: bundled benchmarks, metric aggregation on forced responses, the evaluate CLI's
report on a tiny saved model, and one clear error per bad input."""

import gc
import json
import weakref

import jax
import numpy as np
import pytest
from hf_reference import saved_checkpoint

from attnrl_jax.data.records import Problem
from attnrl_jax.data.tokenizer import build_tiny_tokenizer
from attnrl_jax.eval.benchmarks import (
    NAMES,
    PAPER,
    Benchmark,
    demo_heldout,
    load_benchmark,
    parse_benchmarks,
)
from attnrl_jax.eval.metrics import ProblemResult, benchmark_metrics
from attnrl_jax.eval.run import EvalOptions, evaluate_policy, metric_ks, stream_id
from attnrl_jax.evaluate import load_engine, main
from attnrl_jax.models import read_config
from attnrl_jax.sampling import Sample, SamplerConfig
from attnrl_jax.sampling.engine import RolloutEngine

ROWS = {
    "aime24": 30, "aime25": 30, "amc23": 40, "math500": 500, "minerva": 272,
    "olympiadbench": 674, "gsm8k": 1319,
}  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    return saved_checkpoint(tmp_path_factory.mktemp("evaluate"), tokenizer, 5, 512)


def test_bundled_benchmarks_load_with_all_answer_forms():
    for name, rows in ROWS.items():
        b = load_benchmark(name, k=1)
        assert len(b.problems) == rows and all(p.answers for p in b.problems)
    assert sum(len(p.answers) > 1 for p in load_benchmark("minerva", 1).problems) == 75
    assert len(load_benchmark("math500", 2, num_problems=3).problems) == 3


def test_benchmark_lists():
    assert parse_benchmarks("math500, aime24:32,math500:8", 4) == [("math500", 4), ("aime24", 32)]
    paper = dict(parse_benchmarks("paper", 4))
    assert paper == {n: int(k) for n, k in (x.split(":") for x in PAPER.split(","))}
    assert paper["aime24"] == 32 and paper["minerva"] == 4 and set(paper) < set(NAMES)
    for bad, message in [
        ("math5000", "unknown benchmark 'math5000'"),
        ("math500:x", "k after ':' must be an integer"),
        ("math500:0", "k must be >= 1"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_benchmarks(bad, 4)


def test_demo_heldout_problems_are_distinct_and_not_trained_on():
    from attnrl_jax.data.demo_task import demo_problems

    train = {p.problem for p, _ in demo_problems(256, seed=3)}
    held = demo_heldout(64, seed=3, num_train=256)
    assert len({p.problem for p in held}) == 64 and not train & {p.problem for p in held}
    assert held == demo_heldout(64, seed=3, num_train=256)  # deterministic


def test_stream_ids_are_distinct_per_benchmark():
    ids = {stream_id(n, i) for n in NAMES for i in range(3)}
    assert len(ids) == 3 * len(NAMES) and max(ids) < 2**31


# Forced responses: problem 0 (gold 42) and problem 1 (gold 7), k = 4 each.
FORCED = [
    ["\\boxed{42}", "\\boxed{41}", "\\boxed{42}", "no answer"],
    ["\\boxed{3}", "\\boxed{3}", "\\boxed{7}", "\\boxed{7}"],
]


class ForcedEngine:
    """A RolloutEngine that answers every request with the FORCED texts and records its calls."""

    def __init__(self, tokenizer, max_positions: int):
        self.tokenizer, self.max_positions, self.calls = tokenizer, max_positions, []

    def generate(self, requests, options, progress=None):
        self.calls.append((requests, options))
        encode = self.tokenizer.encode
        return [
            Sample(i, s, np.asarray(encode(FORCED[i][s]), np.int32), np.zeros(0), "eos")
            for i, r in enumerate(requests)
            for s in range(r.n)
        ]

    def update_weights(self, params, version):
        raise AssertionError("evaluation never changes the weights")

    def close(self):
        pass


def test_aggregation_of_forced_responses(tokenizer, model_dir):
    """Responses replaced by known texts; the real grader and metrics give hand-computed values."""
    engine = ForcedEngine(tokenizer, read_config(model_dir).max_position_embeddings)
    assert isinstance(engine, RolloutEngine)
    problems = [Problem("What is 6 * 7?", ("42",), "a"), Problem("3 + 4?", ("7",), "b")]
    options = EvalOptions(max_new_tokens=5, temperature=0.6, top_p=0.95, seed=9)
    result = evaluate_policy(
        engine, tokenizer, [Benchmark("toy", problems, 4)], options, eos_ids=(0,)
    )
    m = result.metrics["toy"]
    # pass@2 per problem with c = 2 of n = 4: 1 - C(2,2)/C(4,2) = 5/6.
    # maj@4: problem 0's majority 42 is right; problem 1 ties 3 and 7, the first (3) wins: wrong.
    expected = {"avg@4": 0.5, "pass@1": 0.5, "pass@2": 5 / 6, "pass@4": 1.0}
    expected |= {"maj@1": 0.5, "maj@2": 0.5, "maj@4": 0.5}
    for key, value in expected.items():
        assert m[key] == pytest.approx(value), key
    assert m["num_problems"] == 2 and m["k"] == 4 and m["truncated"] == 0.0
    assert result.flat()["eval/toy/avg@4"] == 0.5 and result.average() == 0.5
    requests, sampling = engine.calls[0]
    assert [r.n for r in requests] == [4, 4]
    assert (sampling.temperature, sampling.top_p, sampling.seed) == (0.6, 0.95, 9)
    # The prompt is the paper's: the instruction inside the chat template.
    prompt = tokenizer.decode(list(requests[0].prompt_ids))
    assert "What is 6 * 7? Let's think step by step" in prompt
    assert [r.extracted for r in result.samples[:4]] == ["42", "41", "42", None]


def test_metric_ks():
    assert metric_ks(4) == [1, 2, 4] and metric_ks(6) == [1, 2, 4, 6] and metric_ks(1) == [1]


def test_cli_writes_the_documented_report(tmp_path, model_dir, capsys):
    own = tmp_path / "mine.jsonl"
    own.write_text(json.dumps({"question": "1 + 1?", "solution": "2"}) + "\n")
    out = tmp_path / "report"
    code = main([
        "--model", str(model_dir), "--benchmarks", "math500,gsm8k:3", "--k", "2",
        "--num_problems", "2", "--max_new_tokens", "6", "--benchmark_file", str(own),
        "--problem_key", "question", "--answer_key", "solution", "--output", str(out),
    ])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads((out / "report.json").read_text())
    assert list(report["benchmarks"]) == ["math500", "gsm8k", "mine"]
    assert report["options"] == {"max_new_tokens": 6, "temperature": 0.6, "top_p": 0.95, "seed": 0}
    sizes = {"math500": (2, 2), "gsm8k": (2, 3), "mine": (1, 2)}
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert report["num_samples"] == len(samples) == 2 * 2 + 2 * 3 + 1 * 2
    for name, (n, k) in sizes.items():
        m = report["benchmarks"][name]
        keys = {"num_problems", "k", f"avg@{k}", "mean_response_tokens", "truncated"}
        keys |= {f"{p}@{j}" for p in ("pass", "maj") for j in metric_ks(k)}
        assert set(m) == keys and (m["num_problems"], m["k"]) == (n, k)
        mine = [s for s in samples if s["benchmark"] == name]
        assert all(1 <= s["num_tokens"] <= 6 for s in mine)
        # The report is the metrics of the written samples.
        results = [
            ProblemResult(
                [s["correct"] for s in mine if s["problem"] == i],
                [s["extracted"] for s in mine if s["problem"] == i],
            )
            for i in range(n)
        ]
        for key, value in benchmark_metrics(results, metric_ks(k)).items():
            assert m[key] == pytest.approx(value)
    table = (out / "report.md").read_text()
    assert table in captured.out and "| gsm8k | 2 | 3 |" in table and "average (pass@1)" in table


@pytest.mark.parametrize(
    "args, message",
    [
        (["--benchmarks", "math500", "--model", "/nonexistent/model"], "no such directory"),
        (["--benchmarks", "math5000"], "unknown benchmark 'math5000'"),
        (["--benchmarks", "math500", "--k", "0"], "--k must be >= 1"),
        (["--benchmarks", "aime24:zero"], "k after ':' must be an integer"),
        ([], "nothing to evaluate"),
        (["--benchmark_file", "/nonexistent.jsonl"], "/nonexistent.jsonl: no such file"),
        (["--benchmarks", "math500", "--top_p", "0"], "top_p must be in (0, 1]"),
    ],
)
def test_bad_input_is_one_clear_error(tmp_path, model_dir, capsys, args, message):
    full = ["--model", str(model_dir), "--output", str(tmp_path / "out"), *args]
    assert main(full) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("error:") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("layout", ["replicated", "training"])
def test_the_engine_holds_the_only_copy_of_the_weights(model_dir, monkeypatch, layout):
    """On a mesh whose fsdp axis splits the loaded params, the engine keeps them in the
    --decode_layout; evaluation keeps no reference to the loaded params beside its copy."""
    from attnrl_jax.models import hf_io, sharding

    loaded, real = [], hf_io.load_pretrained

    def spy(*args, **kwargs):
        model = real(*args, **kwargs)
        loaded.extend(weakref.ref(x) for x in jax.tree.leaves(model.params()))
        return model

    monkeypatch.setattr(hf_io, "load_pretrained", spy)
    mesh = sharding.make_mesh(1, 2, 1, devices=jax.devices()[:2])
    engine = load_engine(model_dir, "float32", SamplerConfig(mesh=mesh), layout)
    gc.collect()
    assert engine.layout == sharding.decode_layout(engine.cfg, mesh, layout=layout)
    held = jax.tree.leaves(engine.params)
    alive = [r() for r in loaded if r() is not None]
    assert loaded
    if layout == "replicated":  # a copy in the decode layout; the loaded arrays are released
        assert alive == [] and all(x.sharding.is_fully_replicated for x in held)
    else:  # the loaded arrays are the engine's own: nothing copied, nothing else kept
        assert [id(x) for x in alive] == [id(x) for x in held]
        assert not all(x.sharding.is_fully_replicated for x in held)  # split over fsdp


def test_decode_layout_comes_from_the_config_unless_the_flag_says(tmp_path, model_dir, capsys):
    """--config's rollout.decode_layout is evaluate's default; the flag wins; a bad value in the
    config is one error line (exit 2)."""
    from attnrl_jax.evaluate import _parse_args, _resolve

    def config(layout: str) -> str:
        path = tmp_path / f"{layout}.py"
        path.write_text(
            "from configs.demo import get_config as demo\n\n\ndef get_config():\n"
            f"    c = demo()\n    c.rollout.decode_layout = {layout!r}\n    return c\n"
        )
        return str(path)

    base = ["--model", str(model_dir), "--benchmarks", "math500"]
    assert _resolve(_parse_args(base)).decode_layout == "auto"
    assert _resolve(_parse_args([*base, "--config", config("training")])).decode_layout == (
        "training"
    )
    flag = ["--config", config("training"), "--decode_layout", "replicated"]
    assert _resolve(_parse_args([*base, *flag])).decode_layout == "replicated"
    assert main([*base, "--config", config("fsdp"), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "rollout.decode_layout='fsdp'; known:" in err and err.count("\n") == 1


def test_training_data_drops_benchmark_problems(tmp_path, tokenizer):
    """Training files are deduplicated against every bundled benchmark (and eval.files)."""
    from attnrl_jax.rl.settings import resolve
    from attnrl_jax.train import load_prompts
    from configs.demo import get_config

    math500 = load_benchmark("math500", 1, num_problems=2).problems
    rows = [
        {"problem": math500[1].problem, "answer": "x"},
        {"problem": "Fresh: 2 + 2?", "answer": "4"},
    ]
    rows.append({"problem": "Mine: 5 - 1?", "answer": "4"})
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    own = tmp_path / "own_eval.jsonl"
    own.write_text(json.dumps(rows[2]) + "\n")
    c = get_config()
    c.data.train_files, c.eval.files = str(train), str(own)
    assert [p.problem.problem for p in load_prompts(resolve(c), tokenizer)] == ["Fresh: 2 + 2?"]
    c.data.drop_eval_overlap = False
    assert len(load_prompts(resolve(c), tokenizer)) == 3
