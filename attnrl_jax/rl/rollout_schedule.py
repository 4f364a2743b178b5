"""The trainer's sampler calls and their schedule (a mixin of rl/trainer.Trainer).

Every call samples G responses per new prompt plus T continuations per branch point of a plan,
with the policy of the current step, and scores the new responses (rl/rollout.py). Sampler
seeds are a function of (seed, step, call).

Disjoint device groups (mesh.rollout_devices > 0, devices.split_devices): the engine samples
on the rollout group's own mesh and the trainer trains on the rest. The schedule and every
sampled token stay the same, but the off-policy call is cut in two with the same seed and
request indexes (so the same samples): batch s's continuations first (the critical path), then
batch s + k's initial responses and their scoring on a background thread while the training
group grades, plans and updates; the thread is joined before the new weights go to the rollout
group (one transfer per update, into its layout). With several processes the thread starts
after the continuations are graded: grading all-gathers over every device, and each process
must issue collectives in the same order. A checkpoint is written between steps, after the
join, so it holds every batch in flight.
"""

from __future__ import annotations

from concurrent.futures import Future

import numpy as np

from attnrl_jax.rl import rollout as ro
from attnrl_jax.rl import step_plan as sp


class RolloutSchedule:
    """Sampler calls of a Trainer: reads its engine, rollout config, params, seed and step."""

    def _seed(self, call: int) -> int:
        return int(np.random.default_rng([self.seed, self.step, call]).integers(2**31))

    def _sample_and_score(self, prompts, plan_of, timer, call, first_index=0, warm_up=False):
        """One sampler call: G samples per prompt, plus T continuations per branch point of
        `plan_of` = (Generation, BranchPlan) when given; then the scoring pass over the new
        responses. Returns (Generation of the prompts or None, continuation samples).

        first_index: the first request index of the continuations when the prompts are sampled
        by another call (the split schedule), so each row draws what the merged call draws.
        warm_up: the off-policy warm-up's batches (timeline span "sample_warm_up")."""
        requests = ro.initial_requests(prompts, self.rollout.group_size)
        if plan_of is not None:
            requests += sp.continuation_requests(
                *plan_of, self.rollout.continuations, first_index=len(requests) + first_index,
                budget=self.rollout.continuation_budget,
            )  # fmt: skip
        self._sampler_calls += 1
        # FCI of the new initial responses from the sampler (rollout.fci_source = "sampler").
        fci = self.rollout.sampler_fci(self.seps) if prompts else None
        spans = ("sample_initial",) * bool(prompts) + ("sample_continuations",) * bool(plan_of)
        spans = ("sample_warm_up",) if warm_up else spans
        version, params = self.step, self.rollout_params  # theta_s, even if the update lands
        with timer("sampling", *spans):
            out = ro.sample_all(self.engine, requests, self.rollout, self._seed(call), fci)
        gen = None
        if prompts:
            with timer("scoring", "score"):
                gen = ro.score_generation(
                    params, self.cfg, self.rollout, prompts, out[: len(prompts)], self.seps,
                    version,
                )  # fmt: skip
        return gen, out[len(prompts) :]

    def _sample_next(self, prompts, plan_of, timer) -> tuple[Future | None, list]:
        """Batch s + k's initial responses and batch s's continuations, both with theta_s:
        one call on shared devices; with split devices the continuations now and the initial
        responses on the background thread (same seed and request indexes). Returns (a Future
        of the new Generation or None, the continuation samples)."""
        if self._background is None or not prompts:
            gen, conts = self._sample_and_score(prompts, plan_of, timer, call=2)
            done = Future()
            done.set_result(gen)
            return done, conts
        _, conts = self._sample_and_score([], plan_of, timer, call=2, first_index=len(prompts))
        return None, conts

    def _start_initial(self, prompts, timer) -> Future:
        return self._background.submit(
            lambda: self._sample_and_score(prompts, None, timer, call=2)[0]
        )
