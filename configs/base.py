"""The published AttnRL setting (ALGORITHM.md sections 6-9): every key a training run reads.

Every config starts from this one (configs/demo.py overrides a few values); the dict is locked,
so a misspelt key is an error. Override any key on the command line:
`python -m attnrl_jax.train --config=configs/base.py --config.workdir=/tmp/run
--config.method=grpo`.
"""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    c = ConfigDict()
    c.workdir = ""  # required: checkpoints, metrics.jsonl, TensorBoard events, the initial model
    c.total_steps = 500
    c.method = "attnrl"  # attnrl | treerl (entropy branching, no ADS) | grpo (no tree)
    c.seed = 0
    c.off_policy = True  # one sampling call per step; False: the on-policy two-call variant
    # With off_policy: how many updates the initial responses are stale when trained on (1: the
    # paper's one-step off-policy; k > 1: batch s + k sampled with theta_s; 0: on-policy).
    # off_policy=False means 0 whatever this says.
    c.off_policy_steps = 1
    c.branching = ""  # "" = the method's own (attnrl: atb, treerl: entropy, grpo: none)
    # The training mesh (make_mesh(data, fsdp, tensor); -1: the rest). rollout_devices > 0:
    # that many devices only sample (their own mesh: rows over data, heads over `tensor`), the
    # rest only train, and batch s + 1's initial responses are sampled while batch s trains.
    c.mesh = ConfigDict({"data": -1, "fsdp": 1, "tensor": 1, "rollout_devices": 0})

    # path: a Hugging Face Qwen2 directory. "" builds the project's tiny random model (tiny_*),
    # unless require_path is set (the paper configs: an empty path is then a ConfigError).
    c.model = ConfigDict(
        {
            "path": "",
            "require_path": False,
            # dtype: computation (activations, matmuls); param_dtype: the stored weights and
            # AdamW moments. bfloat16 + float32 is mixed precision: softmax, norm and log-prob
            # statistics and gradient sums stay float32 either way.
            "dtype": "float32",
            "param_dtype": "float32",
            # recompute each layer's activations in the backward pass: the memory plan
            # (BENCHMARKS.md) needs it for 8k-token sequences of the 1.5B and 7B models
            "remat": False,
            "tiny_hidden_size": 64,
            "tiny_intermediate_size": 0,  # 0: 2 x tiny_hidden_size
            "tiny_layers": 2,
            "tiny_heads": 4,
            "tiny_kv_heads": 2,
            "tiny_vocab_size": 512,
        }
    )
    # train_files: comma-separated data files (jsonl/json/parquet/HF/TFDS), or "demo" for the
    # built-in arithmetic task (num_demo_problems problems of stream demo_seed, which is separate
    # from `seed` so that runs with different seeds train on one task). drop_eval_overlap:
    # training problems that appear in a bundled benchmark (attnrl_jax/eval/benchmarks) or
    # eval.files are dropped.
    c.data = ConfigDict(
        {
            "train_files": "demo",
            "drop_eval_overlap": True,
            "problem_key": "problem",
            "answer_key": "answer",
            "max_prompt_len": 1024,
            "num_demo_problems": 512,
            "demo_seed": 0,
            "on_error": "raise",  # a malformed row: "raise" (one line per row) | "skip" (counted)
        }
    )
    c.rollout = ConfigDict(
        {
            "group_size": 6,  # G
            "continuations": 2,  # T per branch point
            "num_points": 2,  # N branch points per expanded response
            "max_new_tokens": 8192,
            "temperature": 1.0,
            "top_p": 1.0,
            "rho": 0.2,
            "min_token_distance": 512,
            "merge_duplicates": True,
            "score_batch_size": 8,
            # FCI of initial responses: "sampler" (accumulated while decoding; the scoring
            # forward then runs only for rows it cannot score, or for entropies) | "scoring"
            "fci_source": "sampler",
            "sampler_rows": 64,  # the native engine's slots (rows decoding together)
            # most rows one admission prefills per batch shard (0: no cap); prefill memory
            # grows with rows admitted at once x context length
            "admit_rows": 0,
            # where the native engine keeps its copy of the weights on a mesh: "replicated"
            # over data x fsdp (no weight traffic while decoding), "training" (the FSDP split)
            # or "auto" (replicated when that takes at most a quarter of device memory)
            "decode_layout": "auto",
        }
    )
    # ADS (used by method attnrl; treerl and grpo expand every response with a fixed batch size).
    # The paper's Table 2 ablations: attention_filter=False, difficulty_expansion=False.
    c.ads = ConfigDict(
        {
            "difficulty_expansion": True,
            "rounding": "ceil",
            "attention_filter": True,
            "adaptive_batch_size": True,
            "zero_advantage_filter": "same_reward",
            "target_sequences": 1920,
            "batch_lambda": 0.9,
            "initial_prompt_batch_size": 64,
        }
    )
    c.fci = ConfigDict({"pooling": "mean", "delta": 4, "aggregation": "max"})
    # dual_clip 0 disables the dual clip; kl_weight 0 skips the reference forward. tis_cap: the
    # importance correction (rl/loss.py): ratio against the trainer's recomputed (proximal)
    # log-probs, times min(pi_prox / pi_behaviour, tis_cap); 0: off, the ratio is against the
    # sampler's log-probs and no proximal forward runs.
    c.loss = ConfigDict(
        {
            "clip_low": 0.2,
            "clip_high": 0.28,
            "dual_clip": 3.0,
            "kl_weight": 0.001,
            "entropy_weight": 0.0,
            "tis_cap": 2.0,
        }
    )
    c.optim = ConfigDict(
        {"learning_rate": 1e-6, "weight_decay": 0.01, "grad_clip": 1.0, "b1": 0.9, "b2": 0.999}
    )
    # packing: "tree" (each shared token once, weight = path count) or "path" (one row per path).
    # One optimizer update per minibatch_problems problems; micro-batches of microbatch_rows rows.
    # on_nonfinite: a step whose loss, gradient norm or new state is not finite is never applied
    # nor saved; "stop" ends the run naming the step, "skip" drops the update and goes on (a
    # second copy of params + optimizer state on the devices; counted as nonfinite_skips).
    # tokens_per_row > 0: padding-free rows, whole rows packed side by side into rows of this
    # many tokens (at least the longest row); 0: every row padded to the step's longest.
    c.train = ConfigDict(
        {
            "packing": "path",
            "minibatch_problems": 32,
            "microbatch_rows": 8,
            "on_nonfinite": "stop",
            "tokens_per_row": 0,
        }
    )
    # workers 0: grade in-process. reward: "hybrid" (the authors' order: last box, then
    # Math-Verify over the whole answer text) or "boxed" (the last box only); rewards/math.py.
    c.grading = ConfigDict({"workers": 0, "timeout_s": 5.0, "reward": "hybrid"})
    c.checkpoint = ConfigDict({"every": 10, "keep": 2})
    c.log = ConfigDict({"progress": True, "tensorboard": True})
    # Evaluation during training (eval/run.py), every `every` steps and after the last; 0: off.
    # benchmarks: comma-separated bundled names, each with an optional ":k" (e.g. "aime24:32,
    # math500:4"), "paper" for the paper's six with their k, or "demo" (held-out demo problems).
    # files: comma-separated JSONL files of your own (fields problem/answer). k: samples per
    # problem where a name gives none. num_problems: the first N of each benchmark (0: all).
    # Metrics go to metrics.jsonl and TensorBoard as eval/<benchmark>/<metric>.
    c.eval = ConfigDict(
        {
            "every": 0,
            "benchmarks": "",
            "files": "",
            "k": 4,
            "max_new_tokens": 8192,
            "temperature": 0.6,
            "top_p": 0.95,
            "num_problems": 0,
        }
    )
    # Multi-host (attnrl_jax/distributed.py). mode: auto (these keys, else JAX_COORDINATOR_ADDRESS
    # / JAX_NUM_PROCESSES / JAX_PROCESS_ID, else SLURM, else TPU_WORKER_* env; one process when
    # none), tpu (Cloud TPU pod slice, worker list from the VM metadata), off. num_processes 0
    # and process_id -1 mean unset; port 0: the cluster's default (SLURM, TPU).
    c.distributed = ConfigDict(
        {
            "mode": "auto",
            "coordinator_address": "",
            "num_processes": 0,
            "process_id": -1,
            "port": 0,
            "initialization_timeout_s": 300,
        }
    )
    c.lock()
    return c
