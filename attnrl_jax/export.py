"""Export a trained policy as a Hugging Face directory that transformers (and vLLM, SGLang, TGI:
any engine that reads HF Qwen2 checkpoints) loads as is.

    python -m attnrl_jax.export --workdir W [--output DIR] [--step N] [--dtype bfloat16]
        [--overwrite] [--debug]

Training writes <workdir>/config.json (the full config) and checkpoints; this reads the config
back (validated like training's), restores only the policy's params of the latest (or --step)
checkpoint onto the mesh training used, and writes config.json, model*.safetensors, the
tokenizer and the initial model's generation_config.json into DIR (default
<workdir>/hf_export). `python -m attnrl_jax.train` does the same at the end of a run. The
initial model (model.path, or <workdir>/initial_model) must still be readable: it gives the
architecture and the tokenizer. No trainer, data or optimizer is built.

Nothing it did not write is deleted: DIR may not be the workdir, a folder holding it, a folder
inside it other than its hf_export, or the initial model's folder (nor one holding it or inside
it); an existing non-empty DIR is replaced only when an earlier export wrote it (the marker file
.attnrl-export) or with --overwrite. The latest checkpoint is verified (rl/integrity.py); a
damaged one is reported and the newest intact one exported instead (an explicit --step is not
replaced). Errors are one line and exit code 2 (--debug or ATTNRL_DEBUG=1: the traceback).

The workdir, DIR and the initial model may be gs:// URLs (attnrl_jax/storage.py). A gs:// DIR
is written locally, then uploaded with the marker file last: on object storage the marker is
the commit marker (a rename would not be atomic), and an upload cut short leaves a DIR without
it, which a later export replaces only with --overwrite.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from attnrl_jax import storage

CONFIG_FILE = "config.json"
EXPORT_DIR = "hf_export"
MARKER = ".attnrl-export"  # in every directory export wrote: it may replace those


class ExportError(ValueError):
    """A workdir that cannot be exported (the message names what is missing)."""


def export_policy(
    model_cfg, params, tokenizer, output: str | Path, source_dir: str | Path, dtype=None
) -> Path:
    """Writes the policy (model_cfg, params) to `output` (replaced if it exists) as a Hugging
    Face directory, with its tokenizer and source_dir's generation_config.json if present."""
    from attnrl_jax.models.lm import from_params

    model = from_params(model_cfg, params)
    if storage.is_remote(output):
        with tempfile.TemporaryDirectory() as tmp:
            local = _export_local(model, Path(tmp) / "export", tokenizer, source_dir, dtype)
            if local.exists():  # process 0 (the others only join the gather)
                storage.upload_dir(local, output, marker=MARKER)
        return storage.path(output)
    return _export_local(model, output, tokenizer, source_dir, dtype)


def _export_local(model, output, tokenizer, source_dir, dtype) -> Path:
    from attnrl_jax.models import save_pretrained

    path = save_pretrained(model, output, tokenizer=tokenizer, dtype=dtype, overwrite=True)
    generation = Path(source_dir) / "generation_config.json"
    if generation.is_file() and path.exists():
        shutil.copy2(generation, path / "generation_config.json")
    if path.exists():
        (path / MARKER).write_text("written by python -m attnrl_jax.export\n")
    return path


