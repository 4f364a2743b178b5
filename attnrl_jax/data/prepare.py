"""Training prompts from data files: load, drop evaluation overlap, encode, drop long prompts.

Everything is done once, up front, on every process (the same files give the same list), so
the counts are known before training starts and the stream (pipeline.py) can shard by position.
Encoding the 40k DeepScaleR-size problems with a fast tokenizer takes seconds.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence

from attnrl_jax.data.filters import LengthReport, OverlapReport, drop_eval_overlap, length_mask
from attnrl_jax.data.pipeline import Prompt
from attnrl_jax.data.prompts import INSTRUCTION, encode_prompts
from attnrl_jax.data.records import LoadReport, OnError, SourceSpec, load_many, load_problems
from attnrl_jax.data.sources import DataError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DataReport:
    """What preparing the training prompts kept and dropped, stage by stage."""

    sources: tuple[LoadReport, ...]
    overlap: OverlapReport
    length: LengthReport

    def lines(self) -> list[str]:
        return [r.summary() for r in self.sources] + [
            self.overlap.summary(),
            self.length.summary(),
        ]


def prepare_prompts(
    train: Sequence[SourceSpec],
    tokenizer,
    *,
    max_prompt_len: int,
    eval_sets: Mapping[str, SourceSpec] | None = None,
    on_error: OnError = "raise",
    instruction: str = INSTRUCTION,
) -> tuple[list[Prompt], DataReport]:
    """Encoded training prompts in source order, without evaluation problems or long prompts.

    eval_sets: benchmark name -> its file; training problems found in any are dropped.
    """
    problems, reports = load_many(train, on_error)
    evals = {name: load_problems(spec, on_error)[0] for name, spec in (eval_sets or {}).items()}
    problems, overlap = drop_eval_overlap(problems, evals)
    ids = encode_prompts(tokenizer, [p.problem for p in problems], instruction)
    keep, length = length_mask([len(x) for x in ids], max_prompt_len)
    prompts = [Prompt(p, tuple(x)) for p, x, k in zip(problems, ids, keep, strict=True) if k]
    report = DataReport(tuple(reports), overlap, length)
    for line in report.lines():
        log.info(line)
    if not prompts:
        raise DataError("no training prompts left: " + "; ".join(report.lines()))
    return prompts, report
