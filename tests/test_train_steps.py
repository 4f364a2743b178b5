"""Trainer step properties: nothing compiles after warm-up, the importance ratio at a sampling
temperature != 1, metrics on steps without an update, the grading worker pool, TensorBoard."""

import json
import multiprocessing

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_helpers import parity_reward, run, small_config, strip

from attnrl_jax.buckets import power_of_two
from attnrl_jax.compile_watch import CompileWatch
from attnrl_jax.rl import trainer as trainer_module
from attnrl_jax.rl.loss import metric_names
from attnrl_jax.rl.packed import make_rows, row_logprobs, stack_rows
from attnrl_jax.rl.tree import ORIGINAL
from attnrl_jax.rl.update import row_length_bucket
from attnrl_jax.train import build_trainer, grade_in_process, make_reward_fn

REQUIRED = ("step", "reward", "valid_ratio", "prompt_batch_size")


def loss_keys(config):
    from attnrl_jax.rl.settings import resolve

    return ("loss", "grad_norm", *metric_names(resolve(config).loss))


def strict_json(line):
    def no_constants(name):
        raise ValueError(f"{name} in metrics.jsonl")

    return json.loads(line, parse_constant=no_constants)


def test_steps_after_warmup_compile_nothing(tmp_path):
    """Steps 2..n meet other prompt batch sizes, row counts and expansion plans, all inside the
    buckets step 1 compiled: no program may compile again. The one exception is the rollout
    engine meeting a longer context bucket (a continuation's prompt + prefix can cross one) or
    a new admission size (how many slots free up at once); each of its shapes still compiles
    only once."""
    config = small_config(tmp_path, total_steps=5)
    trainer = build_trainer(config, reward_fn=parity_reward)
    compiled, metrics = [], []
    try:
        for _ in range(config.total_steps):
            with CompileWatch() as watch:
                metrics.append(trainer.train_step())
            compiled.append(watch.messages)
    finally:
        trainer.close()
    engine = ("jit(sample_batch)", "jit(admit)", "jit(decode_chunk)", "jit(empty_state)")
    sampler = [m for step in compiled for m in step if m.startswith(engine, len("Compiling "))]
    # empty_state takes no arrays: its message ("... types ()") is the same for every slot
    # count and cache length (static arguments), so it cannot tell a repeat from a new shape.
    shaped = [m for m in sampler if not m.startswith("Compiling jit(empty_state)")]
    assert len(shaped) == len(set(shaped)), "the sampler compiled one shape twice"
    later = [m for step in compiled[1:] for m in step if m not in sampler]
    assert later == [], "recompiled after warm-up:\n" + "\n".join(m[:300] for m in later)
    shapes = {(m["prompt_batch_size"], m["rows"], m["expanded"]) for m in metrics[1:]}
    assert len(shapes) >= 3, f"the steps did not vary the batch composition: {shapes}"
    for m in metrics:  # every loss metric is a number on steps that updated
        assert m["updates"] >= 1 and all(m[k] is not None for k in loss_keys(config))


def test_ratio_is_one_on_the_first_on_policy_microbatch(tmp_path, monkeypatch):
    """At temperature 0.7, behaviour log-probs (scoring pass for prefix tokens, sampler for
    continuation tokens) and the trainer's new log-probs are of the same distribution, so before
    the first update exp(new - old) = 1; unscaled new log-probs would be far off."""
    temperature = 0.7
    config = small_config(
        tmp_path, total_steps=1, off_policy=False, **{"rollout.temperature": temperature}
    )
    seen = {}
    real_run_updates = trainer_module.run_updates

    def spy(params, opt_state, ref_params, problems, **kw):
        rows = make_rows(problems[: kw["minibatch_problems"]], kw["packing"])
        rows = rows[: kw["microbatch_rows"]]
        length = row_length_bucket(max(len(r.tokens) for r in rows))
        nodes = power_of_two(max(len(r.ancestors) for r in rows), 8)
        batch = stack_rows(rows, kw["microbatch_rows"], length, nodes)
        device = jax.device_put(batch)
        for t in (temperature, 1.0):  # before the update donates the params' buffers
            seen[t] = np.asarray(row_logprobs(params, device, jnp.float32(t), cfg=kw["cfg"])[0])
        seen["batch"], seen["problems"], seen["temperature"] = batch, problems, kw["temperature"]
        return real_run_updates(params, opt_state, ref_params, problems, **kw)

    monkeypatch.setattr(trainer_module, "run_updates", spy)
    metrics, _ = run(config)
    assert metrics[0]["updates"] >= 1 and seen["temperature"] == temperature
    batch = seen["batch"]
    live = batch["weights"] > 0
    old = batch["old_logp"][live]
    assert live.sum() > 20
    # both sources of behaviour log-probs are in the batch: prefix and continuation segments
    branches = {s.branch == ORIGINAL for p in seen["problems"] for s in p.tree.segments}
    assert branches == {True, False}
    ratio = np.exp(seen[temperature][live] - old)
    np.testing.assert_allclose(ratio, 1.0, atol=2e-4)
    assert np.max(np.abs(seen[1.0][live] - old)) > 0.05  # the test would catch a missing scale


@pytest.fixture(scope="module")
def filtered_run(tmp_path_factory):
    """Every reward 0: all trees have zero advantage, every problem is filtered, no update."""
    pytest.importorskip("tensorboardX")
    workdir = tmp_path_factory.mktemp("filtered")
    config = small_config(workdir, total_steps=2, **{"log.tensorboard": True})
    metrics, _ = run(config, reward_fn=lambda texts, golds: np.zeros(len(texts)))
    return workdir, config, metrics


def test_steps_without_update_log_null_loss_metrics(filtered_run):
    workdir, config, metrics = filtered_run
    lines = [strict_json(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2]
    for m in lines:
        assert m["updates"] == 0 and m["valid_ratio"] == 0.0
        for key in REQUIRED:
            assert isinstance(m[key], int | float), key
        for key in loss_keys(config):
            assert key in m and m[key] is None, key


def test_tensorboard_events_are_written(filtered_run):
    workdir, _, _ = filtered_run
    events = list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    data = events[0].read_bytes()
    for tag in (b"reward", b"valid_ratio", b"prompt_batch_size", b"time_sampling"):
        assert tag in data, tag


def test_no_tensorboard_when_switched_off(tmp_path):
    run(small_config(tmp_path, total_steps=1), reward_fn=lambda t, g: np.zeros(len(t)))
    assert not (tmp_path / "tensorboard").exists()


def test_worker_pool_grading_matches_in_process(tmp_path):
    texts = ["so the answer is \\boxed{4}", "\\boxed{5}", "no answer here", "$\\frac{8}{2}$"]
    golds = [("4",)] * 4
    pool_fn, close = make_reward_fn(small_config(tmp_path, **{"grading.workers": 1}))
    try:
        pooled = pool_fn(texts, golds)
    finally:
        close()
    np.testing.assert_array_equal(pooled, grade_in_process(texts, golds))
    assert pooled[0] == 1 and pooled[1] == 0
    runs = {}
    for workers in (0, 1):
        config = small_config(
            tmp_path / f"w{workers}", total_steps=2, **{"grading.workers": workers}
        )
        runs[workers], _ = run(config, reward_fn=None)
    assert strip(runs[1]) == strip(runs[0])
    assert multiprocessing.active_children() == []  # Trainer.close stopped the pool
