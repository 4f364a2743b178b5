"""Fault injection: damaged checkpoints, kills, signals, non-finite steps, collisions, bad configs.

Every test injects one fault and checks that the run either ends in the correct result
("survived": the same metrics as an undisturbed run, nothing lost) or stops with one clear line
("clear error"), and that nothing the user wrote is deleted. `@fault(what, outcome)` labels each
test; benchmarks/fault_report.py runs this file and writes benchmarks/results/faults.json and the
README's RELIABILITY table from the outcomes.
"""

import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from faults import CLEAR, SURVIVED, fault
from train_helpers import parity_reward, run, small_config, strip

from attnrl_jax import export, score
from attnrl_jax.rl import integrity
from attnrl_jax.rl.checkpoint import CheckpointDirError, Checkpointer
from attnrl_jax.rl.devices import mesh_sizes
from attnrl_jax.rl.integrity import DamagedCheckpoint
from attnrl_jax.rl.interrupt import Interrupted, SignalGuard
from attnrl_jax.rl.settings import ConfigError, check_files, resolve
from attnrl_jax.rl.trainer import NonFiniteStep
from attnrl_jax.train import build_trainer, check_resume

ROOT = Path(__file__).resolve().parents[1]


# ----- one undisturbed run that the others compare with -----


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """3 steps, a checkpoint after each (keep 3): metrics and the workdir to copy."""
    workdir = tmp_path_factory.mktemp("full")
    config = small_config(workdir, **{"checkpoint.keep": 3})
    metrics, _ = run(config)
    return workdir, strip(metrics)


def copy_run(full, tmp_path, keep=3) -> tuple[Path, object]:
    src, _ = full
    dst = tmp_path / "run"
    shutil.copytree(src, dst)
    return dst, small_config(dst, **{"checkpoint.keep": keep})


def metrics_file(workdir: Path) -> list[dict]:
    return strip([json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()])


def data_files(item_dir: Path) -> list[Path]:
    """The array data files of a checkpoint item (orbax OCDBT: d/ and ocdbt.process_*/d/; which
    ones a restore reads depends on the item, so a fault hits them all)."""
    return [p for p in item_dir.rglob("d/*") if p.is_file()]


def resume_and_compare(workdir, config, full, expect_from: int):
    """Builds the trainer (it restores), checks the restored step, trains to the end and checks
    metrics.jsonl equals the undisturbed run's."""
    trainer = build_trainer(config, reward_fn=parity_reward)
    try:
        assert trainer.step == expect_from
        trainer.run()
    finally:
        trainer.close()
    assert metrics_file(workdir) == full[1]


# ----- checkpoint integrity -----


def flip_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {"bit flip": flip_bit, "truncation": truncate, "deletion": Path.unlink}


@pytest.mark.parametrize("how", sorted(DAMAGE))
@pytest.mark.parametrize("item", ["state", "pending"])
@fault("damaged file in the latest checkpoint", SURVIVED)
def test_damaged_latest_checkpoint_falls_back(full, tmp_path, capsys, how, item):
    workdir, config = copy_run(full, tmp_path)
    for path in data_files(workdir / "checkpoints" / "3" / item):
        DAMAGE[how](path)
    resume_and_compare(workdir, config, full, expect_from=2)
    err = capsys.readouterr().err
    assert "checkpoints/3 is damaged" in err and "step 2" in err
    assert (workdir / "checkpoints" / "3.damaged").is_dir()  # set aside, not deleted


@fault("edited host state (step, stream position) in the latest checkpoint", SURVIVED)
def test_edited_host_state_is_detected(full, tmp_path, capsys):
    workdir, config = copy_run(full, tmp_path)
    meta = workdir / "checkpoints" / "3" / "host" / "metadata"
    host = json.loads(meta.read_text())
    host["filter_count"] = host["filter_count"] + 1
    meta.write_text(json.dumps(host))
    resume_and_compare(workdir, config, full, expect_from=2)
    assert "host state" in capsys.readouterr().err


@fault("every checkpoint damaged", CLEAR)
def test_no_intact_checkpoint_stops_and_renames_nothing(full, tmp_path):
    workdir, config = copy_run(full, tmp_path)
    for step in ("1", "2", "3"):
        for path in data_files(workdir / "checkpoints" / step / "state"):
            flip_bit(path)
    with pytest.raises(DamagedCheckpoint, match="no intact checkpoint") as e:
        build_trainer(config, reward_fn=parity_reward)
    assert "step 3" in str(e.value) and "step 1" in str(e.value)
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["1", "2", "3"]