def check_output(
    output: Path, workdir: Path, model_dir: Path, own: bool = False, overwrite: bool = False
) -> None:
    """An ExportError when writing `output` could delete what export did not write (see the
    module docstring); own: output is the run's own <workdir>/hf_export."""
    try:
        storage.check_supported(output, "--output")
    except storage.StorageError as e:
        raise ExportError(str(e)) from None
    out, work, model = (storage.absolute(p) for p in (output, workdir, model_dir))
    _is_within = storage.same_or_inside
    if _is_within(work, out):
        raise ExportError(f"--output {output} would replace the workdir {workdir}")
    if _is_within(out, work) and out != work / EXPORT_DIR:
        raise ExportError(
            f"--output {output} is inside the workdir {workdir}; use {work / EXPORT_DIR} or a "
            "folder outside it"
        )
    if _is_within(out, model) or _is_within(model, out):
        raise ExportError(f"--output {output} would overwrite the initial model {model_dir}")
    if out.exists() and not out.is_dir():
        raise ExportError(f"--output {output} is a file")
    written_by_us = (out / MARKER).is_file()
    if out.is_dir() and any(out.iterdir()) and not written_by_us and not overwrite:
        hint = "move it away" if own else "pass --overwrite to replace it"
        raise ExportError(f"{output} exists, is not empty and was not written by export; {hint}")


def save_run_config(c, workdir: str | Path) -> None:
    """Writes the run's ml_collections config to <workdir>/config.json (what export reads),
    atomically (storage.write_atomic: a renamed temporary file, or one object upload)."""
    storage.write_atomic(storage.path(workdir) / CONFIG_FILE, c.to_json(indent=2) + "\n")


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
    from attnrl_jax.rl.devices import build_mesh

    for flag, value in (("--workdir", args.workdir), ("--output", args.output)):
        try:
            storage.check_supported(value or "", flag)
        except storage.StorageError as e:
            raise ExportError(str(e)) from None
    args.workdir = storage.path(args.workdir)
    args.output = storage.path(args.output) if args.output else None
    c = load_run_config(args.workdir)
    output = args.output or args.workdir / EXPORT_DIR
    check_output(output, args.workdir, c.initial_model_dir, overwrite=args.overwrite)
    if not (args.workdir / "checkpoints").is_dir():
        raise ExportError(f"{args.workdir / 'checkpoints'}: no checkpoints folder")
    checkpointer = Checkpointer(args.workdir, read_only=True)
    try:
        steps = checkpointer.all_steps()
        if not steps:
            raise ExportError(f"{args.workdir / 'checkpoints'}: no complete checkpoint to export")
        if args.step is not None and args.step not in steps:
            raise ExportError(f"--step {args.step}: no such checkpoint; saved steps: {steps}")
        source = c.initial_model_dir
        if not (source / "config.json").is_file():
            raise ExportError(f"{source}: the initial model is gone (it gives the architecture)")
        source = storage.local_copy(source)  # a gs:// model: its files, downloaded
        model = load_pretrained(
            source, dtype=c.model.dtype, mesh=build_mesh(c), param_dtype=c.model.param_dtype
        )
        step, params = _restore_intact(checkpointer, steps if args.step is None else [args.step],
                                       model.params())  # fmt: skip
    finally:
        checkpointer.close()
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    export_policy(model.config, params, tokenizer, output, source, args.dtype)
    print(f"exported step {step} of {args.workdir} to {output}", file=sys.stderr)
    return output


def _restore_intact(checkpointer, steps: list[int], params_target):
    """(step, params) of the newest of `steps` whose params verify; damaged ones are reported."""
    from attnrl_jax.rl.integrity import DamagedCheckpoint

    problems = []
    for step in reversed(steps):
        try:
            return step, checkpointer.restore_params(step, params_target)
        except DamagedCheckpoint as e:
            print(f"{e}; trying the previous checkpoint", file=sys.stderr)
            problems.append(f"step {step}: {e.reason}")
    raise ExportError(f"no intact checkpoint to export ({'; '.join(problems)})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m attnrl_jax.export", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--workdir", required=True, help="a training workdir (or gs://...)")
    parser.add_argument("--output", help="default: <workdir>/hf_export (or gs://...)")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), help="default: training's")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing non-empty --output"
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    from attnrl_jax.models.hf_io import CheckpointError
    from attnrl_jax.rl.settings import ConfigError

    try:
        run(args)
    except (ExportError, CheckpointError, ConfigError) as e:
        if args.debug or os.environ.get("ATTNRL_DEBUG", "") not in ("", "0"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
