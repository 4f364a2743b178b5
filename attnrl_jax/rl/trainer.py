"""The training loop: rollout (rollout.py, step_plan.py), update (update.py), metrics, checkpoints.

Step s (0-based; the params are theta_s, policy version s), with k = run.off_policy_steps:
- off-policy (k >= 1; 1 is the paper's one-step off-policy): grade the oldest pending
  Generation (batch s, sampled by theta_{s-k}; by theta_0 in the warm-up, which samples k
  batches), plan its branches, ONE sampler call with theta_s for batch s + k's G samples and
  batch s's continuations, score batch s + k with theta_s, grade the continuations, build
  trees, update to theta_{s+1}; batch s + k joins the pending queue. No trained token is more
  than k updates stale (checked every step).
- on-policy (k = 0): sample and score batch s with theta_s, grade, plan, a second sampler call
  for the continuations, grade, build trees, update.

The sampler calls and their overlap with the update (the split schedule on disjoint device
groups) are rl/rollout_schedule.py; checkpoint save / restore of the trainer state
rl/trainer_state.py; the non-finite guard rl/nonfinite.py.

Importance correction (loss.tis_cap > 0): the update recomputes the batch's log-probs at
theta_s (the proximal policy, update.py) and weights each token by min(pi_prox /
pi_behaviour, tis_cap); metrics rollout/logp_diff_mean, rollout/ratio_max,
rollout/tis_truncated_frac say how far sampler and trainer agree.

Each metrics line has a `timeline`: {phase: [start_s, end_s]} in seconds since the Trainer
was built, for sample_initial, sample_continuations (one merged call: both get its span),
sample_warm_up (the off-policy warm-up's batches, step 1), score, grade (first start to last
end) and update (with the proximal and reference forwards). In the split schedule
sample_initial overlaps update.

Every sampler call goes through the trainer's RolloutEngine (sampling/engine.py; default the
native sampler), which receives the params after every update as policy version k + 1. The
step's plan (branch points -> continuation requests -> trees -> training rows) is
rl/step_plan.py; the trainer owns the loop, the schedule, metrics and checkpoints.

Randomness is a function of (seed, step): the host Generator of step k is
default_rng([seed, k]) and sampler seeds are derived from (seed, k, call), so a resumed run
draws exactly what an uninterrupted one would, and the RNG state in a checkpoint is (seed, step).

Several JAX processes (multi-host, see distributed.py): every process runs this same loop on
the FULL batch (the prompt stream is not split by process; the devices split the work through
the mesh), so every host-side decision is a function of values that are identical everywhere:
(seed, step) randomness, sampler and scoring outputs gathered from the same global arrays,
and rewards. Rewards alone could differ (a grader's deadline can fire on one host and not on
another), so each process grades every process_count-th item and the results are all-gathered:
all hosts then plan the same branches, ADS counts and batch sizes. Process 0 alone writes
metrics.jsonl, TensorBoard events and the progress bar; checkpoints are written collectively
(orbax: every process calls save, each writes its shards, process 0 the metadata).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import jax
import numpy as np
from jax.sharding import Mesh

from attnrl_jax import storage
from attnrl_jax.data.pipeline import Prompt, PromptStream
from attnrl_jax.models.lm import Params
from attnrl_jax.models.sharding import optimizer_state_shardings, param_shardings
from attnrl_jax.rl import ads
from attnrl_jax.rl import rollout as ro
from attnrl_jax.rl import step_plan as sp
from attnrl_jax.rl.checkpoint import Checkpointer, check_writable, say
from attnrl_jax.rl.devices import build_rollout_mesh
from attnrl_jax.rl.interrupt import SignalGuard
from attnrl_jax.rl.metrics_log import MetricsLog
from attnrl_jax.rl.nonfinite import NonFiniteGuard, NonFiniteStep
from attnrl_jax.rl.phases import PhaseTimes
from attnrl_jax.rl.rollout_schedule import RolloutSchedule
from attnrl_jax.rl.settings import RunConfig
from attnrl_jax.rl.trainer_state import TrainerState
from attnrl_jax.rl.update import make_optimizer, reference_copy, run_updates
from attnrl_jax.sampling import Buckets, SamplerConfig
from attnrl_jax.sampling.engine import NativeEngine, RolloutEngine, place_on
from attnrl_jax.sampling.eos import eos_ids as model_eos_ids
from attnrl_jax.scoring.steps import SeparatorIds

__all__ = ["NonFiniteStep", "Trainer"]


class Trainer(RolloutSchedule, TrainerState, NonFiniteGuard):
    """Owns the training state; `run()` trains to run.total_steps and checkpoints, resuming if
    it can.

    Built by `train.build_trainer` from a RunConfig; parts passed in so tests can swap them.
    engine: the rollout engine (default: the native sampler on `mesh`); the trainer hands it the
    new params after every update and closes it. eos_ids: default sampling/eos.eos_ids of the
    tokenizer and model_cfg. eval_fn(engine) -> {"eval/<bench>/<metric>": value} runs after
    every run.eval.every-th step and the last one (eval/training.py builds it).
    """

    def __init__(
        self,
        run: RunConfig,
        *,
        model_cfg,
        params: Params,
        mesh: Mesh,
        tokenizer,
        prompts: list[Prompt],
        reward_fn: ro.RewardFn,
        engine: RolloutEngine | None = None,
        eos_ids: Sequence[int] | None = None,
        log_fn: Callable[[dict], None] | None = None,
        on_close: Callable[[], None] | None = None,
        eval_fn: Callable[[RolloutEngine], dict[str, float]] | None = None,
    ):
        self.run_config, self.cfg, self.mesh = run, model_cfg, mesh
        self.tokenizer, self.reward_fn, self.seed = tokenizer, reward_fn, run.seed
        self.workdir = storage.path(run.workdir)  # local or gs:// (attnrl_jax/storage.py)
        check_writable(self.workdir)
        self.log_fn = log_fn
        self.on_close = on_close  # e.g. stops a grading worker pool
        self.eval_fn = eval_fn
        if eos_ids is None:
            eos_ids = model_eos_ids(tokenizer, config_eos=model_cfg.eos_token_id)
        self.rollout = dataclasses.replace(run.rollout, eos_ids=tuple(sorted(set(eos_ids))))
        self.seps = SeparatorIds.from_tokenizer(tokenizer)
        self._origin = time.perf_counter()  # the timeline's zero
        shardings = param_shardings(model_cfg, mesh)
        self.params = jax.device_put(params, shardings)
        # Split devices: the rollout group's mesh and its copy of the params (decode layout).
        self.rollout_mesh = build_rollout_mesh(run)
        self.rollout_params = self.params
        self._background = ThreadPoolExecutor(1, "rollout") if self.rollout_mesh else None
        if engine is None:
            # One row bucket: every device batch has exactly sampler_rows rows (and context
            # slots). A step's row count changes with the ADS plan; with power-of-two row
            # buckets each new (rows, contexts) pair compiled a sampler program mid-run.
            # Padding costs at most one partly empty device batch per call (padding rows have
            # budget 0 and stop at once).
            sample_mesh = self.rollout_mesh or mesh
            single = sample_mesh.devices.size == 1
            sampler = SamplerConfig(
                buckets=Buckets(rows=(run.rollout.sampler_rows,)),
                admit_rows=run.rollout.admit_rows or None,
                mesh=None if single else sample_mesh,
            )
            engine = NativeEngine(model_cfg, None, sampler, run.engine.decode_layout)
        self.engine = engine
        # The frozen initial policy for the KL term (a copy, in bfloat16 under mixed precision).
        self.ref_params = None
        if run.loss.kl_weight > 0:
            self.ref_params = reference_copy(self.params, model_cfg)
        opt_state = jax.jit(make_optimizer(run.optim).init)(self.params)
        self.opt_state = jax.device_put(
            opt_state, optimizer_state_shardings(opt_state, self.params, shardings, mesh)
        )
        self.stream = PromptStream(prompts, seed=self.seed)
        self.step = 0
        self.filter_state = ads.AttentionFilterState()
        self.prompt_batch_size = run.train.initial_prompt_batch_size
        # sampled, not yet trained on: batches step .. step + k - 1, oldest first
        self.pending: list[ro.Generation] = []
        self.nonfinite_skips = 0  # steps not applied (train.on_nonfinite="skip")
        self.checkpointer = Checkpointer(self.workdir, run.checkpoint.keep)
        restored = self.checkpointer.restore_latest(self._state())
        if restored is not None:
            self._load(*restored)  # hands the engine the restored params
            say(f"resumed from step {self.step} ({self.checkpointer.directory / str(self.step)})")
        else:
            self._push_weights(self.step)

    def _push_weights(self, version: int) -> None:
        """The current params to the engine as policy `version`; with split devices first into
        the rollout group's layout (one transfer), which scoring then also uses."""
        self.rollout_params = self.params
        if self.rollout_mesh is not None:
            if self.rollout_mesh.devices.size == 1:
                target = jax.tree.map(lambda _: self.rollout_mesh.devices.flat[0], self.params)
            else:
                target = param_shardings(self.cfg, self.rollout_mesh)
            self.rollout_params = place_on(self.params, target)
        self.engine.update_weights(self.rollout_params, version)

    # ----- one step -----

    def _grade(self, token_lists, golds) -> np.ndarray:
        """float[N] rewards; with several processes each grades items p, p + P, ... and all
        receive every result (so all make the same decisions; see the module docstring)."""
        if not token_lists:
            return np.zeros(0)
        count, index = jax.process_count(), jax.process_index()
        mine = range(index, len(token_lists), count)
        texts = self.tokenizer.batch_decode(
            [np.asarray(token_lists[i]).tolist() for i in mine], skip_special_tokens=True
        )
        local = np.asarray(self.reward_fn(texts, [golds[i] for i in mine]), dtype=np.float64)
        if count == 1:
            return local
        from jax.experimental import multihost_utils

        padded = np.zeros(-(-len(token_lists) // count), np.float32)
        padded[: len(local)] = local
        gathered = np.asarray(multihost_utils.process_allgather(padded))  # [P, ceil(N / P)]
        return gathered.T.reshape(-1)[: len(token_lists)].astype(np.float64)

    def train_step(self) -> dict:
        start = time.perf_counter()
        timer = PhaseTimes(self._origin)
        rng = np.random.default_rng([self.seed, self.step])
        self._sampler_calls = 0
        warm_up_tokens = 0
        lag = self.run_config.off_policy_steps
        if lag and not self.pending:  # warm-up: batches 0 .. k-1 with theta_0, no update
            for j in range(lag):
                prompts = self.stream.take(self.prompt_batch_size)
                call = 0 if j == 0 else 10 + j
                gen, _ = self._sample_and_score(prompts, None, timer, call, warm_up=True)
                self.pending.append(gen)
            self._sampler_calls = 0  # the warm-up is not part of the step's pipeline
            warm_up_tokens = sum(len(r) for g in self.pending for r in g.responses)
        if lag:
            gen = self.pending.pop(0)
        else:
            prompts = self.stream.take(self.prompt_batch_size)
            gen, _ = self._sample_and_score(prompts, None, timer, call=1)
        with timer("grading", "grade"):
            rewards = self._grade(gen.responses, ro.golds_of(gen))
        plan = sp.plan_branches(gen, rewards, self.filter_state, rng, self.rollout)
        next_prompts = self.stream.take(self.prompt_batch_size) if lag else []
        next_gen, conts = self._sample_next(next_prompts, (gen, plan), timer)
        single = jax.process_count() == 1
        if next_gen is None and single:  # see the module docstring for several processes
            next_gen = self._start_initial(next_prompts, timer)
        conts = sp.attach(plan, conts)
        with timer("grading", "grade"):
            flat = [s.token_ids for s in sp.flat_samples(conts)]
            graded = self._grade(flat, sp.continuation_golds(gen, conts))
            cont_rewards = sp.nest_rewards(conts, graded)
        if next_gen is None:
            next_gen = self._start_initial(next_prompts, timer)
        problems, stats = sp.build_problems(
            gen, rewards, plan, conts, cont_rewards, self.step, self.rollout
        )
        versions = [p.segment_version.flat for p in problems]  # Ragged: one array each
        staleness = max((self.step - int(v.min()) for v in versions if v.size), default=0)
        if staleness > lag:
            raise RuntimeError(
                f"step {self.step + 1} trains on tokens {staleness} updates stale; "
                f"off_policy_steps={lag} allows {lag}"
            )
        backup = self._backup_for_skip()
        with timer("update", "update"):
            r = self.run_config
            self.params, self.opt_state, update_metrics = run_updates(
                self.params, self.opt_state, self.ref_params, problems,
                cfg=self.cfg, loss=r.loss, optim=r.optim, packing=r.train.packing,
                minibatch_problems=r.train.minibatch_problems,
                microbatch_rows=r.train.microbatch_rows,
                tokens_per_row=r.train.tokens_per_row,
                temperature=self.rollout.temperature,
                mesh=None if self.mesh.devices.size == 1 else self.mesh, timer=timer,
            )  # fmt: skip
            jax.block_until_ready(self.params)  # the span ends when the update has run
        next_gen = next_gen.result()  # the rollout group is done with theta_s
        update_metrics = self._guard_nonfinite(update_metrics, backup)
        self._push_weights(self.step + 1)
        # "update": the policy's own share
        timer["update"] -= timer.get("reference", 0.0) + timer.get("proximal", 0.0)
        metrics = {
            "step": self.step + 1,
            "reward": stats.mean_leaf_reward,
            "accuracy": float(np.mean(rewards > 0)),
            "valid_ratio": stats.kept / max(stats.problems, 1),
            "filtered_ratio": plan.num_filtered / max(stats.problems, 1),
            "prompt_batch_size": len(gen.prompts),
            "sequences": stats.sequences,
            "expanded": sum(1 for p in plan.branch_points if p),
            # every token sampled during this step, the off-policy warm-up batches included
            "tokens_generated": int(
                sum(len(s.token_ids) for s in sp.flat_samples(conts))
                + (sum(len(r) for r in next_gen.responses) if next_gen else 0)
                + (warm_up_tokens if lag else sum(len(r) for r in gen.responses))
            ),
            "mc_valid_ratio": sp.mc_valid_ratio(rewards, cont_rewards),
            "max_staleness": staleness,
            "sampler_calls": self._sampler_calls,
            "policy_version": self.step,
            **{f"time_{k}": v for k, v in timer.items()},
            **update_metrics,
            "timeline": dict(timer.timeline),
        }
        self.filter_state = plan.filter_state
        if self.run_config.method.adaptive_batch_size:
            self.prompt_batch_size = ads.next_prompt_batch_size(
                len(gen.prompts), stats.sequences, self.rollout.ads
            )
        if next_gen is not None:
            self.pending.append(next_gen)
        self.step += 1
        metrics["time_step"] = time.perf_counter() - start
        return metrics

    # ----- loop -----

    def run(self, total_steps: int | None = None, progress: bool | None = None) -> list[dict]:
        """Trains from the current step to total_steps (default: the run config's); returns this
        call's metrics. progress: a progress bar (default: run.log.progress)."""
        from tqdm.auto import tqdm

        total_steps = self.run_config.total_steps if total_steps is None else total_steps
        progress = self.run_config.log.progress if progress is None else progress
        out = []
        primary = jax.process_index() == 0  # the one process that writes logs
        bar = tqdm(
            total=total_steps, initial=self.step, disable=not (progress and primary), desc="train"
        )
        guard = SignalGuard()
        # written by process 0; every process agrees on each write (metrics_log.py)
        with guard, MetricsLog(self.workdir / "metrics.jsonl", primary) as f:
            while self.step < total_steps:
                metrics = self.train_step()
                if self._eval_due(total_steps):
                    start = time.perf_counter()
                    metrics.update(self.eval_fn(self.engine))
                    metrics["time_eval"] = time.perf_counter() - start
                f.write(metrics)
                if self.log_fn is not None and primary:
                    self.log_fn(metrics)
                bar.update(1)
                bar.set_postfix(reward=f"{metrics['reward']:.3f}", valid=metrics["valid_ratio"])
                every = self.run_config.checkpoint.every
                if self.step % every == 0 or self.step == total_steps:
                    with guard.saving():  # a signal now waits for the save to complete
                        self.save()
                    f.flush()  # object storage: the metrics of every saved step uploaded
                out.append(metrics)
        bar.close()
        return out

    def _eval_due(self, total_steps: int) -> bool:
        every = self.run_config.eval.every
        if self.eval_fn is None or every <= 0:
            return False
        return self.step % every == 0 or self.step == total_steps

    def close(self) -> None:
        if self._background is not None:
            self._background.shutdown(wait=True)
        self.checkpointer.close()
        self.engine.close()
        if self.on_close is not None:
            self.on_close()