def test_checksum_catches_any_single_bit_and_nan():
    x = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(5, np.int32)}
    sums, finite = integrity.array_checksums(x)
    assert finite
    for bit in (0, 7, 22, 31):  # mantissa, exponent, sign bits of one element
        y = x["a"].copy()
        y.view(np.uint32)[1, 2] ^= np.uint32(1 << bit)
        assert integrity.array_checksums({**x, "a": y})[0] != sums
    swapped = x["a"].copy()
    swapped[0, 0], swapped[0, 1] = swapped[0, 1], swapped[0, 0]  # same values, other places
    assert integrity.array_checksums({**x, "a": swapped})[0] != sums
    x["a"][0, 0] = np.nan
    assert not integrity.array_checksums(x)[1]


@fault("saving non-finite params", CLEAR)
def test_non_finite_state_is_never_saved(tmp_path):
    c = Checkpointer(tmp_path)
    try:
        with pytest.raises(ValueError, match="non-finite"):
            c.save(1, {"w": np.array([1.0, np.inf], np.float32)}, {"step": 1}, None)
    finally:
        c.close()
    assert c.all_steps() == []


# ----- kill -9 at several points of a save -----


# A generous limit: the worker compiles and trains 2 steps, seconds on an idle machine but
# minutes on a loaded one; the kill points are hooks (fault_worker.py), not delays.
WORKER_TIMEOUT_S = 1200


@pytest.mark.parametrize("point, resumes_from", [("before", 1), ("during", 1), ("after", 2)])
@fault("kill -9 during a checkpoint save", SURVIVED)
def test_kill_during_save_resumes_exactly(full, tmp_path, point, resumes_from):
    workdir = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=f"{ROOT}:{ROOT / 'tests'}")
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "fault_worker.py"), str(workdir), point],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S,
    )  # fmt: skip
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    config = small_config(workdir, **{"checkpoint.keep": 3})
    trainer = build_trainer(config, reward_fn=parity_reward)
    try:
        assert trainer.step == resumes_from  # "during": step 2 written, never committed
        trainer.run()
    finally:
        trainer.close()
    assert metrics_file(workdir) == full[1]


# ----- signals -----


def test_signal_guard_holds_a_signal_during_a_save():
    # what was installed before (default_int_handler, or SIG_IGN under `nohup ... &`)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with SignalGuard() as guard:
        with pytest.raises(Interrupted) as e, guard.saving():
            os.kill(os.getpid(), signal.SIGTERM)
            saved = True  # the block went on after the signal
        assert saved and e.value.exit_code == 143
        reached = []
        with pytest.raises(Interrupted), guard.saving():
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)  # a second signal abandons the save at once
            reached.append(1)
        assert not reached
        with pytest.raises(Interrupted) as e:
            os.kill(os.getpid(), signal.SIGINT)
        assert e.value.exit_code == 130
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # restored


@fault("SIGINT in the middle of a step", SURVIVED)
def test_sigint_mid_step_then_resume(full, tmp_path):
    workdir = tmp_path / "run"
    config = small_config(workdir, **{"checkpoint.keep": 3})
    calls = []

    def reward(texts, golds):
        calls.append(1)
        if len(calls) == 3:  # step 2's grading
            os.kill(os.getpid(), signal.SIGINT)
        return parity_reward(texts, golds)

    trainer = build_trainer(config, reward_fn=reward)
    try:
        with pytest.raises(Interrupted) as e:
            trainer.run()
        assert e.value.exit_code == 130
        assert "step 1" in trainer.restore_point()
    finally:
        trainer.close()
    resume_and_compare(workdir, config, full, expect_from=1)


@fault("SIGTERM in the middle of a checkpoint save", SURVIVED)
def test_sigterm_mid_save_finishes_the_save(full, tmp_path, capsys):
    workdir = tmp_path / "run"
    config = small_config(workdir, **{"checkpoint.keep": 3})
    trainer = build_trainer(config, reward_fn=parity_reward)
    real_save = trainer.checkpointer.save

    def save(step, *args):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        real_save(step, *args)

    trainer.checkpointer.save = save
    try:
        with pytest.raises(Interrupted) as e:
            trainer.run()
        assert e.value.exit_code == 143
        assert trainer.checkpointer.all_steps() == [1, 2]
    finally:
        trainer.close()
    assert "finishing the checkpoint" in capsys.readouterr().err
    resume_and_compare(workdir, config, full, expect_from=2)
    assert "resumed from step 2" in capsys.readouterr().err


