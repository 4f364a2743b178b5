"""Ragged rows (flat values + offsets), Runs (views anywhere in one array) and the run gather
that builds them."""

import numpy as np
import pytest

from attnrl_jax.rl.ragged import Ragged, Runs, gather_runs


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


def test_split_gives_two_views_of_one_array():
    r = Ragged.of([np.arange(3), np.zeros(0), np.arange(5, 7), np.arange(9, 10)], np.int32)
    head, tail = r.split(2)
    assert [x.tolist() for x in head] == [[0, 1, 2], []]
    assert [x.tolist() for x in tail] == [[5, 6], [9]]
    assert head.values is tail.values is r.values and tail.flat.tolist() == [5, 6, 9]


def test_runs_are_views_and_flat_gathers_them_in_order():
    values = np.arange(100, 120)
    runs = Runs(values, np.array([5, 0, 12, 12]), np.array([3, 2, 0, 4]))
    want = [[105, 106, 107], [100, 101], [], [112, 113, 114, 115]]
    assert len(runs) == 4 and [x.tolist() for x in runs] == want
    assert [runs[i].tolist() for i in range(4)] == want and runs[-1].tolist() == want[-1]
    assert np.shares_memory(runs[0], values)
    assert runs.flat.tolist() == [v for row in want for v in row]
    with pytest.raises(IndexError):
        runs[4]
    with pytest.raises(ValueError, match="one shape"):
        Runs(values, np.array([0, 1]), np.array([1]))
