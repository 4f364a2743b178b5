"""Score responses: per-token log-probs and entropies, steps, FCI and ATB branch points.

    python -m attnrl_jax.score --model DIR --input IN.jsonl --output OUT.jsonl [--dtype bfloat16]

Each non-blank input line is a JSON object with either "prompt_ids" and "response_ids" (lists of
token ids) or "prompt" and "response" (text, encoded with the model directory's tokenizer without
adding special tokens; the prompt text is used as is, chat template included if wanted). Each
output line, in input order:

    {"logprobs": [per response token], "entropies": [per response token],
     "step_bounds": [[start, end), ... absolute positions; step 0 is the prompt],
     "fci": [per step, step 0 included; masked steps 0.0],
     "branch_points": [response-relative token offsets chosen by ATB with the default config]}

The whole input is checked before the model runs; a bad line stops the run with one message naming
the line. The output is written to a temporary file and renamed, so it is complete or absent.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from attnrl_jax.data.sources import DataError, read_json_lines
from attnrl_jax.models.config import DTYPES
from attnrl_jax.models.hf_io import CheckpointError, load_pretrained
from attnrl_jax.scoring.fci import AGGREGATIONS, POOLINGS, FciConfig
from attnrl_jax.scoring.forward import ScoredSequence, ScoringConfig, score_sequences
from attnrl_jax.scoring.selection import SelectionConfig, select_branch_points
from attnrl_jax.scoring.steps import SeparatorIds


class ScoreInputError(ValueError):
    """A problem with the command line's input: names the file and line."""


def _ids(value, name: str, vocab_size: int, where: str) -> list[int]:
    if not isinstance(value, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in value
    ):
        raise ScoreInputError(f"{where}: {name!r} must be a list of integer token ids")
    bad = [i for i in value if not 0 <= i < vocab_size]
    if bad:
        raise ScoreInputError(
            f"{where}: {name!r} has token ids outside the model's vocabulary [0, {vocab_size}): "
            f"{bad[:5]}"
        )
    return value


def read_input(
    path: Path, tokenizer, vocab_size: int, max_len: int | None = None
) -> tuple[list[list[int]], list[list[int]]]:
    """Prompt and response ids of every non-blank line of a JSON-lines file; each line's prompt +
    response must fit in max_len tokens (the model's position limit), as generate requires."""
    prompts, responses = [], []
    try:
        rows = read_json_lines(path)
    except DataError as e:
        raise ScoreInputError(str(e)) from None
    for number, row in rows:
        where = f"{path} line {number}"
        if "prompt_ids" in row or "response_ids" in row:
            if "prompt_ids" not in row or "response_ids" not in row:
                raise ScoreInputError(f"{where}: needs both 'prompt_ids' and 'response_ids'")
            prompt = _ids(row["prompt_ids"], "prompt_ids", vocab_size, where)
            response = _ids(row["response_ids"], "response_ids", vocab_size, where)
        elif "prompt" in row and "response" in row:
            if not isinstance(row["prompt"], str) or not isinstance(row["response"], str):
                raise ScoreInputError(f"{where}: 'prompt' and 'response' must be strings")
            prompt = tokenizer.encode(row["prompt"], add_special_tokens=False)
            response = tokenizer.encode(row["response"], add_special_tokens=False)
            _ids(prompt + response, "prompt/response", vocab_size, where)
        else:
            raise ScoreInputError(
                f"{where}: needs 'prompt_ids' and 'response_ids', or 'prompt' and 'response'"
            )
        if not prompt:
            raise ScoreInputError(f"{where}: the prompt is empty (needs at least one token)")
        if max_len is not None and len(prompt) + len(response) > max_len:
            raise ScoreInputError(
                f"{where}: prompt + response is {len(prompt) + len(response)} tokens; the "
                f"model's limit is max_position_embeddings={max_len}"
            )
        prompts.append(prompt)
        responses.append(response)
    if not prompts:
        raise ScoreInputError(f"{path} has no input lines")
    return prompts, responses


def output_row(scored: ScoredSequence, selection: SelectionConfig) -> dict:
    """The documented output object of one sequence."""
    return {
        "logprobs": scored.logprobs.tolist(),
        "entropies": scored.entropies.tolist(),
        "step_bounds": [list(b) for b in scored.layout.bounds],
        "fci": scored.fci.tolist(),
        "branch_points": select_branch_points(scored.layout, selection, fci=scored.fci),
    }


def write_atomic(path: Path, lines: list[str]) -> None:
    """Writes all lines to a temporary file beside `path`, then renames it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.writelines(line + "\n" for line in lines)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m attnrl_jax.score", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--model", required=True, type=Path, help="Hugging Face model directory")
    parser.add_argument("--input", required=True, type=Path, help="input JSON-lines file")
    parser.add_argument("--output", required=True, type=Path, help="output JSON-lines file")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument(
        "--tokenizer", type=Path, help="tokenizer directory (default: the model directory)"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--query-chunk", type=int, default=ScoringConfig.query_chunk)
    parser.add_argument("--logit-chunk", type=int, default=ScoringConfig.logit_chunk)
    parser.add_argument("--pooling", default=FciConfig.pooling, choices=POOLINGS)
    parser.add_argument("--aggregation", default=FciConfig.aggregation, choices=AGGREGATIONS)
    parser.add_argument("--delta", type=int, default=FciConfig.delta)
    parser.add_argument(
        "--layers", help="comma-separated layer indices that count for FCI (default: all)"
    )
    return parser.parse_args(argv)


def _load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise CheckpointError(
            f"no usable tokenizer in {path} (pass --tokenizer DIR): {e}"
        ) from None


def run(args: argparse.Namespace) -> int:
    """Scores args.input into args.output; returns the number of sequences scored."""
    try:
        layers = None if args.layers is None else tuple(int(i) for i in args.layers.split(","))
    except ValueError:
        raise ScoreInputError(
            f"--layers must be comma-separated integers, got {args.layers!r}"
        ) from None
    if args.batch_size < 1:
        raise ScoreInputError(f"--batch-size must be >= 1, got {args.batch_size}")
    for name in ("model", "input", "output", "tokenizer"):
        if "://" in str(getattr(args, name) or ""):
            raise ScoreInputError(f"--{name}: object-storage URLs are not supported yet")
    model = load_pretrained(args.model, dtype=DTYPES[args.dtype])
    try:
        config = ScoringConfig(
            fci=FciConfig(args.pooling, args.delta, args.aggregation, layers),
            query_chunk=args.query_chunk,
            logit_chunk=args.logit_chunk,
        )
        config.fci.layer_mask(model.config.num_layers)
    except ValueError as e:
        raise ScoreInputError(str(e)) from None
    tokenizer = _load_tokenizer(args.tokenizer or args.model)
    prompts, responses = read_input(
        args.input, tokenizer, model.config.vocab_size, model.config.max_position_embeddings
    )
    seps = SeparatorIds.from_tokenizer(tokenizer)
    scored = score_sequences(
        model.params(), model.config, config, prompts, responses, seps, args.batch_size
    )
    selection = SelectionConfig()
    write_atomic(args.output, [json.dumps(output_row(s, selection)) for s in scored])
    return len(scored)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        count = run(args)
    except (ScoreInputError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"scored {count} sequences -> {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