def read_events(path: Path) -> list[bytes]:
    """The records of a TFRecord events file (length, crc, data, crc)."""
    data, out, i = path.read_bytes(), [], 0
    while i < len(data):
        (n,) = struct.unpack("<Q", data[i : i + 8])
        out.append(data[i + 12 : i + 12 + n])
        i += 16 + n
    return out


@fault("resume after a kill: TensorBoard points logged past the checkpoint", SURVIVED)
def test_tensorboard_purges_points_after_the_restored_step(full, tmp_path):
    pytest.importorskip("tensorboardX")
    from tensorboardX.proto import event_pb2

    workdir, config = copy_run(full, tmp_path)
    shutil.rmtree(workdir / "checkpoints" / "3")  # as if killed before step 3's save
    config.log.tensorboard = True
    resume_and_compare(workdir, config, full, expect_from=2)
    (events,) = (workdir / "tensorboard").glob("events.out.tfevents.*")
    parsed = [event_pb2.Event.FromString(r) for r in read_events(events)]
    start = [e for e in parsed if e.HasField("session_log")]
    assert start and start[0].session_log.status == event_pb2.SessionLog.START
    assert start[0].step == 3  # TensorBoard drops older points of step >= 3


# ----- non-finite steps -----


@pytest.fixture
def blow_up_at_step_2(monkeypatch):
    """The update of step 2 returns NaN params (and, with loss=True, a NaN loss): a numerical
    blow-up, injected after the real update."""
    from attnrl_jax.rl import trainer as trainer_module

    real = trainer_module.run_updates
    calls = []

    def make(loss: bool):
        def run_updates(params, opt_state, *args, **kwargs):
            params, opt_state, metrics = real(params, opt_state, *args, **kwargs)
            calls.append(1)
            if len(calls) == 2:
                params = jax.tree.map(lambda x: x * jnp.nan, params)
                if loss:
                    metrics = {**metrics, "loss": float("nan")}
            return params, opt_state, metrics

        monkeypatch.setattr(trainer_module, "run_updates", run_updates)

    return make


@pytest.mark.parametrize("loss", [True, False])
@fault("NaN loss or params in step 2 (on_nonfinite=stop)", CLEAR)
def test_nonfinite_step_stops_unsaved(tmp_path, blow_up_at_step_2, loss):
    blow_up_at_step_2(loss)
    trainer = build_trainer(small_config(tmp_path), reward_fn=parity_reward)
    try:
        with pytest.raises(NonFiniteStep, match="step 2: non-finite") as e:
            trainer.run()
        assert trainer.checkpointer.all_steps() == [1]
        assert "checkpoint step 1" in str(e.value)
    finally:
        trainer.close()


@fault("NaN loss in step 2 (on_nonfinite=skip)", SURVIVED)
def test_nonfinite_step_is_skipped_and_counted(tmp_path, blow_up_at_step_2):
    blow_up_at_step_2(True)
    config = small_config(tmp_path, **{"train.on_nonfinite": "skip"})
    metrics, trainer = run(config)
    assert [m["nonfinite_skips"] for m in metrics] == [0, 1, 1]
    assert metrics[1]["loss"] is None and metrics[2]["loss"] is not None
    assert integrity.all_finite(trainer.params)
    assert trainer.checkpointer.all_steps()[-1] == 3


# ----- export: never delete what it did not write -----


@pytest.fixture(scope="module")
def exportable(full):
    workdir, _ = full
    export.save_run_config(small_config(workdir), workdir)
    return workdir


def export_main(capsys, *argv) -> tuple[int, str]:
    code = export.main([str(a) for a in argv])
    return code, capsys.readouterr().err


@fault("export --output = the workdir, a folder inside it, a folder holding it", CLEAR)
@pytest.mark.parametrize("where", ["workdir", "inside", "parent", "initial_model"])
def test_export_refuses_to_replace_the_run(exportable, capsys, where):
    target = {
        "workdir": exportable,
        "inside": exportable / "checkpoints",
        "parent": exportable.parent,
        "initial_model": exportable / "initial_model",
    }[where]
    before = sorted(p.relative_to(exportable) for p in exportable.rglob("*"))
    code, err = export_main(capsys, "--workdir", exportable, "--output", target, "--overwrite")
    assert code == 2 and err.count("\n") == 1 and "error:" in err
    assert sorted(p.relative_to(exportable) for p in exportable.rglob("*")) == before


