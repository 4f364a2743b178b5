"""Step segmentation of (prompt, response) token ids (ALGORITHM.md section 1).

A response is cut right after every separator token: ids whose decoded text contains "\\n\\n"
(merged tokens such as ".\\n\\n" count); a response without any uses ids containing "\\n"; a
response without those either makes every token a step. The fallback is chosen per response. Step 0
is the whole prompt, response steps are 1..S, and tokens after the last separator form a final step.

Segmentation runs on the host over token ids (no text round trip); the result is a `StepLayout`
(step ends as an int32 array), `StepLayouts` keeps a batch of them as flat arrays, and
`pad_step_ids` turns a batch of layouts into the padded int32 arrays the jitted scorer consumes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

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

    @cached_property
    def _tables(self) -> tuple[np.ndarray, np.ndarray]:
        """bool lookup tables of the double-newline and newline ids, one slot past the largest
        id (ids outside a table read its last slot: no separator)."""
        size = max((*self.double_newline, *self.newline), default=-1) + 2
        tables = np.zeros((2, size), bool)
        tables[0, list(self.double_newline)] = True
        tables[1, list(self.newline)] = True
        return tables[0], tables[1]

    @cached_property
    def _codes(self) -> np.ndarray:
        """uint8 table: bit 1 for double-newline ids, bit 2 for newline ids; one slot past the
        largest id, which ids outside the table read (0: no separator)."""
        double, single = self._tables
        return (double.astype(np.uint8) | (single.astype(np.uint8) << 1)).astype(np.uint8)

    def separator_codes(self, ids: np.ndarray) -> np.ndarray:
        """uint8 shaped like int `ids`: bit 1 "\\n\\n", bit 2 "\\n" (one gather; negative ids
        and ids past the table read 0)."""
        codes = self._codes
        ids = np.asarray(ids)
        if ids.dtype.kind == "i":  # negatives become huge, then clip to the last slot
            ids = ids.view(np.dtype(f"u{ids.dtype.itemsize}"))
        if ids.dtype.itemsize > 4:
            ids = np.minimum(ids, len(codes) - 1).view(np.int64)
        return np.take(codes, ids, mode="clip")

    def is_separator(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(contains "\\n\\n", contains "\\n"): two bool arrays shaped like int `ids`."""
        double, single = self._tables
        outside = len(double) - 1
        at = np.where((ids >= 0) & (ids < outside), ids, outside)
        return double[at], single[at]


