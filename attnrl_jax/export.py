"""Export a trained policy as a Hugging Face directory that transformers (and vLLM, SGLang, TGI:
any engine that reads HF Qwen2 checkpoints) loads as is.

    python -m attnrl_jax.export --workdir W [--output DIR] [--step N] [--dtype bfloat16]

Training writes <workdir>/config.json (the full config) and checkpoints; this reads the config
back (validated like training's), restores only the policy's params of the latest (or --step)
checkpoint onto the mesh training used, and writes config.json, model*.safetensors, the
tokenizer and the initial model's generation_config.json into DIR (default
<workdir>/hf_export). `python -m attnrl_jax.train` does the same at the end of a run. The
initial model (model.path, or <workdir>/initial_model) must still be readable: it gives the
architecture and the tokenizer. No trainer, data or optimizer is built.
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


def export_policy(
    model_cfg, params, tokenizer, output: str | Path, source_dir: str | Path, dtype=None
) -> Path:
    """Writes the policy (model_cfg, params) to `output` (replaced if it exists) as a Hugging
    Face directory, with its tokenizer and source_dir's generation_config.json if present."""
    from attnrl_jax.models import save_pretrained
    from attnrl_jax.models.lm import from_params

    model = from_params(model_cfg, params)
    path = save_pretrained(model, output, tokenizer=tokenizer, dtype=dtype, overwrite=True)
    generation = Path(source_dir) / "generation_config.json"
    if generation.is_file() and path.exists():
        shutil.copy2(generation, path / "generation_config.json")
    return path


def save_run_config(c, workdir: str | Path) -> None:
    """Writes the run's ml_collections config to <workdir>/config.json (what export reads)."""
    path = Path(workdir)
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_FILE).write_text(c.to_json(indent=2) + "\n")


def load_run_config(workdir: Path):
    """The RunConfig of a training workdir (its config.json, validated; workdir = `workdir`)."""
    import ml_collections

    from attnrl_jax.rl.settings import ConfigError, resolve

    path = workdir / CONFIG_FILE
    if not path.is_file():
        raise ExportError(f"{path}: no such file; is {workdir} a training workdir?")
    c = ml_collections.ConfigDict(json.loads(path.read_text()))
    c.workdir = str(workdir)
    try:
        return resolve(c)
    except ConfigError as e:
        raise ExportError(f"{path}: {e}") from None


def run(args: argparse.Namespace) -> Path:
    from transformers import AutoTokenizer

    from attnrl_jax.models import load_pretrained
    from attnrl_jax.rl.checkpoint import Checkpointer
    from attnrl_jax.rl.settings import build_mesh

    c = load_run_config(args.workdir)
    checkpointer = Checkpointer(args.workdir)
    try:
        steps = checkpointer.all_steps()
        if not steps:
            raise ExportError(f"{args.workdir / 'checkpoints'}: no complete checkpoint to export")
        if args.step is not None and args.step not in steps:
            raise ExportError(f"--step {args.step}: no such checkpoint; saved steps: {steps}")
        step = steps[-1] if args.step is None else args.step
        source = c.initial_model_dir
        if not (source / "config.json").is_file():
            raise ExportError(f"{source}: the initial model is gone (it gives the architecture)")
        model = load_pretrained(
            source, dtype=c.model.dtype, mesh=build_mesh(c), param_dtype=c.model.param_dtype
        )
        params = checkpointer.restore_params(step, model.params())
    finally:
        checkpointer.close()
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    output = args.output or args.workdir / EXPORT_DIR
    export_policy(model.config, params, tokenizer, output, source, args.dtype)
    print(f"exported step {step} of {args.workdir} to {output}", file=sys.stderr)
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
