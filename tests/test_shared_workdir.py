"""Two jax.distributed processes sharing one workdir: on gs:// (the local GCS emulator,
tests/gcs_emulator.py) a run of 1 step, resumed to 2, writes the metrics of one uninterrupted
process; then agreement on damaged checkpoints: both processes fall back to the same intact step
(a damaged step in the bucket, set aside; a step only one process cannot read, in a local shared
folder as on an NFS node and in the bucket), or both stop with the same verdict naming the same
steps when none is intact; every process exits. A metrics write that fails on process 0 alone
stops both with one line. Every process runs under a timeout, with fresh ports.
"""

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from faults import CLEAR, SURVIVED, fault
from gcs_emulator import emulator
from multihost_worker import config, parity_reward

from attnrl_jax import storage

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "shared_workdir_worker.py"
TIMEOUT_S = 900  # compiles and 1-2 steps in each of 2 processes on a loaded 2-core machine
TIMING = ("time_", "timeline")

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(workdir, steps: int, fault: int | str | None = None) -> list[tuple[int, str, str]]:
    """(exit code, stdout, stderr) of each of the 2 processes training `workdir` to `steps`
    (fault: the worker's FAULT, tests/shared_workdir_worker.py)."""
    env = dict(os.environ, PYTHONPATH=f"{ROOT}:{ROOT / 'tests'}", JAX_PLATFORMS="cpu")
    env.update(HF_HUB_OFFLINE="1", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    address = f"127.0.0.1:{free_port()}"
    extra = [] if fault is None else [str(fault)]
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as files:
        logs = [
            tuple(files.enter_context(open(f"{tmp}/{i}.{k}", "w+")) for k in ("out", "err"))
            for i in range(2)
        ]
        procs = [  # output to files: a full pipe would stall one process and so both
            subprocess.Popen(
                [sys.executable, str(WORKER), str(workdir), address, str(i), str(steps), *extra],
                cwd=ROOT,
                env=env,
                stdout=logs[i][0],
                stderr=logs[i][1],
                text=True,
            )  # fmt: skip
            for i in range(2)
        ]
        try:
            codes = [p.wait(TIMEOUT_S) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        for o, e in logs:
            o.seek(0)
            e.seek(0)
        return [(c, o.read(), e.read()) for c, (o, e) in zip(codes, logs, strict=True)]


def succeeded(results) -> None:
    for code, _, err in results:
        assert code == 0, err[-3000:]


def restored(results) -> list[str]:
    return [[x for x in out.splitlines() if "restored step" in x][0] for _, out, _ in results]


def metrics(workdir) -> list[dict]:
    lines = storage.path(f"{workdir}/metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if not k.startswith(TIMING)} for x in lines]


def flip_state_files(step_dir) -> int:
    """Flips a bit in every array data file of a checkpoint's state item; how many."""
    root = storage.path(step_dir) / "state"
    if storage.is_remote(root):  # epath refuses ** on gs://; gcsfs lists the prefix
        import fsspec

        found = fsspec.filesystem("gs").find(str(root))
        files = [storage.path(f"gs://{p}") for p in found if "/d/" in p]
    else:
        files = [p for p in root.rglob("d/*") if p.is_file()]
    for p in files:
        data = bytearray(p.read_bytes())
        data[len(data) // 2] ^= 0x10
        p.write_bytes(bytes(data))
    return len(files)


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
    with emulator(tmp_path_factory.mktemp("gcs_cache")) as root:
        yield root


@pytest.fixture(scope="module")
def resumed(bucket):
    """gs://.../two: 1 step, then a second launch resumes it to 2 (metrics read then)."""
    workdir = f"{bucket}/two"
    first = launch(workdir, 1)
    succeeded(first)
    second = launch(workdir, 2)
    succeeded(second)
    return workdir, first, second, metrics(workdir)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The same config, uninterrupted, in this process on the workers' mesh (4 of 8 devices)."""
    from attnrl_jax.train import build_trainer

    workdir = tmp_path_factory.mktemp("one")
    trainer = build_trainer(config(workdir), reward_fn=parity_reward)
    try:
        trainer.run(2)
    finally:
        trainer.close()
    return metrics(workdir)


@fault("2 processes, one gs:// workdir: stopped after step 1, resumed", SURVIVED)
def test_two_processes_resume_a_gcs_workdir(resumed, one_process):
    """Same tolerance as tests/test_distributed.py: gloo sums the gradients across the
    processes in another order than one process does (measured there: about 1e-6)."""
    workdir, first, second, got = resumed
    assert restored(first) == ["process 0 restored step 0", "process 1 restored step 0"]
    assert restored(second) == ["process 0 restored step 1", "process 1 restored step 1"]
    assert "resumed from step 1" in second[0][2]
    assert sorted(p.name for p in storage.path(f"{workdir}/checkpoints").iterdir()) == ["1", "2"]
    assert [m["step"] for m in got] == [1, 2]
    for a, b in zip(got, one_process, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(b[key], float):
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
            else:
                assert a[key] == b[key], key


@pytest.fixture(scope="module")
def fell_back(resumed):
    """Step 2 of the bucket's workdir damaged, then both processes resume to step 3."""
    workdir = resumed[0]
    assert flip_state_files(f"{workdir}/checkpoints/2") > 0
    results = launch(workdir, 3)
    return workdir, results, metrics(workdir)


@fault("2 processes: damaged latest checkpoint in the bucket", SURVIVED)
def test_damaged_step_in_the_bucket_both_fall_back_to_the_same_step(fell_back, resumed):
    workdir, results, got = fell_back
    succeeded(results)
    assert restored(results) == ["process 0 restored step 1", "process 1 restored step 1"]
    err = results[0][2]
    assert "checkpoints/2 is damaged" in err and "newest intact checkpoint, step 1" in err
    steps = sorted(p.name for p in storage.path(f"{workdir}/checkpoints").iterdir())
    assert steps == ["1", "2", "2.damaged", "3"]  # set aside (copied, then deleted), not lost
    # step 2 redone from checkpoint 1 by the same two processes: the same metrics, exactly
    assert [m["step"] for m in got] == [1, 2, 3]
    assert got[:2] == resumed[3]


@pytest.fixture(scope="module")
def local_copy(fell_back, tmp_path_factory):
    """The bucket's workdir (checkpoints 1, 2, 3) copied to a local folder."""
    import fsspec

    workdir = tmp_path_factory.mktemp("copy") / "run"
    fsspec.filesystem("gs").get(fell_back[0].removeprefix("gs://"), str(workdir), recursive=True)
    return workdir


def refused_by_both(workdir, results) -> None:
    """Step 3 unreadable on process 1 only: both restored step 2, set 3 aside, trained to 4 and
    exited (a process whose collectives drifted from the other's would hang or abort here)."""
    succeeded(results)
    assert restored(results) == ["process 0 restored step 2", "process 1 restored step 2"]
    assert "another process could not read or verify it" in results[0][2]  # process 0 speaks
    steps = sorted(p.name for p in storage.path(f"{workdir}/checkpoints").iterdir())
    assert steps == ["2", "2.damaged", "3", "3.damaged", "4"]  # keep=3: 1 rotated out
    assert [m["step"] for m in metrics(workdir)] == [1, 2, 3, 4]


@fault("2 processes: a checkpoint only one process cannot read (local shared folder)", SURVIVED)
def test_a_step_one_process_cannot_read_is_refused_by_both(local_copy):
    refused_by_both(local_copy, launch(local_copy, 4, fault=3))


# local_copy first: it copies the bucket's workdir before this test changes it
@fault("2 processes: a checkpoint only one process cannot read (gs:// workdir)", SURVIVED)
def test_a_step_one_process_cannot_read_in_the_bucket(local_copy, fell_back):
    workdir = fell_back[0]
    refused_by_both(workdir, launch(workdir, 4, fault=3))


@fault("2 processes: every checkpoint damaged (both stop, same steps named)", CLEAR)
def test_no_intact_step_stops_both_with_the_same_line(local_copy):
    steps = sorted(p.name for p in (local_copy / "checkpoints").iterdir())
    for step in steps:
        if step.isdigit():
            assert flip_state_files(local_copy / "checkpoints" / step) > 0
    results = launch(local_copy, 5)
    assert [code for code, _, _ in results] == [1, 1]
    lines = [[x for x in err.splitlines() if x.startswith("error: ")] for _, _, err in results]
    assert [len(x) for x in lines] == [1, 1]
    # the same verdict naming the same steps; each reason is the process's own read error
    head = f"error: no intact checkpoint in {local_copy / 'checkpoints'} ("
    named = [sorted(re.findall(r"step (\d+):", x[0])) for x in lines]
    assert all(x[0].startswith(head) for x in lines)
    assert named[0] == named[1] == sorted(s for s in steps if s.isdigit())
    assert sorted(p.name for p in (local_copy / "checkpoints").iterdir()) == steps  # no rename


@fault("2 processes: metrics.jsonl write fails on process 0 only (disk full)", CLEAR)
def test_a_failed_metrics_write_on_process_0_stops_both(tmp_path):
    """Process 0 alone writes metrics.jsonl; its failed write of step 2 stops both processes
    (exit 1, one line naming the file and the cause) where process 1 would otherwise wait in
    step 3's collectives. Step 1's line and checkpoint are kept, so a re-run resumes there."""
    workdir = tmp_path / "run"
    results = launch(workdir, 3, fault="metrics@2")
    assert [code for code, _, _ in results] == [1, 1], results[1][2][-3000:]
    lines = [[x for x in err.splitlines() if x.startswith("error: ")] for _, _, err in results]
    head = f"error: cannot write the metrics of step 2 to {workdir / 'metrics.jsonl'} "
    assert lines == [
        [head + "(OSError: [Errno 28] No space left on device (injected))"],
        [head + "(failed on process 0)"],
    ]
    assert [m["step"] for m in metrics(workdir)] == [1]
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["1"]
