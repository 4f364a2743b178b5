"""The launch scripts' --dry-run output: exactly the commands they would run, one per line,
shell-quoted (each line can be pasted into a shell). Nothing is started."""

import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REPO = "https://example.com/attnrl-jax.git"
TRAIN = ["--config=configs/demo.py", "--config.workdir=/runs/a b"]  # a space survives quoting


def dry_run(script: str, *args: str, env: dict | None = None) -> list[list[str]]:
    done = subprocess.run(
        ["bash", f"launch/{script}", *args], cwd=ROOT, capture_output=True, text=True,
        timeout=30, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [shlex.split(line) for line in done.stdout.splitlines()]


def distributed(i: int, n: int, port: int) -> list[str]:
    return [
        f"--config.distributed.coordinator_address=127.0.0.1:{port}",
        f"--config.distributed.num_processes={n}",
        f"--config.distributed.process_id={i}",
    ]


def test_local_multiprocess():
    lines = dry_run(
        "local_multiprocess.sh", "--dry-run", "--num-processes", "3", "--devices-per-process",
        "4", "--port", "5000", "--timeout", "60", "--", *TRAIN,
    )  # fmt: skip
    assert lines == [
        ["env", "XLA_FLAGS=--xla_force_host_platform_device_count=4", "JAX_PLATFORMS=cpu",
         "timeout", "60", "python", "-m", "attnrl_jax.train", *TRAIN, *distributed(i, 3, 5000)]
        for i in range(3)
    ]  # fmt: skip


def test_gpu_node_one_process_drives_all_gpus():
    lines = dry_run("gpu_node.sh", "--dry-run", "--", *TRAIN)
    assert lines == [["python", "-m", "attnrl_jax.train", *TRAIN, "--config.distributed.mode=off"]]


def test_gpu_node_one_process_per_gpu():
    lines = dry_run("gpu_node.sh", "--dry-run", "--per-gpu", "--gpus", "2", "--", *TRAIN)
    assert lines == [
        ["env", f"CUDA_VISIBLE_DEVICES={i}", "python", "-m", "attnrl_jax.train", *TRAIN,
         *distributed(i, 2, 12355)]
        for i in range(2)
    ]  # fmt: skip


def test_slurm():
    lines = dry_run("slurm.sbatch", "--dry-run", *TRAIN)
    assert lines == [
        ["srun", "--kill-on-bad-exit=1", "python", "-m", "attnrl_jax.train", *TRAIN,
         "--config.distributed.mode=auto"]
    ]  # fmt: skip


def test_tpu_pod_sets_up_every_worker_then_trains():
    lines = dry_run(
        "tpu_pod.sh", "--dry-run", "--name", "pod", "--zone", "us-central2-b", "--project", "p",
        "--repo", REPO, "--ref", "v1", "--", *TRAIN,
    )  # fmt: skip
    ssh = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod", "--zone", "us-central2-b",
           "--worker=all", "--project", "p", "--command"]  # fmt: skip
    assert [line[:-1] for line in lines] == [ssh, ssh]
    setup, train = (shlex.split(line[-1].replace("~", "HOME")) for line in lines)
    clone = setup.index("clone")
    assert setup[clone - 1 : clone + 5] == ["git", "clone", "-q", "-b", "v1", REPO]
    install = len(setup) - 1 - setup[::-1].index("install")  # the package, after pip itself
    assert setup[install + 1 : install + 4] == ["-q", "-e", ".[tpu]"]  # setup.py's tpu extra
    assert train == ["cd", "HOME/attnrl-jax", "&&", ".venv/bin/python", "-m", "attnrl_jax.train",
                     *TRAIN, "--config.distributed.mode=tpu"]  # fmt: skip


@pytest.mark.parametrize(
    "script, args, message",
    [
        ("tpu_pod.sh", ["--dry-run", "--zone", "z"], "--name and --zone are required"),
        ("tpu_pod.sh", ["--dry-run", "--name", "n", "--zone", "z"], "--repo URL is required"),
        ("local_multiprocess.sh", ["--dry-run", "--num-processes", "0"], "positive integer"),
        ("gpu_node.sh", ["--dry-run", "--bogus"], "unknown option --bogus"),
    ],
)
def test_bad_arguments(script, args, message):
    done = subprocess.run(
        ["bash", f"launch/{script}", *args], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2 and message in done.stderr
