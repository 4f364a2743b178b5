"""metrics.jsonl: process 0 writes it; every process learns whether each write worked.

Only process 0 writes, so a write that fails there (a full disk, a lost mount, object storage
refusing an upload) would stop process 0 alone while the others went on into the next step's
collectives and hung until a timeout. Each operation is therefore followed by one agreement
(distributed.all_agree: one all-gather over the processes, nothing in a one-process job), and
every process raises the same MetricsWriteError, naming the file and process 0's cause, at the
same point of the loop.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable

from attnrl_jax import storage
from attnrl_jax.distributed import all_agree


class MetricsWriteError(RuntimeError):
    """metrics.jsonl could not be opened, written or uploaded on process 0."""


class MetricsLog:
    """Appends one JSON line per step to `path` on the primary process (storage.JsonlLog).

    Every process constructs it and calls write / flush at the same points (each is a
    collective when there are several processes). A context manager: a normal exit closes the
    file with one more agreement; an exit by an exception closes it without one, since the
    other processes may not be leaving at the same point.
    """

    def __init__(self, path: storage.AnyPath, primary: bool):
        self.path = path
        self._log: storage.JsonlLog | None = None

        def open_log() -> None:
            self._log = storage.JsonlLog(path)

        self._agreed(open_log if primary else None, "open")

    def write(self, metrics: dict) -> None:
        """Appends `metrics` (a step's, with its "step") as one line."""
        line = json.dumps(metrics) + "\n" if self._log is not None else ""
        write = None if self._log is None else lambda: self._log.write(line)
        self._agreed(write, f"write the metrics of step {metrics['step']} to")

    def flush(self) -> None:
        """On object storage: uploads the lines written so far (locally each line is flushed)."""
        self._agreed(None if self._log is None else self._log.flush, "upload")

    def close(self) -> None:
        log, self._log = self._log, None
        self._agreed(None if log is None else log.close, "close")

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.close()
        elif self._log is not None:  # already failing: no agreement, and the first error wins
            log, self._log = self._log, None
            with contextlib.suppress(Exception):
                log.close()

    def _agreed(self, action: Callable[[], None] | None, what: str) -> None:
        """Runs `action` (None on the processes that do not write), then raises on every
        process if it failed on any."""
        problem = None
        if action is not None:
            try:
                action()
            except Exception as e:  # OSError locally; object storage clients raise their own
                problem = e
        if all_agree(problem is None):
            return
        cause = f"{type(problem).__name__}: {problem}" if problem else "failed on process 0"
        raise MetricsWriteError(f"cannot {what} {self.path} ({cause})") from problem
