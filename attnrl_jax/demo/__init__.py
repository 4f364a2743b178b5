"""`make demo`: a tiny policy learns a multi-step arithmetic task with AttnRL on a CPU.

warm_start.py: supervised warm start of a tiny random Qwen2 (cached in the workdir);
report.py: plot and summary.json; held-out accuracy is eval/run.evaluate_policy's avg@k;
__main__.py: the whole run (`python -m attnrl_jax.demo`).
"""
