"""Rows of different lengths as one flat array plus offsets (`Ragged`), and the gather that
builds one from runs of another flat array (`gather_runs`): how the step's per-segment arrays
are kept without a Python object per row."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np


class Ragged(Sequence):
    """Row i is values[first[i]:first[i + 1]] (a view, not a copy).

    values: [N, ...] any dtype; first: int64[rows + 1], nondecreasing, first[-1] <= N. A
    Sequence of numpy arrays (len, index, iterate), so code that read a tuple of per-row arrays
    reads it unchanged.
    """

    __slots__ = ("values", "first")

    def __init__(self, values: np.ndarray, first: np.ndarray):
        first = np.asarray(first, np.int64)
        if first.ndim != 1 or len(first) < 1 or (np.diff(first) < 0).any():
            raise ValueError(f"Ragged offsets must be a nondecreasing 1D array, got {first}")
        if first[-1] > len(values) or first[0] < 0:
            raise ValueError(f"Ragged offsets {first[0]}..{first[-1]} outside {len(values)} values")
        self.values = values
        self.first = first

    @classmethod
    def of(cls, rows: Sequence[np.ndarray], dtype=None) -> Ragged:
        """One concatenation of `rows`."""
        lengths = np.fromiter(map(len, rows), np.int64, len(rows))
        first = np.zeros(len(rows) + 1, np.int64)
        np.cumsum(lengths, out=first[1:])
        empty = np.zeros(0, dtype if dtype is not None else np.float32)
        return cls(np.concatenate([empty, *rows], dtype=dtype, casting="unsafe"), first)

    @property
    def flat(self) -> np.ndarray:
        """Every row's values, one after another (a view)."""
        return self.values[self.first[0] : self.first[-1]]

    @property
    def lengths(self) -> np.ndarray:
        """int64[rows]."""
        return np.diff(self.first)

    def __len__(self) -> int:
        return len(self.first) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        if not -len(self) <= i < len(self):
            raise IndexError(f"row {i} out of range for {len(self)} rows")
        i %= len(self)
        return self.values[self.first[i] : self.first[i + 1]]

    def split(self, k: int) -> tuple[Ragged, Ragged]:
        """(rows [:k], rows [k:]) as two Ragged of the same values (no copy)."""
        return Ragged(self.values, self.first[: k + 1]), Ragged(self.values, self.first[k:])

    def __iter__(self) -> Iterator[np.ndarray]:
        bounds = self.first.tolist()
        return (self.values[a:b] for a, b in zip(bounds, bounds[1:], strict=False))


def gather_runs(begin: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index int64[sum length], first int64[K + 1]): index lists the K runs [begin_k,
    begin_k + length_k) one after another, first[k] where run k starts in it. `values[index]`
    with `first` is then a Ragged of the runs (one gather, no loop per run)."""
    length = np.asarray(length, np.int64)
    first = np.zeros(len(length) + 1, np.int64)
    np.cumsum(length, out=first[1:])
    index = np.repeat(np.asarray(begin, np.int64) - first[:-1], length) + np.arange(first[-1])
    return index, first


class Runs(Sequence):
    """Row i is values[begin[i] : begin[i] + lengths[i]] (a view, not a copy): runs anywhere in
    one flat array, e.g. tree nodes' tokens in the batch's token pool, read without gathering.

    values: [N] any dtype; begin, lengths: int64[rows] (runs inside values, not checked per
    row: the builder checks them for a whole batch at once). A Sequence of numpy arrays like
    Ragged; `flat` gathers every row, one after another (a copy).
    """

    __slots__ = ("values", "begin", "lengths")

    def __init__(self, values: np.ndarray, begin: np.ndarray, lengths: np.ndarray):
        self.values = values
        self.begin = np.asarray(begin, np.int64)
        self.lengths = np.asarray(lengths, np.int64)
        if self.begin.shape != self.lengths.shape or self.begin.ndim != 1:
            raise ValueError(f"Runs need 1D begin and lengths of one shape, got "
                             f"{self.begin.shape} and {self.lengths.shape}")  # fmt: skip

    @property
    def flat(self) -> np.ndarray:
        """Every row's values, one after another (one gather)."""
        return self.values[gather_runs(self.begin, self.lengths)[0]]

    def __len__(self) -> int:
        return len(self.begin)

    def __getitem__(self, i: int) -> np.ndarray:
        if not -len(self) <= i < len(self):
            raise IndexError(f"row {i} out of range for {len(self)} rows")
        a = int(self.begin[i])
        return self.values[a : a + int(self.lengths[i])]

    def __iter__(self) -> Iterator[np.ndarray]:
        ends = (self.begin + self.lengths).tolist()
        return (self.values[a:b] for a, b in zip(self.begin.tolist(), ends, strict=True))
