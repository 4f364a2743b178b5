"""gs:// workdirs against a local GCS emulator (tests/gcs_emulator.py): checkpoints (orbax's
tensorstore gcs driver, committed by orbax's commit_success.txt marker), metrics.jsonl,
config.json, TensorBoard events and export all live in the bucket; a run interrupted after
step 2 resumes from it and ends with the metrics of an undisturbed local run, and the export
read from the bucket equals the local run's bit for bit.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from faults import CLEAR, SURVIVED, fault
from gcs_emulator import emulator
from safetensors.numpy import load_file
from train_helpers import parity_reward, run, small_config, strip

from attnrl_jax import export, storage
from attnrl_jax.train import build_trainer


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
    with emulator(tmp_path_factory.mktemp("gcs_cache")) as root:
        yield root


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """3 undisturbed steps in a local workdir (checkpoint after each), exported."""
    workdir = tmp_path_factory.mktemp("local")
    config = small_config(workdir, **{"checkpoint.keep": 3})
    metrics, _ = run(config)
    export.save_run_config(config, workdir)
    assert export.main(["--workdir", str(workdir)]) == 0
    return workdir, strip(metrics)


def jsonl(path) -> list[dict]:
    return strip([json.loads(x) for x in storage.path(path).read_text().splitlines()])


@pytest.fixture(scope="module")
def gcs_run(bucket, local_run):
    """The same run on gs://: 2 steps, stopped, then resumed to 3 by a new trainer."""
    workdir = f"{bucket}/run"
    config = small_config(workdir, **{"checkpoint.keep": 3, "log.tensorboard": True})
    export.save_run_config(config, workdir)
    run(config, steps=2)
    trainer = build_trainer(config, reward_fn=parity_reward)
    try:
        resumed_from = trainer.step
        trainer.run()
    finally:
        trainer.close()
    return workdir, resumed_from


@fault("gs:// workdir: a run stopped after step 2 and resumed from the bucket", SURVIVED)
def test_run_resumes_from_the_bucket_with_the_local_metrics(gcs_run, local_run):
    workdir, resumed_from = gcs_run
    assert resumed_from == 2
    assert jsonl(f"{workdir}/metrics.jsonl") == local_run[1]
    steps = storage.path(workdir) / "checkpoints"
    assert sorted(p.name for p in steps.iterdir()) == ["1", "2", "3"]
    # orbax commits a step on object storage with a marker file, not a rename
    assert (steps / "3" / "commit_success.txt").exists()
    assert json.loads((storage.path(workdir) / "config.json").read_text())["seed"] == 0
    events = list((storage.path(workdir) / "tensorboard").iterdir())
    assert events and all(e.name.startswith("events.out.tfevents") for e in events)
    assert not any(storage.path(workdir).glob(".config.json*"))  # no temporary left behind


def tensors(folder) -> dict[str, np.ndarray]:
    local = storage.local_copy(folder)
    return load_file(str(local / "model.safetensors"))


def test_export_from_the_bucket_to_the_bucket_equals_the_local_export(gcs_run, local_run):
    workdir, _ = gcs_run
    output = f"{workdir}-export"
    assert export.main(["--workdir", workdir, "--output", output]) == 0
    out = storage.path(output)
    assert (out / export.MARKER).exists() and (out / "config.json").exists()
    got, want = tensors(output), tensors(local_run[0] / export.EXPORT_DIR)
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    # a second export replaces its own earlier one (marker), and refuses a foreign folder
    assert export.main(["--workdir", workdir, "--output", output]) == 0
    foreign = storage.path(f"{workdir}-foreign")
    (foreign / "notes.txt").write_text("mine")
    assert export.main(["--workdir", workdir, "--output", str(foreign)]) == 2
    assert (foreign / "notes.txt").read_text() == "mine"


@fault("gs:// export --output = the workdir in the bucket", CLEAR)
def test_export_refuses_the_workdir_in_the_bucket(gcs_run, capsys):
    workdir, _ = gcs_run
    assert export.main(["--workdir", workdir, "--output", workdir]) == 2
    assert "would replace the workdir" in capsys.readouterr().err
    assert (storage.path(workdir) / "checkpoints" / "3").exists()


@fault("gs:// workdir in a bucket that does not exist", CLEAR)
def test_a_missing_bucket_fails_at_once_in_one_line(bucket):
    from attnrl_jax.rl.checkpoint import CheckpointDirError, Checkpointer

    with pytest.raises(CheckpointDirError, match="gs://no-such-bucket/run/checkpoints is not wr"):
        Checkpointer("gs://no-such-bucket/run")


ROOT = Path(__file__).resolve().parents[1]


@fault("gs:// workdir: kill -9 after a checkpoint's files, before its commit marker", SURVIVED)
def test_kill_before_the_commit_marker_resumes_from_the_previous_step(bucket, local_run):
    """tests/fault_worker.py "during": step 2's objects are written, orbax's
    commit_success.txt is not; the step is not listed and the resume is exact."""
    workdir = f"{bucket}/killed"
    env = dict(os.environ, PYTHONPATH=f"{ROOT}:{ROOT / 'tests'}")
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "fault_worker.py"), workdir, "during"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    steps = storage.path(workdir) / "checkpoints"
    assert (steps / "2").exists() and not (steps / "2" / "commit_success.txt").exists()
    config = small_config(workdir, **{"checkpoint.keep": 3})
    trainer = build_trainer(config, reward_fn=parity_reward)
    try:
        assert trainer.step == 1
        trainer.run()
    finally:
        trainer.close()
    assert jsonl(f"{workdir}/metrics.jsonl") == local_run[1]


@pytest.mark.parametrize("tool", ["generate", "evaluate"])
@fault("gs:// --output of generate / evaluate (local-only tools)", CLEAR)
def test_local_only_tools_refuse_gs_paths(tool, tmp_path, capsys, monkeypatch):
    import importlib

    monkeypatch.chdir(tmp_path)  # where pathlib would have made a folder named "gs:"
    module = importlib.import_module(f"attnrl_jax.{tool}")
    argv = ["--model", str(tmp_path), "--output", "gs://bucket/out"]
    argv += ["--input", "in.jsonl"] if tool == "generate" else ["--benchmarks", "math500"]
    with pytest.raises(SystemExit) as e:
        module.main(argv)
    assert e.value.code == 2
    assert "gs://bucket/out: object storage is not supported by this tool" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "gs:").exists()


def test_paths_stay_urls_and_compare_lexically():
    assert str(storage.path("gs://b/run") / "checkpoints") == "gs://b/run/checkpoints"
    assert storage.same_or_inside(storage.path("gs://b/run/x"), storage.path("gs://b/run"))
    assert not storage.same_or_inside(storage.path("gs://b/run2"), storage.path("gs://b/run"))
    assert not storage.same_or_inside(storage.path("/b/run"), storage.path("gs://b/run"))
    with pytest.raises(storage.StorageError, match="s3:// is not supported"):
        storage.path("s3://b/run")


def test_jsonl_log_on_object_storage_uploads_at_flush(bucket):
    target = storage.path(f"{bucket}/log/metrics.jsonl")
    target.write_text('{"step": 1}\n')
    log = storage.JsonlLog(target, every_s=3600)
    log.write('{"step": 2}\n')
    assert target.read_text() == '{"step": 1}\n'  # throttled: not yet uploaded
    log.close()
    assert target.read_text() == '{"step": 1}\n{"step": 2}\n'
