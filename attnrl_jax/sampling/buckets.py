"""Padded sizes for the sampler's compiled program, so new request sizes compile nothing.

A device batch has five sizes: rows R and contexts P (from `rows`), and context length C,
new-token budget M and cache length S (from `lengths`). A context is the prompt followed by
the response prefix it continues (empty for a fresh sample): the decoder sees one token
sequence either way, so one length bucket covers prompt and prefix together, and separate
prompt/prefix buckets would only multiply the programs compiled for the same work.
"""

from __future__ import annotations

import dataclasses

from attnrl_jax.buckets import powers_of_two, round_up, smallest_fit


@dataclasses.dataclass(frozen=True)
class Buckets:
    """rows: allowed row (and context) counts; the largest is the most rows per device batch.
    lengths: allowed context lengths, new-token budgets and cache lengths."""

    rows: tuple[int, ...] = powers_of_two(1, 64)
    lengths: tuple[int, ...] = powers_of_two(16, 131072)

    def __post_init__(self):
        for name in ("rows", "lengths"):
            sizes = getattr(self, name)
            if not sizes or list(sizes) != sorted(set(sizes)) or sizes[0] < 1:
                raise ValueError(f"Buckets.{name} must be increasing positive sizes, got {sizes}")

    @property
    def max_rows(self) -> int:
        return self.rows[-1]

    def fit_rows(self, n: int, multiple: int = 1) -> int:
        """The smallest row bucket >= n, rounded up to a multiple (the batch shard count)."""
        return round_up(smallest_fit(self.rows, n, "rows"), multiple)

    def fit_length(self, n: int) -> int:
        return smallest_fit(self.lengths, n, "lengths")

    def cache_length(self, context: int, new_tokens: int, longest_row: int) -> int:
        """Cache slots for padded sizes C and M whose rows need at most longest_row slots
        (context plus budget): C + M, or a smaller length bucket that still holds every row."""
        return min([context + new_tokens] + [s for s in self.lengths if s >= longest_row])
