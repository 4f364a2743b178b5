"""SIGINT / SIGTERM during training: stop at once, but never in the middle of a save.

Pod schedulers send SIGTERM before preemption and people press Ctrl-C; either must leave the
workdir resumable and say where it will resume. While no checkpoint is being written the signal
abandons the step in progress at once (nothing of it was saved: the next run redoes it exactly,
randomness being a function of (seed, step)). During a save it is held until the save is
complete (orbax lists a step only once it is finalised), then acted on; a second signal during
the save abandons it too (its temporary directory is never listed). Either way `Interrupted`
reaches the command line, which prints the restore point and exits 128 + the signal number
(130 for SIGINT, 143 for SIGTERM).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """Training stopped by a signal; exit_code is 128 + its number."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum


class SignalGuard:
    """Installs the handlers for the duration of a `with` block (main thread only; elsewhere
    it does nothing), and `saving()` marks the block during which a signal is held."""

    def __init__(self):
        self._saving = False
        self._held: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> SignalGuard:
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self._saving and self._held is None:
            self._held = signum
            print(
                f"{signal.Signals(signum).name}: finishing the checkpoint being written, then "
                "stopping (send it again to abandon the save)",
                file=sys.stderr,
                flush=True,
            )
            return
        raise Interrupted(signum)

    @contextlib.contextmanager
    def saving(self):
        self._saving = True
        try:
            yield
        finally:
            self._saving = False
        if self._held is not None:
            signum, self._held = self._held, None
            raise Interrupted(signum)
