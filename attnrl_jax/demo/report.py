"""The demo's outputs: a plot of the training curves and summary.json."""

from __future__ import annotations

import json
from pathlib import Path


def plot_metrics(metrics: list[dict], before: float, after: float, path: Path) -> Path:
    """PNG with reward, accuracy of the initial responses and prompt batch size per step, and
    the held-out accuracy before and after RL."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    steps = [m["step"] for m in metrics]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(steps, [m["reward"] for m in metrics], label="reward (mean over leaves)")
    ax1.plot(steps, [m["accuracy"] for m in metrics], label="accuracy of initial responses")
    ax1.axhline(before, color="gray", linestyle=":", label=f"held-out before RL ({before:.2f})")
    ax1.axhline(after, color="black", linestyle="--", label=f"held-out after RL ({after:.2f})")
    ax1.set(xlabel="step", ylim=(0, 1), title="AttnRL on the demo task")
    ax1.legend(fontsize=8)
    ax2.plot(steps, [m["prompt_batch_size"] for m in metrics], color="tab:green")
    ax2.set(xlabel="step", ylabel="prompts", title="adaptive prompt batch size")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_summary(path: Path, summary: dict) -> Path:
    path.write_text(json.dumps(summary, indent=2) + "\n")
    return path
