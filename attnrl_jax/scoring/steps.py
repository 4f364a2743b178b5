"""Step segmentation of (prompt, response) token ids (ALGORITHM.md section 1).

A response is cut right after every separator token: ids whose decoded text contains "\\n\\n"
(merged tokens such as ".\\n\\n" count); a response without any uses ids containing "\\n"; a
response without those either makes every token a step. The fallback is chosen per response. Step 0
is the whole prompt, response steps are 1..S, and tokens after the last separator form a final step.

Segmentation runs on the host over token ids (no text round trip); the result is a `StepLayout`, and
`pad_step_ids` turns a batch of layouts into the padded int32 arrays the jitted scorer consumes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from attnrl_jax.buckets import power_of_two

THINK_END = "</think>"


@dataclass(frozen=True)
class SeparatorIds:
    """Separator and `</think>` token ids of one tokenizer; build once with `from_tokenizer`.

    Hashable (tuples), so it can be a static argument of a jitted function.
    """

    double_newline: tuple[int, ...]  # ids whose text contains "\n\n"
    newline: tuple[int, ...]  # ids whose text contains "\n" (a superset of double_newline)
    think_end: tuple[int, ...]  # the token sequence of "</think>"; () when the tokenizer lacks it

    @classmethod
    def from_tokenizer(cls, tokenizer, think_end: str = THINK_END) -> SeparatorIds:
        """Decode every id of a Hugging Face tokenizer (added tokens included) once.

        `</think>` is the tokenizer's encoding of the text alone: one id when it is a special token,
        else a multi-token sequence matched verbatim in responses.
        """
        texts = tokenizer.batch_decode(
            [[i] for i in range(len(tokenizer))],
            skip_special_tokens=False,
            clean_up_tokenization_spaces=False,
        )
        return cls(
            double_newline=tuple(i for i, t in enumerate(texts) if "\n\n" in t),
            newline=tuple(i for i, t in enumerate(texts) if "\n" in t),
            think_end=tuple(tokenizer.encode(think_end, add_special_tokens=False)),
        )


@dataclass(frozen=True)
class StepLayout:
    """Steps of one prompt + response sequence, in absolute token positions.

    bounds[k] = (start, end), half-open; bounds[0] = (0, prompt_len); response steps are contiguous
    and cover [prompt_len, prompt_len + response_len). think_end_step is the step holding the last
    `</think>` (for a multi-token `</think>`, the step holding its final token), or None.
    """

    prompt_len: int
    bounds: tuple[tuple[int, int], ...]
    think_end_step: int | None

    @property
    def num_steps(self) -> int:
        """S, the number of response steps (step 0, the prompt, not counted)."""
        return len(self.bounds) - 1

    @property
    def total_len(self) -> int:
        return self.bounds[-1][1]

    @property
    def response_len(self) -> int:
        return self.total_len - self.prompt_len


def _last_match_end(ids: np.ndarray, pattern: tuple[int, ...]) -> int | None:
    """Index of the final token of the last occurrence of `pattern` in `ids`, or None."""
    n = len(pattern)
    if n == 0 or len(ids) < n:
        return None
    windows = np.lib.stride_tricks.sliding_window_view(ids, n)
    hits = np.flatnonzero((windows == np.asarray(pattern)).all(axis=1))
    return int(hits[-1]) + n - 1 if hits.size else None


def segment_steps(
    prompt_len: int, response_ids: Sequence[int] | np.ndarray, seps: SeparatorIds
) -> StepLayout:
    """Cut `response_ids` (int[R], no padding) into steps after separator tokens.

    An empty response gives S = 0 (only step 0).
    """
    if prompt_len < 0:
        raise ValueError(f"prompt_len must be >= 0, got {prompt_len}")
    ids = np.asarray(response_ids, dtype=np.int64).reshape(-1)
    is_sep = np.isin(ids, seps.double_newline)
    if not is_sep.any():
        is_sep = np.isin(ids, seps.newline)
    if not is_sep.any():
        is_sep = np.ones_like(is_sep)
    ends = (np.flatnonzero(is_sep) + 1).tolist()
    if ids.size and (not ends or ends[-1] != ids.size):
        ends.append(ids.size)
    bounds = ((0, prompt_len),) + tuple(
        (prompt_len + s, prompt_len + e) for s, e in zip([0, *ends], ends, strict=False)
    )
    think_tok = _last_match_end(ids, seps.think_end)
    think_step = None
    if think_tok is not None:
        think_step = 1 + int(np.searchsorted(np.asarray(ends), think_tok, side="right"))
    return StepLayout(prompt_len=prompt_len, bounds=bounds, think_end_step=think_step)


def token_step_ids(layout: StepLayout, total_len: int) -> np.ndarray:
    """int32[total_len]: the step index of each position, -1 past the sequence (padding)."""
    if total_len < layout.total_len:
        raise ValueError(f"total_len {total_len} < sequence length {layout.total_len}")
    out = np.full(total_len, -1, dtype=np.int32)
    for k, (start, end) in enumerate(layout.bounds):
        out[start:end] = k
    return out


def step_bucket(num_step_slots: int, minimum: int = 8) -> int:
    """Smallest power of two >= num_step_slots (and >= minimum): few distinct compiled shapes."""
    return power_of_two(num_step_slots, minimum)


@dataclass(frozen=True)
class StepBatch:
    """Padded step arrays of B sequences for the jitted scorer.

    step_ids: int32[B, T], step index per position, -1 for padding.
    num_steps: int32[B], S per row (response steps; the row's valid slots are 0..S).
    think_end_step: int32[B], -1 when the response has no `</think>`.
    max_steps: S_max, the static step-slot bucket; per-step outputs are [B, S_max], slot 0 = prompt.
    """

    step_ids: np.ndarray
    num_steps: np.ndarray
    think_end_step: np.ndarray
    max_steps: int


def pad_step_ids(
    layouts: Sequence[StepLayout], total_len: int | None = None, max_steps: int | None = None
) -> StepBatch:
    """Stack B layouts into right-padded arrays of length T = total_len (default: the longest).

    max_steps defaults to `step_bucket` of the largest S + 1; an explicit value must fit every row.
    """
    if not layouts:
        raise ValueError("pad_step_ids needs at least one layout")
    total_len = max(lay.total_len for lay in layouts) if total_len is None else total_len
    needed = max(lay.num_steps + 1 for lay in layouts)
    max_steps = step_bucket(needed) if max_steps is None else max_steps
    if max_steps < needed:
        raise ValueError(f"max_steps {max_steps} < {needed} step slots needed")
    return StepBatch(
        step_ids=np.stack([token_step_ids(lay, total_len) for lay in layouts]),
        num_steps=np.array([lay.num_steps for lay in layouts], dtype=np.int32),
        think_end_step=np.array(
            [-1 if lay.think_end_step is None else lay.think_end_step for lay in layouts],
            dtype=np.int32,
        ),
        max_steps=max_steps,
    )
