"""The page table of the paged KV cache (host side, no device): allocation as rows grow,
shared context pages counted once, reservations, and nothing leaked."""

import numpy as np
import pytest

from attnrl_jax.sampling.pages import TRASH, PageTable, pages_for
from attnrl_jax.sampling.shard_pages import ShardedPages


def test_shared_context_pages_are_counted_once_and_returned():
    table = PageTable(num_pages=32, page_size=4, slots=4, pages_per_slot=8)
    # A 10-token context: 2 full pages shared by its 3 samples, each its own third page.
    shared, new = table.shared_pages(request=0, context=10)
    assert new and len(shared) == 2
    for slot in range(3):
        assert table.shared_pages(0, 10) == (shared, False)
        table.admit(slot, shared, context=10, total=20, ahead=2)  # covers 12 positions
    table.drop_request(0)
    assert table.in_use == 2 + 3  # not 3 x 3
    assert table.table[:3, :2].tolist() == [shared] * 3
    private = table.table[:3, 2]
    assert len(set(private.tolist()) | set(shared)) == 5 and TRASH not in private
    assert table.table[3].tolist() == [TRASH] * 8

    table.grow(1, 17)  # pages for positions up to 16: 2 more
    assert table.held.tolist() == [3, 5, 3, 0] and table.in_use == 7
    table.release(0)
    table.release(2)
    assert table.in_use == 2 + 3  # the shared pages live while slot 1 holds them
    table.release(1)
    assert table.in_use == 0 and (table.refs == 0).all()
    assert sorted(table.free) == list(range(1, 32))
    assert table.peak == 7


def test_reservations_promise_each_rows_worst_case():
    table = PageTable(num_pages=9, page_size=4, slots=2, pages_per_slot=4)
    assert table.available == 8
    assert table.cost(request=0, context=5, total=16) == 4  # 1 shared + 3 private
    shared, _ = table.shared_pages(0, 5)
    table.admit(0, shared, context=5, total=16, ahead=1)  # 2 pages now, 2 promised
    assert table.in_use == 2 and table.available == 8 - 2 - 2
    table.drop_request(0)
    assert table.cost(request=1, context=3, total=16) == 4 <= table.available
    table.admit(1, [], context=3, total=16, ahead=1)
    assert table.available == 0  # a third row would wait
    table.grow(0, 16)
    table.grow(1, 16)
    assert table.in_use == 8 and table.available == 0
    with pytest.raises(RuntimeError, match="slot 1 is still in use"):
        table.admit(1, [], context=1, total=2, ahead=1)
    table.release(0)
    table.release(1)
    assert table.in_use == 0 and table.available == 8


def test_a_request_holds_its_pages_until_its_last_sample_is_admitted():
    table = PageTable(num_pages=8, page_size=2, slots=1, pages_per_slot=4)
    shared, _ = table.shared_pages(0, 4)
    table.admit(0, shared, context=4, total=5, ahead=1)
    table.release(0)  # its first sample finished; the second still waits for the slot
    assert table.in_use == 2
    assert table.cost(0, 4, 5) == 1  # the shared pages are already there
    table.admit(0, table.shared_pages(0, 4)[0], context=4, total=5, ahead=1)
    table.drop_request(0)
    table.release(0)
    assert table.in_use == 0


def test_pages_for_rounds_up():
    assert [pages_for(n, 4) for n in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]
    with pytest.raises(ValueError, match=">= 2 pages"):
        PageTable(1, 4, 1, 1)
    assert np.all(PageTable(2, 4, 1, 1).table == TRASH)


def test_shards_keep_a_requests_rows_together_and_fill_the_freest_shard():
    # 2 shards of 2 slots and 16 pages (ids local to the shard); pages of 4 positions.
    pages = ShardedPages(num_pages=32, page_size=4, slots=4, pages_per_slot=4, shards=2)
    free = [True] * 4
    # Request 0 (8-token context: 2 shared pages) goes to the freest shard: a tie, shard 0.
    slot = pages.place(0, context=8, total=12, free=free)
    assert slot == 0 and pages.admit(slot, 0, 8, 12, ahead=1) == 0  # writes its shared pages
    free[slot] = False
    # Its second sample stays home and shares the pages: its prefill writes from position 8.
    slot = pages.place(0, 8, 12, free)
    assert slot == 1 and pages.admit(slot, 0, 8, 12, ahead=1) == 8
    free[slot] = False
    assert pages.tables[0].in_use == 2 + 2 and pages.tables[1].in_use == 0
    # Its third sample finds home full: it moves to shard 1, which writes its own copy.
    slot = pages.place(0, 8, 12, free)
    assert slot == 2 and pages.admit(slot, 0, 8, 12, ahead=1) == 0
    free[slot] = False
    pages.drop_request(0)
    assert pages.tables[0].in_use == 4 and pages.tables[1].in_use == 3
    assert pages.table[:3, :2].tolist() == [[1, 2], [1, 2], [1, 2]]  # local ids in each shard
    # A new request goes to the shard with most pages available among those with a free slot.
    pages.release(1)
    pages.release(2)
    assert [t.available for t in pages.tables] == [15 - 3, 15]
    assert pages.place(1, 4, 8, [False, True, True, True]) == 2  # not slot 1 of shard 0
    pages.release(0)
    assert pages.in_use == 0 and pages.peak == 4 + 3
    with pytest.raises(ValueError, match="split evenly over 2 batch shards"):
        ShardedPages(num_pages=31, page_size=4, slots=4, pages_per_slot=4, shards=2)
