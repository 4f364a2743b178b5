"""Export a trained policy as a Hugging Face directory that transformers (and vLLM, SGLang, TGI:
any engine that reads HF Qwen2 checkpoints) loads as is.

    python -m attnrl_jax.export --workdir W [--output DIR] [--step N] [--dtype bfloat16]

Training writes <workdir>/config.json (the full config) and checkpoints; this restores the
latest (or --step) checkpoint through the same code path as resuming training and writes
config.json, model*.safetensors, the tokenizer and the initial model's generation_config.json
into DIR (default <workdir>/hf_export). `python -m attnrl_jax.train` does the same at the end of
a run. The checkpoint must have been written by this version's trainer; the config's data files
and initial model must still be readable (they rebuild the trainer).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

CONFIG_FILE = "config.json"
EXPORT_DIR = "hf_export"


class ExportError(ValueError):
    """A workdir that cannot be exported (the message names what is missing)."""


def export_trainer(trainer, output: str | Path, source_dir: str | Path, dtype=None) -> Path:
    """Writes the trainer's current policy to `output` (replaced if it exists) as a Hugging
    Face directory, with its tokenizer and source_dir's generation_config.json if present."""
    from attnrl_jax.models import save_pretrained
    from attnrl_jax.models.lm import from_params

    model = from_params(trainer.cfg, trainer.params)
    path = save_pretrained(model, output, tokenizer=trainer.tokenizer, dtype=dtype, overwrite=True)
    generation = Path(source_dir) / "generation_config.json"
    if generation.is_file() and path.exists():
        shutil.copy2(generation, path / "generation_config.json")
    return path


def save_run_config(c, workdir: str | Path) -> None:
    """Writes the run's config to <workdir>/config.json (what export reads back)."""
    path = Path(workdir)
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_FILE).write_text(c.to_json(indent=2) + "\n")


def load_run_config(workdir: Path):
    import ml_collections

    path = workdir / CONFIG_FILE
    if not path.is_file():
        raise ExportError(f"{path}: no such file; is {workdir} a training workdir?")
    c = ml_collections.ConfigDict(json.loads(path.read_text()))
    c.workdir = str(workdir)
    return c


def run(args: argparse.Namespace) -> Path:
    from attnrl_jax.rl.checkpoint import Checkpointer
    from attnrl_jax.train import build_trainer, initial_model_path

    c = load_run_config(args.workdir)
    checkpointer = Checkpointer(args.workdir)
    steps = checkpointer.manager.all_steps()
    checkpointer.close()
    if not steps:
        raise ExportError(f"{args.workdir / 'checkpoints'}: no complete checkpoint to export")
    if args.step is not None and args.step not in steps:
        raise ExportError(f"--step {args.step}: no such checkpoint; saved steps: {sorted(steps)}")
    c.eval.every, c.grading.workers = 0, 0  # exporting needs no evaluation or grading pool
    trainer = build_trainer(c, reward_fn=lambda texts, golds: [0.0] * len(texts))
    try:
        if args.step is not None and args.step != trainer.step:
            trainer._restore(args.step)
        output = args.output or args.workdir / EXPORT_DIR
        export_trainer(trainer, output, initial_model_path(c), args.dtype)
    finally:
        trainer.close()
    print(f"exported step {trainer.step} of {args.workdir} to {output}", file=sys.stderr)
    return Path(output)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m attnrl_jax.export", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--workdir", required=True, type=Path, help="a training workdir")
    parser.add_argument("--output", type=Path, help="default: <workdir>/hf_export")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), help="default: training's")
    args = parser.parse_args(argv)
    try:
        run(args)
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
