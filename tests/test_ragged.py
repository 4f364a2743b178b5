"""Ragged rows (flat values + offsets) and the run gather that builds them."""

import numpy as np
import pytest

from attnrl_jax.rl.ragged import Ragged, gather_runs


def test_ragged_rows_are_views_of_the_flat_values():
    rows = [np.arange(3), np.zeros(0, np.int64), np.arange(10, 14)]
    r = Ragged.of(rows, np.int32)
    assert len(r) == 3 and r.values.dtype == np.int32
    assert [x.tolist() for x in r] == [x.tolist() for x in rows]
    assert r[-1].tolist() == [10, 11, 12, 13] and r.lengths.tolist() == [3, 0, 4]
    assert np.shares_memory(r[2], r.values) and r.flat.tolist() == [0, 1, 2, 10, 11, 12, 13]
    tail = Ragged(r.values, r.first[1:])  # rows 1.. of the same values
    assert [x.tolist() for x in tail] == [[], [10, 11, 12, 13]] and tail.flat.tolist()[0] == 10
    with pytest.raises(IndexError):
        r[3]
    with pytest.raises(ValueError, match="nondecreasing"):
        Ragged(r.values, np.array([0, 3, 2]))
    with pytest.raises(ValueError, match="outside"):
        Ragged(r.values, np.array([0, 8]))
    assert len(Ragged.of([])) == 0


def test_gather_runs_lists_each_run_in_order():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 100, 500)
    begin = rng.integers(0, 400, 60)
    length = rng.integers(0, 50, 60)
    index, first = gather_runs(begin, length)
    got = Ragged(values[index], first)
    for b, n, row in zip(begin, length, got, strict=True):
        np.testing.assert_array_equal(row, values[b : b + n])
