"""Evaluation during training: the demo config with eval on held-out demo problems writes
eval/<benchmark>/<metric> into the step's metrics.jsonl line, every `every` steps and at the end."""

import json

from test_train import parity_reward, small_config

from attnrl_jax.train import build_trainer


def test_periodic_eval_writes_metrics(tmp_path):
    c = small_config(tmp_path, total_steps=3)
    # max_new_tokens as in training: the eval reuses the compiled sampler
    c.eval.update(every=2, benchmarks="demo", k=2, num_problems=4, max_new_tokens=16)
    logged = []
    trainer = build_trainer(c, reward_fn=parity_reward, log_fn=logged.append)
    try:
        trainer.run(c.total_steps)
    finally:
        trainer.close()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3]
    keys = {"eval/demo/avg@2", "eval/demo/pass@1", "eval/demo/pass@2", "eval/demo/maj@2"}
    keys |= {"eval/demo/num_problems", "eval/demo/truncated", "eval/average/pass@1"}
    assert not any(k.startswith("eval/") for k in lines[0])  # step 1: not due
    for m in lines[1:]:  # step 2 (every 2) and step 3 (the last)
        assert keys <= set(m) and m["eval/demo/num_problems"] == 4
        assert 0.0 <= m["eval/demo/avg@2"] <= m["eval/demo/pass@2"] <= 1.0
        assert m["eval/average/pass@1"] == m["eval/demo/pass@1"] and m["time_eval"] > 0
    assert logged[1]["eval/demo/avg@2"] == lines[1]["eval/demo/avg@2"]  # TensorBoard callback