@fault("export --output = an existing folder it did not write", CLEAR)
def test_export_keeps_a_foreign_folder_unless_overwrite(exportable, tmp_path, capsys):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    code, err = export_main(capsys, "--workdir", exportable, "--output", target)
    assert code == 2 and "was not written by export" in err
    assert (target / "notes.txt").read_text() == "mine"
    code, _ = export_main(capsys, "--workdir", exportable, "--output", target, "--overwrite")
    assert code == 0 and (target / export.MARKER).is_file()
    code, _ = export_main(capsys, "--workdir", exportable, "--output", target)
    assert code == 0  # its own earlier export may be replaced


@fault(
    "damaged latest checkpoint at export (the newest intact one is exported, saying so)", SURVIVED
)
def test_export_falls_back_to_the_newest_intact_checkpoint(full, tmp_path, capsys):
    workdir, config = copy_run(full, tmp_path)
    export.save_run_config(config, workdir)
    for path in data_files(workdir / "checkpoints" / "3" / "state"):
        path.unlink()
    code, err = export_main(capsys, "--workdir", workdir, "--output", tmp_path / "latest")
    assert code == 0 and "checkpoints/3 is damaged" in err and "exported step 2" in err
    code, _ = export_main(capsys, "--workdir", workdir, "--output", tmp_path / "two", "--step", 2)
    assert code == 0
    for f in (tmp_path / "two").glob("*.safetensors"):
        assert f.read_bytes() == (tmp_path / "latest" / f.name).read_bytes()
    code, err = export_main(capsys, "--workdir", workdir, "--output", tmp_path / "x", "--step", 3)
    assert code == 2 and "no intact checkpoint" in err  # an explicit step is never replaced


def test_export_output_inside_the_model_directory_is_refused(tmp_path):
    model = tmp_path / "model"
    for out in (model, model / "sub", tmp_path):
        with pytest.raises(export.ExportError, match="initial model|workdir"):
            export.check_output(out, tmp_path / "work", model)


# ----- workdir, model path, unwritable folders -----


@fault("workdir = model.path", CLEAR)
def test_workdir_inside_the_model_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="inside model.path"):
        resolve(small_config(tmp_path / "m" / "run", **{"model.path": str(tmp_path / "m")}))


@fault("re-run in a workdir of another seed", CLEAR)
def test_rerun_with_another_seed_keeps_config_json(full, tmp_path):
    workdir, config = copy_run(full, tmp_path)
    export.save_run_config(config, workdir)
    before = (workdir / "config.json").read_text()
    with pytest.raises(ConfigError, match="another run .*seed: 0 -> 5"):
        check_resume(small_config(workdir, seed=5), workdir)
    assert (workdir / "config.json").read_text() == before


@fault("unwritable checkpoints folder", CLEAR)
def test_unwritable_checkpoints_folder_fails_at_once(tmp_path):
    (tmp_path / "checkpoints").write_text("a file where the folder should be")
    with pytest.raises(CheckpointDirError, match="not writable"):
        Checkpointer(tmp_path)


# ----- config: every bad key, all at once, before anything loads -----

BAD_KEYS = [
    ({"checkpoint.every": 0}, "checkpoint.every must be >= 1"),
    ({"checkpoint.keep": 0}, "checkpoint.keep must be >= 1"),
    ({"rollout.top_p": 2.0}, "rollout.top_p must be in (0, 1]"),
    ({"rollout.rho": 1.5}, "rho must be in [0, 1]"),
    ({"optim.b1": 1.0}, "optim.b1 must be in [0, 1)"),
    ({"optim.weight_decay": -1.0}, "optim.weight_decay must be >= 0"),
    ({"mesh.data": 0}, "mesh.data must be >= 1 or -1"),
    ({"mesh.data": -1, "mesh.fsdp": -1}, "at most one mesh axis may be -1"),
    ({"model.dtype": "float8"}, "model.dtype='float8'"),
    ({"train.on_nonfinite": "ignore"}, "train.on_nonfinite='ignore'"),
    ({"data.on_error": "drop"}, "data.on_error='drop'"),
    ({"workdir": "s3://bucket/run"}, "workdir='s3://bucket/run': s3:// is not supported"),
    ({"model.path": "http://host/model"}, "http:// is not supported"),
    ({"data.train_files": "gs://bucket/d.jsonl"}, "data files on object storage are not read"),
    ({"fci.delta": 0}, "delta must be >= 1"),
]


