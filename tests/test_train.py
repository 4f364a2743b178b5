"""The trainer end to end on the tiny model: every method, off- and on-policy, staleness, exact
resume, interrupted checkpoints, config validation."""

import json

import jax
import pytest
from train_helpers import parity_reward, run, small_config, strip

from attnrl_jax.models import read_config, sharding
from attnrl_jax.rl.settings import ConfigError, resolve
from attnrl_jax.sampling import Buckets, SamplerConfig
from attnrl_jax.sampling.engine import NativeEngine
from attnrl_jax.train import build_trainer, initial_model_path


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("full")
    metrics, trainer = run(small_config(workdir))
    return workdir, metrics, trainer


def test_off_policy_run_logs_and_updates(uninterrupted):
    workdir, metrics, trainer = uninterrupted
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3]
    for key in ("reward", "valid_ratio", "prompt_batch_size", "accuracy", "filtered_ratio",
                "tokens_generated", "time_sampling", "time_scoring", "time_grading",
                "time_update", "time_reference", "kl", "entropy", "clip_frac"):  # fmt: skip
        assert key in lines[-1], key
    assert all(m["updates"] >= 1 for m in metrics)
    assert [m["sampler_calls"] for m in metrics] == [1, 1, 1]
    assert trainer.step == 3


def test_no_token_more_than_one_version_stale(uninterrupted):
    """Off-policy: the prefix tokens of step k's trees come from theta_{k-1} (theta_0 for the
    warm-up batch), continuations from theta_k."""
    _, metrics, _ = uninterrupted
    assert [m["max_staleness"] for m in metrics] == [0, 1, 1]


class RecordingEngine(NativeEngine):
    """The native engine, recording the policy version of every generate call and every
    update_weights version."""

    def __init__(self, cfg, rows):
        super().__init__(cfg, None, SamplerConfig(Buckets(rows=(rows,))))
        self.generate_versions, self.updates, self.closed = [], [], False

    def generate(self, requests, options, progress=None):
        self.generate_versions.append(self.version)
        return super().generate(requests, options, progress)

    def update_weights(self, params, version):
        self.updates.append(version)
        super().update_weights(params, version)

    def close(self):
        self.closed = True
        super().close()


def test_a_stand_in_engine_drives_the_same_run(uninterrupted, tmp_path):
    """The trainer samples only through its RolloutEngine and hands it every new policy: an
    engine wrapping the native sampler gives the native run's metrics exactly."""
    _, full, _ = uninterrupted
    c = resolve(small_config(tmp_path))
    engine = RecordingEngine(read_config(initial_model_path(c)), c.rollout.sampler_rows)
    metrics, _ = run(c, engine=engine)
    assert strip(metrics) == strip(full)
    assert engine.updates == [0, 1, 2, 3]  # the initial policy, then after every update
    # off-policy: the warm-up batch and step 1 with theta_0, then one call per step
    assert engine.generate_versions == [0, 0, 1, 2]
    assert engine.closed


def test_resume_gives_the_same_metrics(uninterrupted, tmp_path):
    _, full, _ = uninterrupted
    first, _ = run(small_config(tmp_path), steps=2)
    # An interrupted write of step 3: orbax's temporary directory is never loaded.
    (tmp_path / "checkpoints" / "3.orbax-checkpoint-tmp-1234").mkdir()
    with open(tmp_path / "metrics.jsonl", "a") as f:  # a step-3 line cut off by a kill
        f.write('{"step": 3, "rew')
    rest, trainer = run(small_config(tmp_path))
    assert trainer.step == 3 and len(rest) == 1
    assert strip(first + rest) == strip(full)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert strip(lines) == strip(full)


def test_fci_from_the_sampler_gives_the_run_of_the_scoring_forward(uninterrupted, tmp_path):
    """rollout.fci_source: the default ("sampler", FCI accumulated while decoding, no scoring
    forward) and "scoring" give the same branch points, trees and rewards; losses agree to
    float32 noise (behaviour log-probs come from the sampler instead of the scoring forward)."""
    _, by_sampler, _ = uninterrupted
    by_scoring, _ = run(small_config(tmp_path, **{"rollout.fci_source": "scoring"}))
    for a, b in zip(strip(by_sampler), strip(by_scoring), strict=True):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], int):
                assert a[key] == b[key], key
            else:
                assert a[key] == pytest.approx(b[key], rel=1e-3, abs=1e-5), key


@pytest.mark.parametrize(
    "overrides, calls",
    [
        ({"method": "grpo"}, 1),
        ({"method": "treerl", "train.packing": "path"}, 1),
        ({"off_policy": False, "ads.attention_filter": False}, 2),
    ],
)
def test_methods_and_variants_train(tmp_path, overrides, calls):
    metrics, _ = run(small_config(tmp_path, total_steps=1, **overrides))
    assert metrics[0]["updates"] >= 1
    assert metrics[0]["max_staleness"] == 0
    assert metrics[0]["sampler_calls"] == calls


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"method": "ppo"}, "method='ppo'"),
        ({"method": "grpo", "branching": "atb"}, "grpo has no tree"),
        ({"train.microbatch_rows": 3, "mesh.data": 2}, "multiple of mesh"),
        ({"loss.dual_clip": 0.5}, "dual_clip"),
        ({"workdir": ""}, "workdir is required"),
        ({"rollout.temperature": 0.0}, "temperature must be > 0"),
        ({"rollout.fci_source": "forward"}, "rollout.fci_source='forward'"),
        ({"rollout.decode_layout": "fsdp"}, "rollout.decode_layout='fsdp'; known: "),
    ],
)
def test_config_errors_before_anything_is_built(overrides, message):
    with pytest.raises(ConfigError, match=message):
        resolve(small_config("/nonexistent", **overrides))


def test_unknown_key_is_an_error():
    with pytest.raises(AttributeError):
        small_config("/x").rollout.group_sise = 3


def test_rollout_decode_layout_reaches_the_engine(tmp_path):
    """rollout.decode_layout is the layout the trainer's engine decodes from: "training" on a
    mesh with fsdp 2 keeps the trainer's FSDP-split params (no decode copy), where the default
    would replicate them."""
    c = small_config(tmp_path, **{"mesh.data": -1, "mesh.fsdp": 2})
    c.rollout.decode_layout = "training"
    trainer = build_trainer(c, reward_fn=parity_reward)
    try:
        engine, cfg, mesh = trainer.engine, trainer.cfg, trainer.mesh
        assert engine.layout == sharding.decode_layout(cfg, mesh, layout="training")
        assert engine.layout != sharding.decode_layout(cfg, mesh, layout="replicated")
        held, own = jax.tree.leaves(engine.params), jax.tree.leaves(trainer.params)
        assert all(e is t for e, t in zip(held, own, strict=True))
    finally:
        trainer.close()
