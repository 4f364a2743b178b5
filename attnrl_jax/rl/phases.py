"""Per-step phase times and the timeline of phase spans (the trainer's metrics time_<phase> and
`timeline`)."""

from __future__ import annotations

import contextlib
import threading
import time

PHASES = ("sampling", "scoring", "grading", "reference", "proximal", "update")


class PhaseTimes(dict):
    """Seconds per phase: `with times("sampling"): ...` adds the block's wall time; with a span
    name, `with times("sampling", "sample_initial")` also records the block in the timeline.

    The trainer's phases (PHASES, metrics "time_<phase>"): sampling (sampler calls), scoring
    (the scoring pass: log-probs, entropies, FCI), grading (reward function), reference (the
    frozen policy's forward for the KL term; 0 with kl_weight 0), proximal (the importance
    correction's forward; 0 with tis_cap 0) and update (the policy's forward, backward and
    optimizer steps, without the reference and proximal forwards). Times add up across threads:
    in the split schedule the background sampling counts too (see `timeline` for overlap).

    timeline: {span: [start_s, end_s]} in seconds since `origin` (perf_counter); a span met
    twice covers the first start to the last end.
    """

    def __init__(self, origin: float):
        super().__init__(dict.fromkeys(PHASES, 0.0))
        self.origin, self.timeline, self._lock = origin, {}, threading.Lock()

    @contextlib.contextmanager
    def __call__(self, name: str, *spans: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            end = time.perf_counter()
            with self._lock:
                self[name] = self.get(name, 0.0) + end - start
                for span in spans:
                    a, b = start - self.origin, end - self.origin
                    if span in self.timeline:
                        a, b = min(a, self.timeline[span][0]), max(b, self.timeline[span][1])
                    self.timeline[span] = [round(a, 6), round(b, 6)]
