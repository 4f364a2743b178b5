"""Training metrics as TensorBoard scalars (`log.tensorboard`), local or on object storage."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from attnrl_jax import storage


class TensorBoardLogger:
    """Writes each step's numeric metrics as scalars to <workdir>/tensorboard (tensorboardX:
    TensorBoard's own writers need TensorFlow, which this project does not install). Metrics
    that are None (loss terms on a step without an update) are skipped.

    The writer opens at the first step logged, with purge_step = that step: after a resume,
    TensorBoard drops the points a previous process wrote for this step and later ones (logged
    before it was stopped, not kept by the checkpoint), so no step has two points."""

    def __init__(self, workdir: str | Path, every_s: float = 10.0):
        self.directory = storage.path(workdir) / "tensorboard"
        self.writer = None
        # gs://: events go to a local folder whose files are uploaded whole (object storage has
        # no append) at most every every_s seconds and at close
        self.remote = storage.is_remote(self.directory)
        self.local = Path(tempfile.mkdtemp(prefix="tensorboard-")) if self.remote else None
        self.every_s = every_s if self.remote else 0.0
        self._flushed = 0.0

    def __call__(self, metrics: dict) -> None:
        if self.writer is None:
            from tensorboardX import SummaryWriter

            where = self.local if self.remote else self.directory
            self.writer = SummaryWriter(str(where), purge_step=metrics["step"])
        for k, v in metrics.items():
            if k != "step" and isinstance(v, int | float) and not isinstance(v, bool):
                self.writer.add_scalar(k, v, metrics["step"])
        if time.monotonic() - self._flushed >= self.every_s:
            self.flush()

    def flush(self) -> None:
        if self.writer is None:
            return
        self.writer.flush()
        self._flushed = time.monotonic()
        self._upload()

    def _upload(self) -> None:
        if self.remote:
            for event_file in self.local.iterdir():  # one per writer: this run's
                (self.directory / event_file.name).write_bytes(event_file.read_bytes())

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self._upload()
        if self.local is not None:
            shutil.rmtree(self.local, ignore_errors=True)


def tensorboard_logger(workdir: str | Path) -> TensorBoardLogger | None:
    """A TensorBoardLogger, or None (with a note) when tensorboardX is not installed."""
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        print("TensorBoard: tensorboardX is not installed; metrics go to metrics.jsonl only")
        return None
    return TensorBoardLogger(workdir)
