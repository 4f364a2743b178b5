"""Padded sizes: the one place that rounds a size up to a bucket.

Compiled programs are specialised to array shapes, so every caller (sampler, scoring forward,
step slots, training rows) pads sizes to a few buckets: powers of two, then multiples of a
granule once powers of two would waste too much (a 9,216-token sequence costs 9,216, not 16,384).
"""

from __future__ import annotations


def is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def power_of_two(n: int, minimum: int = 1) -> int:
    """The smallest power of two >= n, and at least `minimum`."""
    return max(minimum, 1 << max(0, n - 1).bit_length())


def powers_of_two(lo: int, hi: int) -> tuple[int, ...]:
    """The powers of two from the largest <= lo up to the largest <= hi."""
    return tuple(1 << i for i in range(lo.bit_length() - 1, hi.bit_length()))


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def padded_length(n: int, granule: int, minimum: int = 16) -> int:
    """The next power of two (at least `minimum`) up to `granule` (a power of two), then the
    next multiple of `granule`."""
    power = power_of_two(n, minimum)
    return power if power <= granule else round_up(n, granule)


def smallest_fit(sizes: tuple[int, ...], n: int, name: str) -> int:
    """The first of the increasing `sizes` that is >= n (a ValueError naming `name` if none)."""
    for size in sizes:
        if size >= n:
            return size
    raise ValueError(f"{n} exceeds the largest {name} bucket {sizes[-1]}")


def largest_divisor(n: int, most: int) -> int:
    """The largest divisor of n that is at most `most`."""
    return max(d for d in range(1, min(n, most) + 1) if n % d == 0)