@pytest.mark.parametrize("overrides, message", BAD_KEYS)
@fault("a bad config key", CLEAR)
def test_bad_key_is_named(overrides, message):
    with pytest.raises(ConfigError) as e:
        resolve(small_config("/nonexistent", **overrides))
    assert message in str(e.value)


def test_all_problems_are_listed_at_once():
    overrides = {k: v for o, _ in BAD_KEYS[:6] for k, v in o.items()}
    overrides["loss.dual_clip"] = 0.5
    with pytest.raises(ConfigError) as e:
        resolve(small_config("/nonexistent", **overrides))
    for _, message in BAD_KEYS[:6]:
        assert message in str(e.value)
    assert "dual_clip" in str(e.value)


@fault("a mesh that does not fit the devices", CLEAR)
def test_mesh_against_devices_names_resolved_sizes():
    run_cfg = resolve(small_config("/x", **{"mesh.data": -1, "mesh.fsdp": 3}))
    with pytest.raises(ConfigError, match=r"data=-1 x fsdp=3 .*resolved: data=2 x fsdp=3"):
        mesh_sizes(run_cfg, 8)
    assert mesh_sizes(run_cfg, 6) == {"data": 2, "fsdp": 3, "tensor": 1}


@fault("a model or data file that does not exist", CLEAR)
def test_missing_model_and_files_listed_together(tmp_path):
    c = small_config(
        tmp_path / "w", **{"model.path": str(tmp_path / "nomodel"), "data.train_files": "a.jsonl"}
    )
    with pytest.raises(ConfigError) as e:
        check_files(resolve(c))
    assert "no such directory" in str(e.value) and "a.jsonl" in str(e.value)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--config.checkpoint.keep=0", "--config.rollout.top_p=2"], ["checkpoint.keep", "top_p"]),
        (["--config.workdir={file}/run"], ["not writable"]),
        (["--config.data.train_files={bad}"], ["line 2: 'problem' is empty", "line 3: invalid"]),
    ],
    ids=["bad keys", "unwritable workdir", "bad data rows"],
)
@fault("bad config, workdir or data on the command line (exit 2, one line each)", CLEAR)
def test_train_cli_errors_exit_2_without_traceback(tmp_path, args, expected):
    (tmp_path / "file").write_text("")
    (tmp_path / "bad.jsonl").write_text('{"problem": "1+1", "answer": "2"}\n{"problem": ""}\nx\n')
    fill = {"file": tmp_path / "file", "bad": tmp_path / "bad.jsonl"}
    done = subprocess.run(
        [sys.executable, "-m", "attnrl_jax.train", "--config=configs/demo.py",
         f"--config.workdir={tmp_path / 'w'}", *(a.format(**fill) for a in args)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    for text in expected:
        assert text in done.stderr
    assert not (tmp_path / "w" / "config.json").exists()


def test_data_summary_is_printed(tmp_path, capsys):
    from attnrl_jax.data.tokenizer import build_tiny_tokenizer
    from attnrl_jax.train import load_prompts

    (tmp_path / "t.jsonl").write_text('{"problem": "1+1", "answer": "2"}\n{"problem": ""}\n')
    c = small_config(tmp_path, **{"data.train_files": str(tmp_path / "t.jsonl")})
    c.data.update(on_error="skip", drop_eval_overlap=False)
    prompts = load_prompts(resolve(c), build_tiny_tokenizer(512))
    assert len(prompts) == 1
    err = capsys.readouterr().err
    assert "data: " in err and "1 kept" in err


# ----- score input -----


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"prompt_ids": [1, 2], "response_ids": [3] * 20}], "line 1: prompt + response is 22"),
        ([{"prompt_ids": [], "response_ids": [3]}], "line 1: the prompt is empty"),
        ([{"prompt_ids": [1], "response_ids": [99]}], "outside the model's vocabulary"),
        ([], "has no input lines"),
    ],
)
@fault("score input too long, empty or outside the vocabulary", CLEAR)
def test_score_checks_input_like_generate(tmp_path, rows, message):
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(score.ScoreInputError, match=re.escape(message)):
        score.read_input(path, None, vocab_size=50, max_len=16)


def test_readme_reliability_table_matches_its_results():
    from benchmarks import fault_report

    assert fault_report.main(["--check"]) == 0
