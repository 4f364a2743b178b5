"""Disjoint rollout and training devices (mesh.rollout_devices = 4 of the 8 forced CPU devices),
off_policy_steps, the importance correction's metrics, the per-step timeline, bad splits."""

import json

import numpy as np
import pytest
from train_helpers import parity_reward, run, small_config

from attnrl_jax.rl.settings import ConfigError, resolve
from attnrl_jax.train import build_trainer

# the training mesh over every device it is given: 8 shared, or 4 beside 4 rollout devices
SHARED = {"mesh.data": -1}
SPLIT = {**SHARED, "mesh.rollout_devices": 4}
AGREEMENT = ("rollout/logp_diff_mean", "rollout/ratio_max", "rollout/tis_truncated_frac")
# equal samples and trees: these must match exactly between the two device layouts
EXACT = ("reward", "accuracy", "valid_ratio", "sequences", "expanded", "tokens_generated",
         "prompt_batch_size", "rows", "updates", "max_staleness")  # fmt: skip
# float results of the update (4 vs 8 data shards: other reduction orders)
CLOSE = ("loss", "pg_loss", "kl", "clip_frac", "approx_kl", "grad_norm", *AGREEMENT)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    metrics, _ = run(small_config(tmp_path_factory.mktemp("shared"), **SHARED))
    return metrics


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("split")
    metrics, _ = run(small_config(workdir, **SPLIT, **{"log.tensorboard": True}))
    return workdir, metrics


def test_split_run_equals_shared_run(shared, split):
    """The split schedule samples the same rows (same seed, same request indexes, theta_s for
    both halves of the paper's merged call) and trains on them the same way."""
    _, metrics = split
    assert len(metrics) == len(shared) == 3
    for a, b in zip(metrics, shared, strict=True):
        for k in EXACT:
            assert a[k] == b[k], k
        for k in CLOSE:
            np.testing.assert_allclose(a[k], b[k], rtol=2e-4, atol=1e-6, err_msg=k)
    assert [m["sampler_calls"] for m in metrics] == [2, 2, 2]  # the merged call, cut in two
    assert [m["sampler_calls"] for m in shared] == [1, 1, 1]


def test_next_batch_samples_while_this_one_trains(split):
    """Timeline (seconds since the trainer was built): batch s + 1's initial responses are
    sampled on the rollout devices while batch s updates on the training devices. Step 1 is
    left out: its first tree and update programs compile after the sampler has finished."""
    workdir, metrics = split
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [m["timeline"] for m in lines] == [m["timeline"] for m in metrics]
    for m in metrics:
        t = m["timeline"]
        for span in ("sample_initial", "sample_continuations", "grade", "update", "score"):
            assert t[span][0] <= t[span][1], span
        # the critical path: continuations, then grading, then the update
        assert t["sample_continuations"][1] <= t["update"][0]
    assert "sample_warm_up" in metrics[0]["timeline"]
    for m in metrics[1:]:
        sample, update = m["timeline"]["sample_initial"], m["timeline"]["update"]
        assert sample[0] < update[1] and update[0] < sample[1], m["timeline"]


def test_shared_devices_sample_in_one_call(shared):
    for m in shared:
        t = m["timeline"]
        assert t["sample_initial"] == t["sample_continuations"]
        assert t["sample_initial"][1] <= t["update"][0]


def test_agreement_metrics(shared, split):
    """Step 1 trains on tokens sampled by theta_0 and recomputed at theta_0: sampler and
    trainer agree to float32 rounding. Later steps' initial responses are one update stale, so
    the proximal log-probs move away from the behaviour ones."""
    for metrics in (shared, split[1]):
        first = metrics[0]
        assert first["rollout/logp_diff_mean"] < 1e-5
        assert abs(first["rollout/ratio_max"] - 1.0) < 1e-4
        assert first["rollout/tis_truncated_frac"] == 0.0
        for m in metrics[1:]:
            assert m["rollout/logp_diff_mean"] > 1e-3
            assert m["rollout/ratio_max"] > 1.01


def test_agreement_metrics_reach_tensorboard(split):
    pytest.importorskip("tensorboardX")
    workdir, _ = split
    (events,) = (workdir / "tensorboard").glob("events.out.tfevents.*")
    data = events.read_bytes()
    for tag in (*AGREEMENT, "time_proximal"):
        assert tag.encode() in data, tag


def test_no_correction_gives_the_same_first_loss(shared, tmp_path):
    """tis_cap 0: no proximal forward, no agreement metrics; where numerics agree (step 1) the
    corrected loss is the uncorrected one up to float rounding."""
    metrics, _ = run(small_config(tmp_path, total_steps=1, **SHARED, **{"loss.tis_cap": 0.0}))
    off, on = metrics[0], shared[0]
    assert not any(k in off for k in AGREEMENT)
    assert off["time_proximal"] == 0.0 and on["time_proximal"] > 0.0
    for k in ("loss", "pg_loss", "kl", "grad_norm"):
        np.testing.assert_allclose(off[k], on[k], rtol=1e-5, err_msg=k)


def test_two_steps_off_policy_split_and_resume(tmp_path):
    """off_policy_steps 2: batch s + 2 is sampled with theta_s, so tokens are up to two updates
    stale; a run stopped after step 2 (two batches in flight in its checkpoint) and resumed
    gives the uninterrupted run's metrics."""
    options = {**SPLIT, "off_policy_steps": 2}
    full, _ = run(small_config(tmp_path / "full", **options))
    assert [m["max_staleness"] for m in full] == [0, 1, 2]
    assert [m["policy_version"] for m in full] == [0, 1, 2]
    config = small_config(tmp_path / "resumed", **options)
    run(config, steps=2)
    resumed, trainer = run(config)
    assert trainer.step == 3 and len(resumed) == 1
    for k in EXACT:
        assert resumed[0][k] == full[2][k], k
    for k in CLOSE:
        np.testing.assert_allclose(resumed[0][k], full[2][k], rtol=1e-6, err_msg=k)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"mesh.rollout_devices": 8}, "leaves no training device"),
        ({**SPLIT, "mesh.rollout_devices": 3, "mesh.fsdp": 2}, "cannot use the 5 training devices"),
        ({"mesh.rollout_devices": 4, "mesh.data": 8}, r"= 8 devices\) cannot use the 4 training"),
    ],
)
def test_bad_split_is_one_config_error_before_compiling(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_trainer(small_config(tmp_path, **overrides), reward_fn=parity_reward)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"off_policy_steps": -1}, "off_policy_steps must be >= 0"),
        ({"mesh.rollout_devices": -2}, "mesh.rollout_devices must be >= 0"),
        ({"mesh.rollout_devices": 3, "mesh.tensor": 2}, "multiple of mesh.tensor=2"),
        ({"loss.tis_cap": 0.5}, "tis_cap must be 0"),
    ],
)
def test_bad_values_are_config_errors(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        resolve(small_config(tmp_path, **overrides))


def test_off_policy_false_means_zero_steps(tmp_path):
    assert resolve(small_config(tmp_path, off_policy=False)).off_policy_steps == 0
    assert resolve(small_config(tmp_path, off_policy_steps=3)).off_policy_steps == 3
    assert not resolve(small_config(tmp_path, off_policy_steps=0)).off_policy
