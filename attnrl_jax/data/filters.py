"""Filters on training problems, each returning what it dropped: evaluation overlap and length.

Overlap is found on a normalised problem text, so copies that differ only in Unicode form, case,
spacing or a trailing copy of the prompt instruction still count as the same problem (the shared
DAPO file repeats some AMC23, MATH-500 and OlympiadBench problems: see ../shared/data/SOURCES.md).
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence

from attnrl_jax.data.prompts import INSTRUCTION
from attnrl_jax.data.records import Problem

_SPACE = re.compile(r"\s+")
_INSTRUCTION_KEY = _SPACE.sub("", INSTRUCTION.casefold())


def normalize_problem(text: str) -> str:
    """The dedup key: NFKC, case-folded, whitespace removed, trailing instruction removed.

    Removing (not collapsing) whitespace also matches copies that differ in LaTeX spacing
    ("x^2 + 1" and "x^2+1"); two distinct problems differing only in spacing do not occur.
    """
    key = _SPACE.sub("", unicodedata.normalize("NFKC", text).casefold())
    return key.removesuffix(_INSTRUCTION_KEY)


@dataclasses.dataclass(frozen=True)
class OverlapReport:
    """Training problems dropped because an evaluation set contains them.

    per_eval: eval set name -> training rows dropped for matching it (a row matching two sets
    counts in both); dropped: rows dropped in all; where: their locations.
    """

    per_eval: dict[str, int]
    dropped: int
    where: tuple[str, ...]

    def summary(self) -> str:
        if not self.per_eval:
            return "eval overlap: not checked, no evaluation sets given"
        parts = ", ".join(f"{name} {count}" for name, count in self.per_eval.items())
        return f"eval overlap: {self.dropped} training problems dropped ({parts})"


def drop_eval_overlap(
    train: Sequence[Problem], eval_sets: Mapping[str, Iterable[Problem]]
) -> tuple[list[Problem], OverlapReport]:
    """Training problems whose normalised text is in none of the evaluation sets."""
    keys = {
        name: {normalize_problem(p.problem) for p in problems}
        for name, problems in eval_sets.items()
    }
    per_eval = dict.fromkeys(keys, 0)
    kept, where = [], []
    for problem in train:
        key = normalize_problem(problem.problem)
        hits = [name for name, eval_keys in keys.items() if key in eval_keys]
        for name in hits:
            per_eval[name] += 1
        if hits:
            where.append(problem.where)
        else:
            kept.append(problem)
    return kept, OverlapReport(per_eval, len(where), tuple(where))


@dataclasses.dataclass(frozen=True)
class LengthReport:
    """Prompts kept and dropped by the prompt-length limit, and the longest prompt seen."""

    max_prompt_len: int
    kept: int
    dropped: int
    longest: int

    def summary(self) -> str:
        return (
            f"prompt length <= {self.max_prompt_len}: {self.kept} kept, {self.dropped} dropped "
            f"(longest {self.longest} tokens)"
        )


def length_mask(lengths: Sequence[int], max_prompt_len: int) -> tuple[list[bool], LengthReport]:
    """Which prompts fit in `max_prompt_len` tokens, and the counts."""
    if max_prompt_len < 1:
        raise ValueError(f"max_prompt_len must be >= 1, got {max_prompt_len}")
    keep = [n <= max_prompt_len for n in lengths]
    kept = sum(keep)
    report = LengthReport(max_prompt_len, kept, len(keep) - kept, max(lengths, default=0))
    return keep, report
