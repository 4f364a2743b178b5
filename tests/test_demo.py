"""The demo's parts: the task (gold answers, slips, held-out split), the supervised warm start
(loss formula, learning), and `python -m attnrl_jax.demo` end to end at toy size."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnrl_jax.data.demo_task import demo_problems, demo_tokenizer, held_out_problems
from attnrl_jax.data.prompts import encode_prompts
from attnrl_jax.models import ModelConfig, forward, init_params
from attnrl_jax.rewards.math import grade
from attnrl_jax.rl.sft import pack_examples, sft_loss, supervised_warm_start


def test_reference_solutions_grade_correct_and_slips_wrong():
    clean = demo_problems(200, seed=3)
    slipped = demo_problems(200, seed=3, slip_rate=1.0)
    for (p, solution), (q, slip) in zip(clean, slipped, strict=True):
        assert p == q  # the problem does not depend on the slip rate
        assert 0 <= int(p.answers[0]) <= 9
        assert grade(solution, list(p.answers)).correct, (p, solution)
        assert not grade(slip, list(p.answers)).correct, (p, slip)
        steps = solution.split("\n\n")
        assert len(steps) == p.problem.count(".")  # one step per operation + the answer line


def test_held_out_problems_are_outside_the_training_set():
    train = {p.problem for p, _ in demo_problems(500, seed=0)}
    held = held_out_problems(64, num_train=500, seed=0)
    assert len(held) == 64 and not {p.problem for p, _ in held} & train
    assert len({p.problem for p, _ in held}) == 64


def test_run_seed_leaves_the_task_alone():
    """config.seed (a run's sampling and data order) does not change the demo problems; only
    data.demo_seed does (so runs with several seeds train on one task)."""
    from attnrl_jax.demo.__main__ import load_config
    from attnrl_jax.rl.settings import resolve
    from attnrl_jax.train import load_prompts

    tokenizer = demo_tokenizer()
    c = load_config()
    c.data.num_demo_problems = 16
    first = [p.prompt_ids for p in load_prompts(resolve(c), tokenizer)]
    c.seed = 7
    assert [p.prompt_ids for p in load_prompts(resolve(c), tokenizer)] == first
    c.data.demo_seed = 1
    assert [p.prompt_ids for p in load_prompts(resolve(c), tokenizer)] != first


@pytest.fixture(scope="module")
def tiny():
    tokenizer = demo_tokenizer()
    cfg = ModelConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_layers=1,
        num_heads=2, num_kv_heads=1, head_dim=16, tie_word_embeddings=True,
    )  # fmt: skip
    pairs = demo_problems(64, seed=0)
    prompts = encode_prompts(tokenizer, [p.problem for p, _ in pairs])
    responses = tokenizer([s for _, s in pairs], add_special_tokens=False)["input_ids"]
    tokens, mask = pack_examples(prompts, responses, tokenizer.eos_token_id)
    return cfg, tokens, mask, prompts, responses


def test_pack_examples_marks_response_and_eos(tiny):
    _, tokens, mask, prompts, responses = tiny
    assert tokens.shape[1] % 16 == 0
    for i in range(3):
        start, end = len(prompts[i]), len(prompts[i]) + len(responses[i]) + 1
        assert mask[i].nonzero()[0].tolist() == list(range(start, end))
        assert tokens[i, start:end].tolist() == [*responses[i], 0]


def test_sft_loss_is_the_masked_token_mean_nll(tiny):
    cfg, tokens, mask, _, _ = tiny
    params = init_params(cfg, jax.random.key(1))
    tokens, mask = jnp.asarray(tokens[:4]), jnp.asarray(mask[:4])
    logp = jax.nn.log_softmax(forward(params, cfg, tokens)[:, :-1], axis=-1)
    nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
    expected = jnp.sum(nll * mask[:, 1:]) / jnp.sum(mask)
    np.testing.assert_allclose(sft_loss(params, cfg, tokens, mask), expected, rtol=1e-5)


def test_warm_start_lowers_the_loss(tiny):
    cfg, tokens, mask, _, _ = tiny
    params = init_params(cfg, jax.random.key(2))
    before = float(sft_loss(params, cfg, tokens[:16], mask[:16]))
    losses = []
    params = supervised_warm_start(
        params, cfg, tokens, mask, steps=30, batch_size=16, learning_rate=1e-2,
        on_step=lambda step, loss: losses.append(loss),
    )  # fmt: skip
    assert len(losses) == 30
    assert float(sft_loss(params, cfg, tokens[:16], mask[:16])) < 0.6 * before


def test_demo_end_to_end_writes_summary_and_plot(tmp_path, capsys):
    from train_helpers import small_config

    from attnrl_jax.demo.__main__ import main

    args = ["--workdir", str(tmp_path), "--warm_start_steps", "3", "--rl_steps", "2"]
    summary = main([*args, "--held_out", "4"], config=small_config(tmp_path))
    for key in ("accuracy_before", "accuracy_after", "steps", "wall_seconds"):
        assert key in summary
    assert summary["steps"] == 2
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]
    assert "held-out accuracy before RL" in capsys.readouterr().out
    # a second run reuses the warm start and trains RL afresh
    again = main([*args, "--held_out", "4"], config=small_config(tmp_path))
    assert again["warm_start_seconds"] == 0 and again["steps"] == 2
