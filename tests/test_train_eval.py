"""What a training run leaves behind besides checkpoints: evaluation metrics during training
(the demo config, eval on held-out demo problems) and the policy exported as a Hugging Face
directory that transformers loads with the same logits."""

import json

import jax
import numpy as np
import pytest
from hf_reference import hf_logits
from train_helpers import parity_reward, small_config

from attnrl_jax.export import main as export_main
from attnrl_jax.export import save_run_config
from attnrl_jax.models import forward
from attnrl_jax.train import build_trainer


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """3 steps of the demo config with eval every 2 steps; returns (workdir, log, trainer)."""
    workdir = tmp_path_factory.mktemp("train_eval")
    c = small_config(workdir, total_steps=3)
    # max_new_tokens as in training, so the eval reuses the compiled sampler
    c.eval.update(every=2, benchmarks="demo", k=2, num_problems=4, max_new_tokens=16)
    save_run_config(c, workdir)  # as `python -m attnrl_jax.train` does
    logged = []
    trainer = build_trainer(c, reward_fn=parity_reward, log_fn=logged.append)
    try:
        trainer.run(c.total_steps)
    finally:
        trainer.close()
    return workdir, logged, trainer


def test_periodic_eval_writes_metrics(trained):
    workdir, logged, _ = trained
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3]
    keys = {"eval/demo/avg@2", "eval/demo/pass@1", "eval/demo/pass@2", "eval/demo/maj@2"}
    keys |= {"eval/demo/num_problems", "eval/demo/truncated", "eval/average/pass@1"}
    assert not any(k.startswith("eval/") for k in lines[0])  # step 1: not due
    for m in lines[1:]:  # step 2 (every 2) and step 3 (the last)
        assert keys <= set(m) and m["eval/demo/num_problems"] == 4
        assert 0.0 <= m["eval/demo/avg@2"] <= m["eval/demo/pass@2"] <= 1.0
        assert m["eval/average/pass@1"] == m["eval/demo/pass@1"] and m["time_eval"] > 0
    assert logged[1]["eval/demo/avg@2"] == lines[1]["eval/demo/avg@2"]  # TensorBoard callback


def test_export_loads_in_transformers_with_the_same_logits(trained, tmp_path, monkeypatch):
    """Export restores the params of the last checkpoint without building a Trainer."""
    from attnrl_jax.rl import trainer as trainer_module

    def no_trainer(*args, **kwargs):
        raise AssertionError("export must not build a Trainer")

    monkeypatch.setattr(trainer_module.Trainer, "__init__", no_trainer)
    workdir, _, trainer = trained
    out = tmp_path / "hf"
    assert export_main(["--workdir", str(workdir), "--output", str(out)]) == 0
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(out)).encode("1 + 2") == trainer.tokenizer.encode(
        "1 + 2"
    )
    tokens = np.random.default_rng(0).integers(0, trainer.cfg.vocab_size, (2, 12))
    ours = np.asarray(jax.device_get(forward(trainer.params, trainer.cfg, tokens)))
    np.testing.assert_allclose(hf_logits(out, tokens), ours, atol=2e-4, rtol=2e-4)
    initial = hf_logits(workdir / "initial_model", tokens)
    assert np.abs(initial - ours).max() > 1e-3  # the export is the trained policy


def test_export_errors_are_named(trained, tmp_path, capsys):
    workdir, _, _ = trained
    assert export_main(["--workdir", str(tmp_path)]) == 2
    assert "config.json: no such file" in capsys.readouterr().err
    assert export_main(["--workdir", str(workdir), "--step", "1", "--output", str(tmp_path)]) == 2
    assert "--step 1: no such checkpoint; saved steps: [2, 3]" in capsys.readouterr().err
