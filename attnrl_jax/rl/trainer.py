"""The training loop: rollout (rollout.py, step_plan.py), update (update.py), metrics, checkpoints.

Step k (0-based; the params are theta_k, policy version k):
- off-policy (default): grade the pending Generation(k) (sampled by theta_{k-1}; by theta_0 in
  the warm-up), plan its branches, ONE sampler call with theta_k for the next prompt batch's G
  samples and this batch's continuations, score the next batch with theta_k, grade the
  continuations, build trees, update to theta_{k+1}; the next batch becomes the pending one.
- on-policy: sample and score batch k with theta_k, grade, plan, a second sampler call for the
  continuations, grade, build trees, update.

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

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from attnrl_jax.data.pipeline import Prompt, PromptStream
from attnrl_jax.models.lm import Params
from attnrl_jax.models.sharding import optimizer_state_shardings, param_shardings
from attnrl_jax.rl import ads
from attnrl_jax.rl import rollout as ro
from attnrl_jax.rl import step_plan as sp
from attnrl_jax.rl.checkpoint import Checkpointer, generation_from_state, generation_to_state
from attnrl_jax.rl.settings import RunConfig
from attnrl_jax.rl.update import make_optimizer, run_updates
from attnrl_jax.sampling import Buckets, SamplerConfig
from attnrl_jax.sampling.engine import NativeEngine, RolloutEngine
from attnrl_jax.sampling.eos import eos_ids as model_eos_ids
from attnrl_jax.scoring.steps import SeparatorIds

PHASES = ("sampling", "scoring", "grading", "reference", "update")


class PhaseTimes(dict):
    """Seconds per phase: `with times("sampling"): ...` adds the block's wall time.

    The trainer's phases (PHASES, metrics "time_<phase>"): sampling (sampler calls), scoring
    (the scoring pass: log-probs, entropies, FCI), grading (reward function), reference (the
    frozen policy's forward for the KL term; 0 with kl_weight 0) and update (the policy's
    forward, backward and optimizer steps, without the reference forward).
    """

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self[name] = self.get(name, 0.0) + time.perf_counter() - start


class Trainer:
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
        self.workdir = Path(run.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_fn = log_fn
        self.on_close = on_close  # e.g. stops a grading worker pool
        self.eval_fn = eval_fn
        if eos_ids is None:
            eos_ids = model_eos_ids(tokenizer, config_eos=model_cfg.eos_token_id)
        self.rollout = dataclasses.replace(run.rollout, eos_ids=tuple(sorted(set(eos_ids))))
        self.seps = SeparatorIds.from_tokenizer(tokenizer)
        shardings = param_shardings(model_cfg, mesh)
        self.params = jax.device_put(params, shardings)
        if engine is None:
            # One row bucket: every device batch has exactly sampler_rows rows (and context
            # slots). A step's row count changes with the ADS plan; with power-of-two row
            # buckets each new (rows, contexts) pair compiled a sampler program mid-run.
            # Padding costs at most one partly empty device batch per call (padding rows have
            # budget 0 and stop at once).
            single = mesh.devices.size == 1
            sampler = SamplerConfig(
                buckets=Buckets(rows=(run.rollout.sampler_rows,)), mesh=None if single else mesh
            )
            engine = NativeEngine(model_cfg, self.params, sampler)
        self.engine = engine
        # The frozen initial policy for the KL term (a copy: updates donate the params' buffers).
        self.ref_params = None
        if run.loss.kl_weight > 0:
            self.ref_params = jax.tree.map(jnp.copy, self.params)
        opt_state = jax.jit(make_optimizer(run.optim).init)(self.params)
        self.opt_state = jax.device_put(
            opt_state, optimizer_state_shardings(opt_state, self.params, shardings, mesh)
        )
        self.stream = PromptStream(prompts, seed=self.seed)
        self.step = 0
        self.filter_state = ads.AttentionFilterState()
        self.prompt_batch_size = run.train.initial_prompt_batch_size
        self.pending: ro.Generation | None = None
        self.checkpointer = Checkpointer(self.workdir, run.checkpoint.keep)
        latest = self.checkpointer.latest_step()
        if latest is not None:
            self.restore(latest)  # hands the engine the restored params
        else:
            self.engine.update_weights(self.params, self.step)

    # ----- state -----

    def _host_state(self) -> dict:
        host = {
            "step": self.step,
            "seed": self.seed,
            "filter_total": self.filter_state.total,
            "filter_count": self.filter_state.count,
            "prompt_batch_size": self.prompt_batch_size,
            "stream": self.stream.get_state(),
            "pending": None,
        }
        arrays = None
        if self.pending is not None:
            arrays, host["pending"] = generation_to_state(self.pending)
        return host, arrays

    def save(self) -> None:
        host, arrays = self._host_state()
        state = {"params": self.params, "opt_state": self.opt_state}
        self.checkpointer.save(self.step, state, host, arrays)

    def restore(self, step: int) -> None:
        """Loads checkpoint `step` (params, optimizer, stream, pending Generation)."""
        target = {"params": self.params, "opt_state": self.opt_state}
        state, host, arrays = self.checkpointer.restore(step, target)
        if host["seed"] != self.seed:
            raise ValueError(
                f"the checkpoint in {self.workdir} was trained with seed {host['seed']}, "
                f"this run has seed {self.seed}; use the same seed or a new workdir"
            )
        self.params, self.opt_state = state["params"], state["opt_state"]
        self.step = int(host["step"])
        self.filter_state = ads.AttentionFilterState(host["filter_total"], host["filter_count"])
        self.prompt_batch_size = int(host["prompt_batch_size"])
        self.stream.set_state(host["stream"])
        self._drop_metrics_after(self.step)
        self.pending = None
        if host["pending"] is not None:
            arrays = {k: np.asarray(v) for k, v in arrays.items()}
            self.pending = generation_from_state(arrays, host["pending"], self.seps)
        self.engine.update_weights(self.params, self.step)

    def _drop_metrics_after(self, step: int) -> None:
        """Forget metrics lines of steps after the restored checkpoint (and a line cut off by a
        kill), so metrics.jsonl reads as one uninterrupted run."""
        path = self.workdir / "metrics.jsonl"
        if jax.process_index() != 0 or not path.exists():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line + "\n")
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
        path.write_text("".join(kept))

    # ----- one step -----

    def _seed(self, call: int) -> int:
        return int(np.random.default_rng([self.seed, self.step, call]).integers(2**31))

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

    def _sample_and_score(self, prompts, plan_of, timer, call):
        """One sampler call: G samples per prompt, plus T continuations per branch point of
        `plan_of` = (Generation, BranchPlan) when given; then the scoring pass over the new
        responses. Returns (Generation of the prompts or None, continuation samples)."""
        requests = ro.initial_requests(prompts, self.rollout.group_size)
        if plan_of is not None:
            requests += sp.continuation_requests(
                *plan_of, self.rollout.continuations, first_index=len(requests)
            )
        self._sampler_calls += 1
        # FCI of the new initial responses from the sampler (rollout.fci_source = "sampler").
        fci = self.rollout.sampler_fci(self.seps) if prompts else None
        with timer("sampling"):
            out = ro.sample_all(self.engine, requests, self.rollout, self._seed(call), fci)
        gen = None
        if prompts:
            with timer("scoring"):
                gen = ro.score_generation(
                    self.params, self.cfg, self.rollout, prompts, out[: len(prompts)], self.seps,
                    self.step,
                )  # fmt: skip
        return gen, out[len(prompts) :]

    def train_step(self) -> dict:
        timer = PhaseTimes.fromkeys(PHASES, 0.0)
        start = time.perf_counter()
        rng = np.random.default_rng([self.seed, self.step])
        self._sampler_calls = 0
        warm_up_tokens = 0
        off_policy = self.run_config.off_policy
        if off_policy and self.pending is None:  # warm-up: batch 1 with theta_0, no update
            prompts = self.stream.take(self.prompt_batch_size)
            self.pending, _ = self._sample_and_score(prompts, None, timer, call=0)
            self._sampler_calls = 0  # the warm-up is not part of the step's pipeline
            warm_up_tokens = sum(len(r) for r in self.pending.responses)
        if off_policy:
            gen = self.pending
        else:
            prompts = self.stream.take(self.prompt_batch_size)
            gen, _ = self._sample_and_score(prompts, None, timer, call=1)
        with timer("grading"):
            rewards = self._grade(gen.responses, ro.golds_of(gen))
        plan = sp.plan_branches(gen, rewards, self.filter_state, rng, self.rollout)
        next_prompts = self.stream.take(self.prompt_batch_size) if off_policy else []
        next_gen, conts = self._sample_and_score(next_prompts, (gen, plan), timer, call=2)
        conts = sp.attach(plan, conts)
        with timer("grading"):
            flat = [s.token_ids for s in sp.flat_samples(conts)]
            graded = self._grade(flat, sp.continuation_golds(gen, conts))
            cont_rewards = sp.nest_rewards(conts, graded)
        problems, stats = sp.build_problems(
            gen, rewards, plan, conts, cont_rewards, self.step, self.rollout
        )
        staleness = max(
            (self.step - int(v.min()) for p in problems for v in p.segment_version if v.size),
            default=0,
        )
        with timer("update"):
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
        self.engine.update_weights(self.params, self.step + 1)
        timer["update"] -= timer.get("reference", 0.0)  # "update": the policy's own share
        metrics = {
            "step": self.step + 1,
            "reward": stats.mean_leaf_reward,
            "accuracy": float(np.mean(rewards > 0)),
            "valid_ratio": stats.kept / max(stats.problems, 1),
            "filtered_ratio": plan.num_filtered / max(stats.problems, 1),
            "prompt_batch_size": len(gen.prompts),
            "sequences": stats.sequences,
            "expanded": sum(1 for p in plan.branch_points if p),
            # every token sampled during this step, the off-policy warm-up batch included
            "tokens_generated": int(
                sum(len(s.token_ids) for s in sp.flat_samples(conts))
                + (sum(len(r) for r in next_gen.responses) if next_gen else 0)
                + (warm_up_tokens if off_policy else sum(len(r) for r in gen.responses))
            ),
            "mc_valid_ratio": sp.mc_valid_ratio(rewards, cont_rewards),
            "max_staleness": staleness,
            "sampler_calls": self._sampler_calls,
            "policy_version": self.step,
            **{f"time_{k}": v for k, v in timer.items()},
            **update_metrics,
        }
        self.filter_state = plan.filter_state
        if self.run_config.method.adaptive_batch_size:
            self.prompt_batch_size = ads.next_prompt_batch_size(
                len(gen.prompts), stats.sequences, self.rollout.ads
            )
        self.pending = next_gen if off_policy else None
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
        path = self.workdir / "metrics.jsonl"
        with open(path, "a") if primary else contextlib.nullcontext() as f:
            while self.step < total_steps:
                metrics = self.train_step()
                if self._eval_due(total_steps):
                    start = time.perf_counter()
                    metrics.update(self.eval_fn(self.engine))
                    metrics["time_eval"] = time.perf_counter() - start
                if primary:
                    f.write(json.dumps(metrics) + "\n")
                    f.flush()
                if self.log_fn is not None and primary:
                    self.log_fn(metrics)
                bar.update(1)
                bar.set_postfix(reward=f"{metrics['reward']:.3f}", valid=metrics["valid_ratio"])
                every = self.run_config.checkpoint.every
                if self.step % every == 0 or self.step == total_steps:
                    self.save()
                out.append(metrics)
        bar.close()
        return out

    def _eval_due(self, total_steps: int) -> bool:
        every = self.run_config.eval.every
        if self.eval_fn is None or every <= 0:
            return False
        return self.step % every == 0 or self.step == total_steps

    def close(self) -> None:
        self.checkpointer.close()
        self.engine.close()
        if self.on_close is not None:
            self.on_close()
