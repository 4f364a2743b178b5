"""rl/metrics_log.MetricsLog in one process: the lines it writes, and one MetricsWriteError
naming the file, the step and the cause when process 0's open or write fails (the agreement
across processes: tests/test_shared_workdir.py)."""

import errno
import json

import pytest

from attnrl_jax import storage
from attnrl_jax.rl.metrics_log import MetricsLog, MetricsWriteError


def test_primary_writes_one_line_per_step_and_others_write_nothing(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with MetricsLog(path, primary=False) as log:
        log.write({"step": 1})
        log.flush()
    assert not path.exists()
    with MetricsLog(path, primary=True) as log:
        log.write({"step": 1, "reward": 0.5})
        log.flush()
        log.write({"step": 2, "reward": 0.25})
    assert [json.loads(x) for x in path.read_text().splitlines()] == [
        {"step": 1, "reward": 0.5},
        {"step": 2, "reward": 0.25},
    ]


def test_a_failed_write_names_the_file_step_and_cause(tmp_path, monkeypatch):
    def full(self, line):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage.JsonlLog, "write", full)
    path = tmp_path / "metrics.jsonl"
    with pytest.raises(MetricsWriteError) as caught, MetricsLog(path, primary=True) as log:
        log.write({"step": 3})
    assert str(caught.value) == (
        f"cannot write the metrics of step 3 to {path} "
        "(OSError: [Errno 28] No space left on device)"
    )
    assert isinstance(caught.value.__cause__, OSError)
    assert log._log is None  # closed on the way out, without a second error


def test_a_metrics_path_that_cannot_be_opened_is_named(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.mkdir()  # a folder where the file should be
    with pytest.raises(MetricsWriteError, match=f"cannot open {path} \\(IsADirectoryError: "):
        MetricsLog(path, primary=True)
