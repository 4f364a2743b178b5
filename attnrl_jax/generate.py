"""Sample responses from a Hugging Face Qwen2 checkpoint.

    python -m attnrl_jax.generate --model DIR --input IN.jsonl --output OUT.jsonl [--n N]
        [--max_new_tokens M] [--temperature T] [--top_p P] [--top_k K] [--seed S]
        [--dtype float32|bfloat16] [--chat_template] [--batch_size B] [--mesh D,F,T]

Each non-blank input line is a JSON object with "prompt" (text, encoded with the model
directory's tokenizer) or "prompt_ids" (token ids), and optionally "prefix_ids" (response
tokens to continue from), and optionally "max_new_tokens" (this line's budget instead of
--max_new_tokens: a positive integer with prompt + prefix + budget within the model's position
limit). --chat_template wraps text prompts as one user message of the
tokenizer's chat template, generation prompt included. Other keys are ignored.

Each output line, ordered by input line then sample:

    {"index": 0-based input line number, "sample": 0..n-1, "token_ids": [generated tokens],
     "text": their decoding (without a final EOS token; null without a tokenizer),
     "logprobs": [per token, under the untruncated temperature-scaled distribution],
     "finish_reason": "eos" | "length"}

Generation stops at the model's EOS ids (sampling/eos.py: the tokenizer's, config.json's,
generation_config.json's, and with --chat_template the template's end-of-turn token
<|im_end|> when the vocabulary has it), at --max_new_tokens, or at the model's position limit.
Sample s of line i draws from the random stream (seed, i, s), so a line's samples do not depend
on the other lines. The whole input is checked before the model
runs; a bad line stops the run with a message naming it. The output is written to a temporary
file and renamed when complete, so it is either whole or absent.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from attnrl_jax import storage
from attnrl_jax.data.sources import DataError, read_json_lines
from attnrl_jax.evaluate import load_engine
from attnrl_jax.models.config import DTYPES
from attnrl_jax.models.hf_io import CheckpointError, read_config
from attnrl_jax.models.sharding import make_mesh
from attnrl_jax.sampling import Buckets, Request, SamplerConfig, SamplingOptions
from attnrl_jax.sampling.eos import eos_ids
from attnrl_jax.sampling.requests import check_request


class InputError(ValueError):
    """A problem with the command line or its input file; names the line."""


def _ids(value, name: str, where: str) -> list[int]:
    if not isinstance(value, list) or not all(
        isinstance(t, int) and not isinstance(t, bool) for t in value
    ):
        raise InputError(f"{where}: {name!r} must be a list of integer token ids")
    return value


def read_requests(path: Path, tokenizer, chat_template: bool, n: int) -> list[Request]:
    """One Request per non-blank line; Request.index is the 0-based line number."""
    try:
        rows = read_json_lines(path)
    except DataError as e:
        raise InputError(str(e)) from None
    requests = []
    for line_number, row in rows:
        number = line_number - 1
        where = f"{path} line {line_number}"
        if ("prompt" in row) == ("prompt_ids" in row):
            raise InputError(f"{where}: needs exactly one of 'prompt' (text) and 'prompt_ids'")
        if "prompt" in row:
            prompt = _encode(row["prompt"], tokenizer, chat_template, where)
        else:
            prompt = _ids(row["prompt_ids"], "prompt_ids", where)
        prefix = _ids(row.get("prefix_ids", []), "prefix_ids", where)
        budget = row.get("max_new_tokens")
        if budget is not None and (
            not isinstance(budget, int) or isinstance(budget, bool) or budget < 1
        ):
            raise InputError(
                f"{where}: 'max_new_tokens' must be a positive integer, got {budget!r}"
            )
        requests.append(Request(prompt, prefix, n=n, max_new_tokens=budget, index=number))
    if not requests:
        raise InputError(f"{path} has no input lines")
    return requests


def _encode(text, tokenizer, chat_template: bool, where: str) -> list[int]:
    if not isinstance(text, str):
        raise InputError(f"{where}: 'prompt' must be a string")
    if tokenizer is None:
        raise InputError(f"{where}: a text prompt needs a tokenizer, and the model has none")
    if chat_template:
        messages = [{"role": "user", "content": text}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer.encode(text, add_special_tokens=False)


@contextlib.contextmanager
def atomic_output(path: Path):
    """A text file that appears at `path` only if the block completes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_tokenizer(path: Path):
    if not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"the tokenizer in {path} cannot be loaded: {e}") from None


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m attnrl_jax.generate", description=__doc__.split("\n\n")[0]
    )
    add = parser.add_argument
    add("--model", required=True, type=storage.local_arg, help="Hugging Face model directory")
    add("--input", required=True, type=storage.local_arg, help="input JSON-lines file")
    add("--output", required=True, type=storage.local_arg, help="output JSON-lines file")
    add("--n", type=int, default=1, help="samples per input line")
    add("--max_new_tokens", "--max-new-tokens", type=int, default=256)
    add("--temperature", type=float, default=1.0, help="0: greedy")
    add("--top_p", "--top-p", type=float, default=1.0, help="1: off")
    add("--top_k", "--top-k", type=int, default=0, help="0: off")
    add("--seed", type=int, default=0)
    add("--dtype", default="float32", choices=sorted(DTYPES))
    add("--chat_template", "--chat-template", action="store_true")
    add("--batch_size", "--batch-size", type=int, default=64, help="most rows per device batch")
    add("--mesh", default="1,1,1", help="data,fsdp,tensor device counts (one may be -1)")
    return parser.parse_args(argv)


