"""Parallel grading with a hard per-item deadline: ``Grader`` and ``grade_batch``.

Why processes: sympy can hang inside one C-level operation that no in-process timer interrupts,
and the trainer calling us has JAX threads (so no ``fork``). Workers are started with "spawn",
announce themselves ready after importing sympy, and receive one item at a time over a pipe; the
deadline of an item starts when it is sent. A worker past its deadline is killed (SIGKILL) and
replaced in the background, and its item is graded incorrect with reason "timeout". A worker that
dies gives reason "error". ``Grader`` keeps its pool across calls; use it as a context manager.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing as mp
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait

from attnrl_jax.rewards.math import REWARDS, GradeResult, grade

_READY = "ready"
_START_FAILURE = (
    "grading workers die before they are ready; with the 'spawn' start method the main module "
    "must guard its entry point with `if __name__ == '__main__':`"
)
GradeFn = Callable[..., GradeResult]  # (response, golds, *, time_budget_s) -> GradeResult


def _worker_main(conn: Connection, time_budget_s: float, grade_fn: GradeFn) -> None:
    """Worker loop: grade (index, response, golds) until a None arrives or the pipe closes.

    One warm-up item first (imports Math-Verify, builds the LaTeX parser: about a second) so that
    no real item's deadline pays for it.
    """
    grade_fn("\\boxed{\\frac{x}{2}}", "0.5x + y", time_budget_s=time_budget_s)
    conn.send(_READY)
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        idx, response, golds = msg
        try:
            r = grade_fn(response, golds, time_budget_s=time_budget_s)
            out = (r.correct, r.extracted, r.reason)
        except BaseException:  # noqa: BLE001 - one bad item must not take the worker down
            out = (False, None, "error")
        conn.send((idx, out))


@dataclass
class BatchResult:
    """Per-item results plus the metrics a trainer logs each step."""

    results: list[GradeResult]
    num_timeouts: int
    num_errors: int
    elapsed_s: float
    reasons: dict[str, int] = field(default_factory=dict)

    @property
    def num_correct(self) -> int:
        return sum(r.correct for r in self.results)

    @property
    def num_stage_timeouts(self) -> int:
        """Items whose symbolic stages ran out of in-process time (graded, but unproven)."""
        return self.reasons.get("stage_timeout", 0)

    @property
    def accuracy(self) -> float:
        return self.num_correct / len(self.results) if self.results else 0.0

    @property
    def items_per_s(self) -> float:
        return len(self.results) / self.elapsed_s if self.elapsed_s > 0 else 0.0


class _Worker:
    def __init__(self, ctx: mp.context.BaseContext, budget_s: float, grade_fn: GradeFn) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, budget_s, grade_fn), daemon=True)
        self.proc.start()
        child.close()
        self.ready = False
        self.item: int | None = None
        self.deadline = 0.0

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join(timeout=5)
        self.conn.close()


class Grader:
    """A pool of grading processes that lives across calls (the trainer grades every step).

    ``reward`` selects :func:`math.grade`'s reward ("hybrid" or "boxed"). ``grade_fn`` (default
    :func:`math.grade` with that reward) must be a picklable module-level function; another
    reward with the same signature can reuse the pool and its deadline handling.
    """

    def __init__(
        self,
        *,
        timeout_s: float = 5.0,
        num_workers: int | None = None,
        reward: str = "hybrid",
        grade_fn: GradeFn | None = None,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        if reward not in REWARDS:
            raise ValueError(f"reward must be one of {REWARDS}, got {reward!r}")
        self.timeout_s = timeout_s
        self.num_workers = max(1, num_workers or os.cpu_count() or 1)
        self._ctx = mp.get_context("spawn")
        # In-process stage limits end before the hard deadline, so most slow items still get a
        # real verdict ("stage_timeout") instead of being killed.
        self._budget = 0.8 * timeout_s
        self._grade_fn = grade_fn or functools.partial(grade, reward=reward)
        self._workers = [self._new_worker() for _ in range(self.num_workers)]
        self._closed = False
        self._failed_starts = 0

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop all workers (politely, then by force)."""
        if self._closed:
            return
        self._closed = True
        for w in self._workers:
            with contextlib.suppress(OSError):
                w.conn.send(None)
        for w in self._workers:
            w.proc.join(timeout=2)
            if w.proc.is_alive():
                w.kill()
            else:
                w.conn.close()

    def _new_worker(self) -> _Worker:
        return _Worker(self._ctx, self._budget, self._grade_fn)

    def _replace(self, w: _Worker) -> None:
        w.kill()
        self._workers[self._workers.index(w)] = self._new_worker()

    def grade(self, responses: Sequence[str], golds: Sequence[str | Sequence[str]]) -> BatchResult:
        """Grade ``responses[i]`` against ``golds[i]``; returns in input order.

        Not thread-safe: one call at a time per ``Grader``. If the call is interrupted (e.g.
        KeyboardInterrupt), busy workers are replaced so no stale result reaches a later call.
        """
        if self._closed:
            raise RuntimeError("Grader is closed")
        if len(responses) != len(golds):
            raise ValueError(f"{len(responses)} responses but {len(golds)} golds")
        try:
            return self._grade(responses, golds)
        except BaseException:
            for w in list(self._workers):
                if w.item is not None:
                    self._replace(w)
            raise

    def _grade(self, responses: Sequence[str], golds: Sequence[str | Sequence[str]]) -> BatchResult:
        start = time.monotonic()
        results: list[GradeResult | None] = [None] * len(responses)
        pending = list(range(len(responses)))[::-1]
        remaining = len(responses)
        while remaining:
            now = time.monotonic()
            for w in list(self._workers):
                if w.item is not None and now > w.deadline:
                    results[w.item] = GradeResult(False, None, "timeout")
                    remaining -= 1
                    self._replace(w)
                elif w.ready and w.item is None and pending:
                    i = pending.pop()
                    g = golds[i] if isinstance(golds[i], str) else list(golds[i])
                    try:
                        w.conn.send((i, responses[i], g))
                    except OSError:  # the worker died while idle: retry the item elsewhere
                        pending.append(i)
                        self._replace(w)
                        continue
                    w.item, w.deadline = i, time.monotonic() + self.timeout_s
            if not remaining:
                break
            busy = [w.deadline for w in self._workers if w.item is not None]
            wait_s = max(0.0, min(busy) - time.monotonic()) if busy else 1.0
            by_conn = {w.conn: w for w in self._workers}
            by_sentinel = {w.proc.sentinel: w for w in self._workers}
            for obj in wait(list(by_conn) + list(by_sentinel), timeout=wait_s):
                w = by_conn.get(obj) or by_sentinel.get(obj)
                if w is None or w not in self._workers:
                    continue
                try:
                    msg = w.conn.recv() if w.conn.poll() else None
                except (EOFError, OSError):
                    msg = None
                if msg == _READY:
                    w.ready = True
                    self._failed_starts = 0
                elif msg is not None:
                    idx, (correct, extracted, reason) = msg
                    results[idx] = GradeResult(correct, extracted, reason)
                    remaining -= 1
                    w.item = None
                elif not w.proc.is_alive():  # died: its item (if any) is an error
                    if not w.ready:
                        self._failed_starts += 1
                        if self._failed_starts > 3 * self.num_workers:
                            raise RuntimeError(_START_FAILURE)
                    if w.item is not None:
                        results[w.item] = GradeResult(False, None, "error")
                        remaining -= 1
                    self._replace(w)
        final = [r for r in results if r is not None]
        reasons = Counter(r.reason for r in final)
        return BatchResult(
            results=final,
            num_timeouts=reasons.get("timeout", 0),
            num_errors=reasons.get("error", 0),
            elapsed_s=time.monotonic() - start,
            reasons=dict(reasons),
        )


def grade_batch(
    responses: Sequence[str],
    golds: Sequence[str | Sequence[str]],
    *,
    timeout_s: float = 5.0,
    num_workers: int | None = None,
    reward: str = "hybrid",
) -> BatchResult:
    """One-off parallel grading (starts and stops a pool; prefer ``Grader`` in a loop)."""
    with Grader(timeout_s=timeout_s, num_workers=num_workers, reward=reward) as grader:
        return grader.grade(responses, golds)
