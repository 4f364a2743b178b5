"""The one bucketing module: every padded size of the project comes from these rules."""

import pytest

from attnrl_jax.buckets import (
    is_power_of_two,
    largest_divisor,
    padded_length,
    power_of_two,
    powers_of_two,
    round_up,
    smallest_fit,
)


def test_powers_of_two_and_multiples():
    assert [power_of_two(n) for n in (0, 1, 2, 3, 17, 64)] == [1, 1, 2, 4, 32, 64]
    assert power_of_two(3, minimum=8) == 8
    assert powers_of_two(16, 100) == (16, 32, 64)
    assert [is_power_of_two(n) for n in (0, 1, 6, 64)] == [False, True, False, True]
    assert [round_up(n, 8) for n in (0, 1, 8, 9)] == [0, 8, 8, 16]
    # powers of two up to the granule, then multiples of it
    assert [padded_length(n, 128) for n in (1, 17, 128, 129, 600)] == [16, 32, 128, 256, 640]
    assert padded_length(9216, 1024) == 9216


def test_fits_and_divisors():
    assert smallest_fit((16, 32, 64), 20, "lengths") == 32
    with pytest.raises(ValueError, match="65 exceeds the largest lengths bucket 64"):
        smallest_fit((16, 32, 64), 65, "lengths")
    assert [largest_divisor(n, 512) for n in (96, 1024, 1536, 7)] == [96, 512, 512, 7]
