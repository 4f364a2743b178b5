"""The training loop: rollout (rollout.py, pipeline.py), update (update.py), metrics, checkpoints.

Step k (0-based; the params are theta_k, policy version k):
- off-policy (default): grade the pending Generation(k) (sampled by theta_{k-1}; by theta_0 in
  the warm-up), plan its branches, ONE sampler call with theta_k for the next prompt batch's G
  samples and this batch's continuations, score the next batch with theta_k, grade the
  continuations, build trees, update to theta_{k+1}; the next batch becomes the pending one.
- on-policy: sample and score batch k with theta_k, grade, plan, a second sampler call for the
  continuations, grade, build trees, update.

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
import json
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from attnrl_jax.data.pipeline import Prompt, PromptStream
from attnrl_jax.models.lm import Params
from attnrl_jax.models.sharding import optimizer_state_shardings, param_shardings
from attnrl_jax.rl import ads
from attnrl_jax.rl import pipeline as pl
from attnrl_jax.rl import rollout as ro
from attnrl_jax.rl.checkpoint import Checkpointer
from attnrl_jax.rl.settings import Settings
from attnrl_jax.rl.update import make_optimizer, run_updates
from attnrl_jax.sampling import Buckets, SamplerConfig
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
    """Owns the training state; `run(total_steps)` trains and checkpoints, resuming if it can.

    Built by `train.build_trainer` from a config; parts passed in so tests can swap the reward.
    """

    def __init__(
        self,
        *,
        settings: Settings,
        model_cfg,
        params: Params,
        mesh: Mesh,
        tokenizer,
        prompts: list[Prompt],
        reward_fn: ro.RewardFn,
        workdir: str | Path,
        seed: int,
        off_policy: bool = True,
        checkpoint_every: int = 1,
        checkpoint_keep: int = 2,
        sampler_rows: int = 64,
        log_fn: Callable[[dict], None] | None = None,
        on_close: Callable[[], None] | None = None,
        eval_fn: Callable[..., dict[str, float]] | None = None,
        eval_every: int = 0,
    ):
        self.settings, self.cfg, self.mesh = settings, model_cfg, mesh
        self.tokenizer, self.reward_fn, self.seed = tokenizer, reward_fn, seed
        self.off_policy = off_policy
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.checkpoint_every = checkpoint_every
        self.log_fn = log_fn
        self.on_close = on_close  # e.g. stops a grading worker pool
        # eval_fn(params, sampler_config, eos_ids) -> {"eval/<bench>/<metric>": value}, run
        # after every eval_every-th step and the last one (eval/training.py builds it).
        self.eval_fn, self.eval_every = eval_fn, eval_every
        eos = {tokenizer.eos_token_id} | {
            tokenizer.convert_tokens_to_ids(t)
            for t in ("<|im_end|>",)
            if t in tokenizer.get_vocab()
        }
        self.rollout = ro.RolloutConfig(
            **{**settings.rollout.__dict__, "eos_ids": tuple(sorted(eos))}
        )
        self.seps = SeparatorIds.from_tokenizer(tokenizer)
        single = mesh.devices.size == 1
        # One row bucket: every device batch has exactly sampler_rows rows (and context slots).
        # A step's row count changes with the ADS plan; with power-of-two row buckets each new
        # (rows, contexts) pair compiled a sampler program mid-run. Padding costs at most one
        # partly empty device batch per call (padding rows have budget 0 and stop at once).
        self.sampler = SamplerConfig(
            buckets=Buckets(rows=(sampler_rows,)), mesh=None if single else mesh
        )
        shardings = param_shardings(model_cfg, mesh)
        self.params = jax.device_put(params, shardings)
        # The frozen initial policy for the KL term (a copy: updates donate the params' buffers).
        self.ref_params = None
        if settings.loss.kl_weight > 0:
            self.ref_params = jax.tree.map(jnp.copy, self.params)
        opt_state = jax.jit(make_optimizer(settings.optim).init)(self.params)
        self.opt_state = jax.device_put(
            opt_state, optimizer_state_shardings(opt_state, self.params, shardings, mesh)
        )
        self.stream = PromptStream(prompts, seed=seed)
        self.step = 0
        self.filter_state = ads.AttentionFilterState()
        self.prompt_batch_size = settings.initial_prompt_batch_size
        self.pending: ro.Generation | None = None
        self.checkpointer = Checkpointer(self.workdir, checkpoint_keep)
        latest = self.checkpointer.latest_step()
        if latest is not None:
            self._restore(latest)

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
            arrays, host["pending"] = ro.generation_to_state(self.pending)
        return host, arrays

    def save(self) -> None:
        host, arrays = self._host_state()
        state = {"params": self.params, "opt_state": self.opt_state}
        self.checkpointer.save(self.step, state, host, arrays)

    def _restore(self, step: int) -> None:
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
            self.pending = ro.generation_from_state(arrays, host["pending"], self.seps)

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
            requests += pl.continuation_requests(
                *plan_of, self.rollout.continuations, first_index=len(requests)
            )
        self._sampler_calls += 1
        # FCI of the new initial responses from the sampler (rollout.fci_source = "sampler").
        fci = self.rollout.sampler_fci(self.seps) if prompts else None
        with timer("sampling"):
            out = ro.sample_all(
                self.params, self.cfg, requests, self.rollout, self._seed(call), self.sampler, fci
            )
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
        if self.off_policy and self.pending is None:  # warm-up: batch 1 with theta_0, no update
            prompts = self.stream.take(self.prompt_batch_size)
            self.pending, _ = self._sample_and_score(prompts, None, timer, call=0)
            self._sampler_calls = 0  # the warm-up is not part of the step's pipeline
            warm_up_tokens = sum(len(r) for r in self.pending.responses)
        if self.off_policy:
            gen = self.pending
        else:
            prompts = self.stream.take(self.prompt_batch_size)
            gen, _ = self._sample_and_score(prompts, None, timer, call=1)
        with timer("grading"):
            rewards = self._grade(gen.responses, ro.golds_of(gen))
        plan = pl.plan_branches(gen, rewards, self.filter_state, rng, self.rollout)
        next_prompts = self.stream.take(self.prompt_batch_size) if self.off_policy else []
        next_gen, conts = self._sample_and_score(next_prompts, (gen, plan), timer, call=2)
        with timer("grading"):
            flat = [s.token_ids for group in conts for s in group]
            golds = pl.continuation_golds(gen, plan, conts)
            splits = np.cumsum([len(group) for group in conts])[:-1]
            cont_rewards = np.split(self._grade(flat, golds), splits) if conts else []
        problems, stats = pl.build_problems(
            gen, rewards, plan, conts, cont_rewards, self.step, self.rollout
        )
        staleness = max(
            (self.step - int(v.min()) for p in problems for v in p.segment_version if v.size),
            default=0,
        )
        with timer("update"):
            s = self.settings
            self.params, self.opt_state, update_metrics = run_updates(
                self.params, self.opt_state, self.ref_params, problems,
                cfg=self.cfg, loss=s.loss, optim=s.optim, packing=s.packing,
                minibatch_problems=s.minibatch_problems, microbatch_rows=s.microbatch_rows,
                temperature=self.rollout.temperature,
                mesh=None if self.mesh.devices.size == 1 else self.mesh, timer=timer,
            )  # fmt: skip
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
                sum(len(s.token_ids) for group in conts for s in group)
                + (sum(len(r) for r in next_gen.responses) if next_gen else 0)
                + (warm_up_tokens if self.off_policy else sum(len(r) for r in gen.responses))
            ),
            "mc_valid_ratio": pl.mc_valid_ratio(rewards, plan, cont_rewards),
            "max_staleness": staleness,
            "sampler_calls": self._sampler_calls,
            "policy_version": self.step,
            **{f"time_{k}": v for k, v in timer.items()},
            **update_metrics,
        }
        self.filter_state = plan.filter_state
        if self.settings.adaptive_batch_size:
            self.prompt_batch_size = ads.next_prompt_batch_size(
                len(gen.prompts), stats.sequences, self.rollout.ads
            )
        self.pending = next_gen if self.off_policy else None
        self.step += 1
        metrics["time_step"] = time.perf_counter() - start
        return metrics

    # ----- loop -----

    def run(self, total_steps: int, progress: bool = False) -> list[dict]:
        """Trains from the current step to total_steps; returns this call's metrics."""
        from tqdm.auto import tqdm

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
                    metrics.update(self.eval_fn(self.params, self.sampler, self.rollout.eos_ids))
                    metrics["time_eval"] = time.perf_counter() - start
                if primary:
                    f.write(json.dumps(metrics) + "\n")
                    f.flush()
                if self.log_fn is not None and primary:
                    self.log_fn(metrics)
                bar.update(1)
                bar.set_postfix(reward=f"{metrics['reward']:.3f}", valid=metrics["valid_ratio"])
                if self.step % self.checkpoint_every == 0 or self.step == total_steps:
                    self.save()
                out.append(metrics)
        bar.close()
        return out

    def _eval_due(self, total_steps: int) -> bool:
        if self.eval_fn is None or self.eval_every <= 0:
            return False
        return self.step % self.eval_every == 0 or self.step == total_steps

    def close(self) -> None:
        self.checkpointer.close()
        if self.on_close is not None:
            self.on_close()