def _sampler_config(args: argparse.Namespace) -> SamplerConfig:
    try:
        shape = [int(s) for s in args.mesh.split(",")]
        mesh = None if shape == [1, 1, 1] else make_mesh(*shape)
    except (TypeError, ValueError) as e:
        raise InputError(f"--mesh {args.mesh!r}: {e}") from None
    if args.batch_size < 1:
        raise InputError(f"--batch_size must be >= 1, got {args.batch_size}")
    rows = tuple(
        sorted({min(1 << i, args.batch_size) for i in range(args.batch_size.bit_length())})
    )
    return SamplerConfig(Buckets(rows=rows), mesh=mesh)


def run(args: argparse.Namespace) -> int:
    """Samples args.input into args.output; returns the number of samples written."""
    config = _sampler_config(args)
    if args.n < 1:
        raise InputError(f"--n must be >= 1, got {args.n}")
    # config.json alone for the checks: the weights load once the input is known to be good
    model_cfg = read_config(args.model)
    tokenizer = _load_tokenizer(args.model)
    options = SamplingOptions(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        eos_ids=eos_ids(tokenizer, args.model, model_cfg.eos_token_id, chat=args.chat_template),
    )
    try:
        options.check(config)
    except ValueError as e:
        raise InputError(str(e)) from None
    requests = read_requests(args.input, tokenizer, args.chat_template, args.n)
    limit = model_cfg.max_position_embeddings
    for request in requests:
        where = f"{args.input} line {request.index + 1}"
        try:
            context = check_request(request, model_cfg)
        except ValueError as e:
            raise InputError(f"{where}: {e}") from None
        if request.max_new_tokens is not None and len(context) + request.max_new_tokens > limit:
            raise InputError(
                f"{where}: 'max_new_tokens' {request.max_new_tokens} after a context of "
                f"{len(context)} tokens passes the model's position limit of {limit}"
            )

    # the engine holds the only copy of the weights (on a mesh: its decode layout's)
    engine = load_engine(args.model, args.dtype, config)
    bar = tqdm(total=len(requests) * args.n, unit="sample", file=sys.stderr, dynamic_ncols=True)
    with bar:
        samples = engine.generate(requests, options, bar.update)
    engine.close()
    with atomic_output(args.output) as f:
        for s in samples:
            ids = s.token_ids.tolist()
            text_ids = ids[:-1] if s.finish_reason == "eos" else ids
            row = {
                "index": requests[s.request].index,
                "sample": s.sample,
                "token_ids": ids,
                "text": None if tokenizer is None else tokenizer.decode(text_ids),
                "logprobs": s.logprobs.tolist(),
                "finish_reason": s.finish_reason,
            }
            f.write(json.dumps(row) + "\n")
    return len(samples)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        count = run(args)
    except (InputError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        print(f"{args.output} was not written", file=sys.stderr)
        return 2
    print(f"wrote {count} samples to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
