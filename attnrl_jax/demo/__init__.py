"""`make demo`: a tiny policy learns a multi-step arithmetic task with AttnRL on a CPU.

warm_start.py: supervised warm start of a tiny random Qwen2 (cached in the workdir);
held_out.py: held-out accuracy of a policy; report.py: plot and summary.json;
__main__.py: the whole run (`python -m attnrl_jax.demo`).
"""