class StepLayout:
    """Steps of one prompt + response sequence, in absolute token positions (immutable).

    bounds[k] = (start, end), half-open; bounds[0] = (0, prompt_len); response steps are contiguous
    and cover [prompt_len, prompt_len + response_len). think_end_step is the step holding the last
    `</think>` (for a multi-token `</think>`, the step holding its final token), or None.

    Stored as `ends`, int32[S]: the absolute end of each response step (the starts follow from
    contiguity), so batches concatenate into `StepLayouts` without a Python loop over steps;
    `bounds` is built from them on first use. Build with `StepLayout(prompt_len, bounds,
    think_end_step)` or `StepLayout.from_ends`.
    """

    __slots__ = ("prompt_len", "ends", "think_end_step", "_bounds")

    def __init__(
        self, prompt_len: int, bounds: Sequence[tuple[int, int]], think_end_step: int | None
    ):
        flat = np.asarray(bounds, np.int64).reshape(-1, 2)
        if len(flat) == 0 or flat[0, 0] != 0 or flat[0, 1] != prompt_len:
            raise ValueError(f"bounds must start with (0, prompt_len={prompt_len}), got {bounds}")
        if (flat[1:, 0] != flat[:-1, 1]).any():
            raise ValueError(f"step bounds must be contiguous, got {bounds}")
        self._init(prompt_len, flat[1:, 1], think_end_step)

    @classmethod
    def from_ends(cls, prompt_len: int, ends: np.ndarray, think_end_step: int | None) -> StepLayout:
        """A layout from the absolute ends of its response steps (int[S], increasing, the
        first > prompt_len): no tuple of bounds is built."""
        out = cls.__new__(cls)
        out._init(prompt_len, ends, think_end_step)
        return out

    def _init(self, prompt_len, ends, think_end_step):
        ends = np.array(ends, np.int32).reshape(-1)
        ends.flags.writeable = False
        set_ = object.__setattr__
        set_(self, "prompt_len", int(prompt_len))
        set_(self, "ends", ends)
        set_(self, "think_end_step", None if think_end_step is None else int(think_end_step))
        set_(self, "_bounds", None)

    def __setattr__(self, name, value):
        raise AttributeError(f"StepLayout is immutable (cannot set {name})")

    def __reduce__(self):  # pickle / copy through from_ends (__setattr__ refuses)
        return StepLayout.from_ends, (self.prompt_len, self.ends, self.think_end_step)

    @property
    def bounds(self) -> tuple[tuple[int, int], ...]:
        if self._bounds is None:
            cuts = [self.prompt_len, *self.ends.tolist()]
            object.__setattr__(
                self, "_bounds", ((0, self.prompt_len), *zip(cuts, cuts[1:], strict=False))
            )
        return self._bounds

    @property
    def num_steps(self) -> int:
        """S, the number of response steps (step 0, the prompt, not counted)."""
        return len(self.ends)

    @property
    def total_len(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else self.prompt_len

    @property
    def response_len(self) -> int:
        return self.total_len - self.prompt_len

    def __eq__(self, other) -> bool:
        if not isinstance(other, StepLayout):
            return NotImplemented
        return (self.prompt_len, self.think_end_step) == (
            other.prompt_len,
            other.think_end_step,
        ) and np.array_equal(self.ends, other.ends)

    def __hash__(self) -> int:
        return hash((self.prompt_len, self.think_end_step, self.ends.tobytes()))

    def __repr__(self) -> str:
        return (
            f"StepLayout(prompt_len={self.prompt_len}, bounds={self.bounds}, "
            f"think_end_step={self.think_end_step})"
        )


@dataclass(frozen=True, eq=False)
class StepLayouts:
    """B step layouts as flat numpy arrays (what padding consumes without a loop per response).

    prompt_len, num_steps: int32[B]; think_end_step: int32[B], -1 = none; ends: int32[sum S], the
    absolute step ends of response 0, then response 1, ...; first: int64[B + 1], response i's
    ends are ends[first[i]:first[i + 1]]. Also a Sequence of StepLayout (len, index, iterate; a
    slice or `take` gives a StepLayouts); equal to another StepLayouts with the same layouts.
    """

    prompt_len: np.ndarray
    num_steps: np.ndarray
    think_end_step: np.ndarray
    ends: np.ndarray
    first: np.ndarray

    @classmethod
    def stack(cls, layouts: Sequence[StepLayout]) -> StepLayouts:
        """One concatenation of the layouts' `ends` arrays (a StepLayouts is returned as is)."""
        if isinstance(layouts, StepLayouts):
            return layouts
        layouts = list(layouts)
        num_steps = np.fromiter((len(lay.ends) for lay in layouts), np.int32, len(layouts))
        first = np.zeros(len(layouts) + 1, np.int64)
        np.cumsum(num_steps, out=first[1:])
        return cls(
            prompt_len=np.fromiter((lay.prompt_len for lay in layouts), np.int32, len(layouts)),
            num_steps=num_steps,
            think_end_step=np.fromiter(
                (-1 if lay.think_end_step is None else lay.think_end_step for lay in layouts),
                np.int32,
                len(layouts),
            ),
            ends=np.concatenate([lay.ends for lay in layouts] or [np.zeros(0, np.int32)]),
            first=first,
        )

    def __len__(self) -> int:
        return len(self.num_steps)

    def __eq__(self, other) -> bool:
        if not isinstance(other, StepLayouts):
            return NotImplemented
        return all(
            np.array_equal(getattr(self, name), getattr(other, name))
            for name in ("prompt_len", "num_steps", "think_end_step", "ends")
        )

    __hash__ = None  # mutable numpy fields: equality by value, not hashable

    def __getitem__(self, i: int | slice) -> StepLayout | StepLayouts:
        if isinstance(i, slice):
            return self.take(np.arange(len(self))[i])
        if not -len(self) <= i < len(self):
            raise IndexError(f"layout {i} out of range for {len(self)} layouts")
        i %= len(self)
        think = int(self.think_end_step[i])
        ends = self.ends[self.first[i] : self.first[i + 1]]
        return StepLayout.from_ends(int(self.prompt_len[i]), ends, None if think < 0 else think)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def take(self, rows: Sequence[int] | np.ndarray) -> StepLayouts:
        """The layouts of `rows` (int[K], any order) as a new StepLayouts, by index arrays."""
        rows = np.asarray(rows, np.int64).reshape(-1)
        counts = self.num_steps[rows].astype(np.int64)
        first = np.zeros(len(rows) + 1, np.int64)
        np.cumsum(counts, out=first[1:])
        at = np.repeat(self.first[:-1][rows] - first[:-1], counts) + np.arange(first[-1])
        return StepLayouts(
            prompt_len=self.prompt_len[rows],
            num_steps=self.num_steps[rows],
            think_end_step=self.think_end_step[rows],
            ends=self.ends[at],
            first=first,
        )

    @property
    def step_sizes(self) -> np.ndarray:
        """int32[sum S]: tokens of every response step, in the order of `ends`."""
        starts = np.empty_like(self.ends)
        starts[1:] = self.ends[:-1]
        has = self.num_steps > 0
        starts[self.first[:-1][has]] = self.prompt_len[has]  # a response's first step
        return self.ends - starts

    @property
    def total_len(self) -> np.ndarray:
        """int32[B]: prompt + response length of each sequence."""
        last = self.ends[np.maximum(self.first[1:] - 1, 0)] if len(self.ends) else 0
        return np.where(self.num_steps > 0, last, self.prompt_len).astype(np.int32)

    @property
    def response_len(self) -> np.ndarray:
        """int32[B]."""
        return self.total_len - self.prompt_len

    def padded_bounds(self, rows: int, columns: int) -> tuple[np.ndarray, np.ndarray]:
        """(starts, ends) int32[rows, columns]: absolute [start, end) of response step c + 1 in
        column c of row i (zeros elsewhere): the ends by one boolean-mask assignment (row-major
        order is the flat order), the starts shifted from them (rows >= B, columns >= every
        S)."""
        if rows < len(self) or columns < int(self.num_steps.max(initial=0)):
            raise ValueError(
                f"padded_bounds({rows}, {columns}) cannot hold {len(self)} layouts of up to "
                f"{int(self.num_steps.max(initial=0))} steps"
            )
        b = len(self)
        mask = np.arange(columns) < self.num_steps[:, None]
        ends = np.zeros((rows, columns), np.int32)
        ends[:b][mask] = self.ends
        # a step starts where the one before it ends; the first where the prompt ends
        starts = np.zeros((rows, columns), np.int32)
        starts[:b, 1:] = ends[:b, :-1]
        steps = self.num_steps.astype(np.int64)
        short = np.flatnonzero(steps < columns)
        starts[short, steps[short]] = 0  # the column after a row's last step
        if columns:
            starts[:b, 0] = np.where(steps > 0, self.prompt_len, 0)
        return starts, ends


def segment_steps(
    prompt_len: int, response_ids: Sequence[int] | np.ndarray, seps: SeparatorIds
) -> StepLayout:
    """Cut `response_ids` (int[R], no padding) into steps after separator tokens.

    An empty response gives S = 0 (only step 0). One response of `segment_batch`.
    """
    if prompt_len < 0:
        raise ValueError(f"prompt_len must be >= 0, got {prompt_len}")
    return segment_batch([prompt_len], [response_ids], seps)[0]


def segment_batch(
    prompt_lens: Sequence[int] | np.ndarray,
    responses: Sequence[Sequence[int] | np.ndarray],
    seps: SeparatorIds,
) -> StepLayouts:
    """`segment_steps` of B responses at once, straight into flat StepLayouts: the responses are
    concatenated and cut with array operations (no Python loop per response or per step).

    The separator set is chosen per response (double newline, else newline, else every token);
    a response's last token always ends a step; `</think>` matches never span two responses.
    Per token there is one table lookup and one scan for separators (and one comparison for the
    first `</think>` id); everything after works on the separator positions only.
    """
    b = len(responses)
    prompt = np.asarray(prompt_lens, np.int64).reshape(-1)
    if len(prompt) != b:
        raise ValueError(f"{len(prompt)} prompt lengths for {b} responses")
    if (prompt < 0).any():
        raise ValueError(f"prompt_len must be >= 0, got {int(prompt.min())}")
    lengths = np.fromiter(map(len, responses), np.int64, b)
    token_at = np.zeros(b + 1, np.int64)
    np.cumsum(lengths, out=token_at[1:])
    ids = _concat_ids(responses)
    code = seps.separator_codes(ids)  # bit 1: "\n\n", bit 2: "\n"
    at = np.flatnonzero(code)
    at_code = code[at]
    double = at[(at_code & 1) > 0]
    has_double = np.diff(np.searchsorted(double, token_at)) > 0
    has_single = has_double  # when every separator found is a double newline
    if len(double) < len(at):
        single = at[(at_code & 2) > 0]
        has_single = np.diff(np.searchsorted(single, token_at)) > 0
    if (has_double | ~has_single).all():  # no response falls back to single newlines
        ends = double
    else:
        owner = np.repeat(np.arange(b), np.diff(np.searchsorted(at, token_at)))
        wanted = np.where(has_double, 1, np.where(has_single, 2, 0)).astype(np.uint8)
        ends = at[(at_code & wanted[owner]) > 0]  # the chosen separators, in order
    # plus each response's last token (when not a chosen separator), and every token of a
    # response without any separator
    nonempty = lengths > 0
    every = nonempty & ~has_double & ~has_single
    last = token_at[1:] - 1
    cut = has_double | has_single
    found = np.searchsorted(ends, last)
    listed = found < len(ends)
    listed[listed] = ends[found[listed]] == last[listed]
    extra_last = np.flatnonzero(cut & nonempty & ~listed)
    all_rows = np.flatnonzero(every)
    run = np.repeat(token_at[all_rows] - _offsets(lengths[all_rows])[:-1], lengths[all_rows])
    extra = np.sort(np.concatenate([last[extra_last], run + np.arange(len(run))]))
    ends = np.insert(ends, np.searchsorted(ends, extra), extra)
    num_steps = np.diff(np.searchsorted(ends, token_at)).astype(np.int32)
    first = np.zeros(b + 1, np.int64)
    np.cumsum(num_steps, out=first[1:])
    think = np.full(b, -1, np.int64)
    m = len(seps.think_end)
    if m and len(ids) >= m:
        pattern = np.asarray(seps.think_end)
        hits = np.flatnonzero(ids[: len(ids) - m + 1] == pattern[0])
        for j in range(1, m):  # the pattern's length, not the data's
            hits = hits[ids[hits + j] == pattern[j]]
        hit_owner = np.searchsorted(token_at, hits, side="right") - 1
        hits = hits[hit_owner == np.searchsorted(token_at, hits + m - 1, side="right") - 1]
        final = np.full(b, -1, np.int64)
        np.maximum.at(final, np.searchsorted(token_at, hits, side="right") - 1, hits + m - 1)
        has = final >= 0
        # the step holding the match's final token: 1 + step ends before it in its response
        think[has] = 1 + np.searchsorted(ends, final[has]) - first[:-1][has]
    return StepLayouts(
        prompt_len=prompt.astype(np.int32),
        num_steps=num_steps,
        think_end_step=think.astype(np.int32),
        ends=(np.repeat(prompt - token_at[:-1] + 1, num_steps) + ends).astype(np.int32),
        first=first,
    )


def _concat_ids(responses) -> np.ndarray:
    """The responses' ids as one integer array (their own dtype when they share one: the
    sampler's int32 rows are not widened)."""
    arrays = [np.asarray(r) for r in responses]
    if arrays and all(a.dtype == arrays[0].dtype for a in arrays) and arrays[0].dtype.kind in "iu":
        return np.concatenate(arrays)
    return np.concatenate([np.zeros(0, np.int64), *arrays], dtype=np.int64, casting="unsafe")


def _offsets(counts: np.ndarray) -> np.ndarray:
    out = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=out[1:])
    return out


