"""`python -m attnrl_jax.plan`: a small model on cpu:8 compiles every phase and reports rows
that add up; bad input is refused in one line before anything compiles."""

import json
import os
import subprocess
import sys

import pytest

from attnrl_jax.models.config import ModelConfig
from attnrl_jax.plan import ALL_PHASES, PlanError, main, mesh_sizes, parse_phases, parse_topology

TINY = ModelConfig(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
)
# the demo config with its mesh over all 8 devices and small batches (fast to compile)
SMALL = [
    "--config=configs/demo.py",
    "--config.mesh.data=-1",
    "--config.rollout.sampler_rows=8",
    "--config.train.microbatch_rows=8",
    "--config.data.max_prompt_len=192",  # + 64 response tokens: path rows of up to 256
    "--config.train.tokens_per_row=384",
]
KEYS = {"phase", "topology", "mesh", "args_gib", "temp_gib", "resident_gib", "total_gib"}
KEYS |= {"hbm_gib", "fits", "outputs_gib"}


@pytest.fixture(autouse=True)
def _keep_environment(monkeypatch):
    """main() sets the backend's environment variables; undo that after each test."""
    for key in ("XLA_FLAGS", "JAX_PLATFORMS", "TPU_SKIP_MDS_QUERY", "TPU_ACCELERATOR_TYPE"):
        if key in os.environ:
            monkeypatch.setenv(key, os.environ[key])
        else:
            monkeypatch.delenv(key, raising=False)
    monkeypatch.delenv("TPU_WORKER_HOSTNAMES", raising=False)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    (path / "config.json").write_text(json.dumps(TINY.to_hf()))  # config.json alone
    return path


def _plan(args, tmp_path):
    out = tmp_path / "plan.json"
    cmd = [sys.executable, "-m", "attnrl_jax.plan", *args, f"--json={out}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    return done, (json.loads(out.read_text()) if out.exists() else None)


def test_small_model_on_cpu8_compiles_every_phase(model_dir, tmp_path):
    args = [*SMALL, f"--config.model.path={model_dir}", "--topology=cpu:8"]
    done, rows = _plan(args, tmp_path)
    assert done.returncode == 0, done.stderr
    phases = [r["phase"] for r in rows]
    assert phases == [
        "sample", "sample_continuation", "score", "reference", "grad", "apply"
    ]  # fmt: skip
    for r in rows:
        assert set(r) == KEYS and r["topology"] == "cpu:8" and r["mesh"] == "8x1x1"
        parts = r["args_gib"] + r["outputs_gib"] + r["temp_gib"] + r["resident_gib"]
        assert r["total_gib"] == pytest.approx(parts, rel=1e-9) and r["fits"]
    assert "grad" in done.stdout
    # a 1 KiB device cannot hold any phase: exit 1 naming them
    done, rows = _plan([*args, "--hbm_gib=0.000001"], tmp_path)
    assert done.returncode == 1 and not any(r["fits"] for r in rows)
    assert "does not fit cpu:8: sample, sample_continuation, score" in done.stderr


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--topology=v9z:2x4"], "unknown TPU generation 'v9z'"),
        (["--topology=cpu:8", "--config.mesh.data=3"], "does not divide"),
        (["--topology=cpu:8", "--config.train.tokens_per_row=100"], "smaller than the longest"),
        (["--topology=cpu:8", "--config.train.microbatch_rows=4"], "not a multiple of mesh"),
        (["--topology=cpu:8", "--config.nope=1"], "nope"),
        (["--topology=cpu:8", "--phases=grad,accumulate"], "unknown ['accumulate']"),
    ],
)
def test_bad_input_is_refused_before_compiling(model_dir, capsys, extra, message):
    code = main(["plan", *SMALL, f"--config.model.path={model_dir}", *extra])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_missing_config_json_is_refused(tmp_path, capsys):
    assert main(["plan", *SMALL, f"--config.model.path={tmp_path}", "--topology=cpu:8"]) == 2
    assert "has no config.json" in capsys.readouterr().err


def test_topology_and_mesh_parsing():
    assert parse_topology("v5e:2x4").num_devices == 8
    assert parse_topology("v6e:2x4").hbm_gib == 32.0
    assert parse_topology("v5p:2x2x2").num_devices == 8
    assert parse_topology("cpu:8", hbm_gib=40).hbm_gib == 40
    assert mesh_sizes({"data": 1, "fsdp": -1, "tensor": 2}, 8) == (1, 4, 2)
    with pytest.raises(PlanError, match="expected GENERATION"):
        parse_topology("v5e-8")
    with pytest.raises(PlanError, match="gpu takes one device count"):
        parse_topology("gpu:2x2", hbm_gib=80)
    with pytest.raises(PlanError, match="h200 takes one device count"):
        parse_topology("h200:2x2")


@pytest.mark.parametrize(
    "name, devices, hbm_gib",
    [("h100:8", 8, 80.0), ("H200:1", 1, 141.0), ("a100-40:4", 4, 40.0), ("a100-80:2", 2, 80.0),
     ("l4:1", 1, 24.0)],
)  # fmt: skip
def test_gpu_kinds_have_their_memory(name, devices, hbm_gib):
    topology = parse_topology(name)
    assert (topology.platform, topology.num_devices, topology.hbm_gib) == ("gpu", devices, hbm_gib)
    assert parse_topology(name, hbm_gib=70).hbm_gib == 70  # --hbm_gib wins


def test_gpu_without_a_kind_needs_its_memory():
    with pytest.raises(PlanError) as caught:
        parse_topology("gpu:2")
    assert str(caught.value) == (
        "topology 'gpu:2': name the GPU kind for its memory "
        "(h100:2, h200:2, a100-40:2, a100-80:2, l4:2) or give --hbm_gib"
    )
    topology = parse_topology("gpu:2", hbm_gib=46)  # a kind not listed, e.g. an L40S
    assert (topology.platform, topology.num_devices, topology.hbm_gib) == ("gpu", 2, 46)
    with pytest.raises(PlanError, match="unknown TPU generation 'h300'.*h100, h200, a100-40"):
        parse_topology("h300:1")
    with pytest.raises(PlanError, match="uses 4 of"):
        mesh_sizes({"data": 1, "fsdp": 4, "tensor": 1}, 8)


def test_phases_are_parsed_in_plan_order():
    assert parse_phases(None) == parse_phases("") == ALL_PHASES
    assert parse_phases(" apply,grad ") == ("grad", "apply")
    with pytest.raises(PlanError, match="choose from"):
        parse_phases(",")


def test_gpu_topology_without_gpus_is_one_line(model_dir, capsys):
    """A GPU kind compiles for this machine's GPUs (XLA:GPU); the test host has none."""
    assert main(["plan", *SMALL, f"--config.model.path={model_dir}", "--topology=h100:1"]) == 2
    err = capsys.readouterr().err
    assert "h100:1: JAX sees 0 GPUs here" in err and err.count("\n") == 1
    assert main(["plan", *SMALL, f"--config.model.path={model_dir}", "--topology=gpu:1"]) == 2
    err = capsys.readouterr().err
    assert "'gpu:1': name the GPU kind for its memory" in err and err.count("\n") == 1