def token_step_ids(layout: StepLayout, total_len: int) -> np.ndarray:
    """int32[total_len]: the step index of each position, -1 past the sequence (padding)."""
    if total_len < layout.total_len:
        raise ValueError(f"total_len {total_len} < sequence length {layout.total_len}")
    out = np.full(total_len, -1, dtype=np.int32)
    sizes = np.diff(layout.ends, prepend=layout.prompt_len)
    out[: layout.total_len] = np.repeat(
        np.arange(len(sizes) + 1, dtype=np.int32), [layout.prompt_len, *sizes]
    )
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
    layouts: Sequence[StepLayout] | StepLayouts,
    total_len: int | None = None,
    max_steps: int | None = None,
) -> StepBatch:
    """Stack B layouts into right-padded arrays of length T = total_len (default: the longest).

    max_steps defaults to `step_bucket` of the largest S + 1; an explicit value must fit every row.
    The step ids are one np.repeat of the flat layouts' runs (the prompt, then each step) into
    the rows' valid positions: no Python loop per row.
    """
    flat = StepLayouts.stack(layouts)
    b = len(flat)
    if not b:
        raise ValueError("pad_step_ids needs at least one layout")
    lengths = flat.total_len
    longest = int(lengths.max())
    total_len = longest if total_len is None else total_len
    if total_len < longest:
        raise ValueError(f"total_len {total_len} < sequence length {longest}")
    needed = int(flat.num_steps.max()) + 1
    max_steps = step_bucket(needed) if max_steps is None else max_steps
    if max_steps < needed:
        raise ValueError(f"max_steps {max_steps} < {needed} step slots needed")
    # runs in row-major order: row i's prompt (step 0), then its steps 1..S_i
    prompt_at = flat.first[:-1] + np.arange(b)
    is_step = np.ones(b + len(flat.ends), bool)
    is_step[prompt_at] = False
    run_len = np.zeros(len(is_step), np.int64)
    run_len[prompt_at] = flat.prompt_len
    run_len[is_step] = flat.step_sizes
    step = np.zeros(len(is_step), np.int32)
    step[is_step] = np.arange(len(flat.ends)) - np.repeat(flat.first[:-1], flat.num_steps) + 1
    step_ids = np.full((b, total_len), -1, np.int32)
    step_ids[np.arange(total_len) < lengths[:, None]] = np.repeat(step, run_len)
    return StepBatch(
        step_ids=step_ids,
        num_steps=flat.num_steps.astype(np.int32),
        think_end_step=flat.think_end_step.astype(np.int32),
        max_steps=max_steps,
    )
