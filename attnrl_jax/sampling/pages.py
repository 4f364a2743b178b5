"""The host side of the paged KV cache: a page table per slot, a free list, reference counts.

The device holds one pool of `num_pages` pages per layer (paged_cache.py); this module decides
which pages a slot's logical positions live in. Page 0 is never handed out: it is the trash
page that empty slots and finished rows point at and write into, so the compiled decode step
needs no branch for them.

Sharing: the full pages of a request's context (prompt + prefix) are written once and shared by
all its n samples (a reference each, plus one held by the request while some of its samples
still wait for a slot); the partly filled last page is private to each sample, so decode never
writes into a shared page (copy-on-write without the copy: each sample's prefill writes its
own last page).

Reservations keep admission safe without preemption: a row is admitted only when the pages it
may still need (context + budget, worst case) fit beside everything already promised, so growth
between decode chunks never runs out of pages.
"""

from __future__ import annotations

import numpy as np

TRASH = 0  # the page that unused table entries point at


def pages_for(tokens: int, page_size: int) -> int:
    return -(-tokens // page_size)


class PageTable:
    """Pages of `slots` slots, each up to `pages_per_slot` pages of `page_size` positions.

    table [slots, pages_per_slot] int32: the physical page of each logical page (TRASH when
    unassigned); the decode chunk reads it as is.
    """

    def __init__(self, num_pages: int, page_size: int, slots: int, pages_per_slot: int):
        if num_pages < 2:
            raise ValueError(
                f"a page pool needs >= 2 pages (one is the trash page), got {num_pages}"
            )
        self.page_size, self.num_pages = page_size, num_pages
        self.table = np.full((slots, pages_per_slot), TRASH, np.int32)
        self.held = np.zeros(slots, np.int32)  # logical pages assigned per slot
        self.refs = np.zeros(num_pages, np.int32)
        self.free = list(range(num_pages - 1, 0, -1))  # pop() gives the lowest page
        self.reserved = np.zeros(slots, np.int32)  # pages a slot may still allocate
        self.held_by_requests: dict[int, list[int]] = {}  # request -> its shared pages
        self.peak = 0

    @property
    def in_use(self) -> int:
        """Pages allocated now (shared pages counted once)."""
        return self.num_pages - 1 - len(self.free)

    @property
    def available(self) -> int:
        """Pages neither allocated nor promised to a live slot."""
        return len(self.free) - int(self.reserved.sum())

    def _allocate(self) -> int:
        page = self.free.pop()
        self.refs[page] = 1
        self.peak = max(self.peak, self.in_use)
        return page

    def _release(self, page: int) -> None:
        self.refs[page] -= 1
        if self.refs[page] == 0:
            self.free.append(page)

    def shared_pages(self, request: int, context: int) -> tuple[list[int], bool]:
        """The request's full context pages (allocated now if it has none) and whether they
        are new (so this admission's prefill must write them). Held for the request until
        `drop_request`."""
        if request in self.held_by_requests:
            return self.held_by_requests[request], False
        pages = [self._allocate() for _ in range(context // self.page_size)]
        self.held_by_requests[request] = pages
        return pages, True

    def drop_request(self, request: int) -> None:
        """The request's last sample got a slot: its own hold on the shared pages ends."""
        for page in self.held_by_requests.pop(request, []):
            self._release(page)

    def cost(self, request: int, context: int, total: int) -> int:
        """Pages a new row of `request` may allocate over its life (total = context + budget),
        including the shared pages when the request has none yet."""
        shared = context // self.page_size
        new_shared = 0 if request in self.held_by_requests else shared
        return new_shared + pages_for(total, self.page_size) - shared

    def admit(self, slot: int, shared: list[int], context: int, total: int, ahead: int) -> None:
        """Gives `slot` the shared pages (a reference each) and private pages up to position
        min(context + ahead, total); reserves the rest of what `total` positions need."""
        if self.held[slot]:
            raise RuntimeError(f"slot {slot} is still in use")
        for i, page in enumerate(shared):
            self.refs[page] += 1
            self.table[slot, i] = page
        self.held[slot] = len(shared)
        self.reserved[slot] = pages_for(total, self.page_size) - len(shared)
        self.grow(slot, min(context + ahead, total))

    def grow(self, slot: int, positions: int) -> None:
        """Private pages for `slot` until it covers `positions` positions (from its reserve)."""
        need = pages_for(positions, self.page_size)
        while self.held[slot] < need:
            self.table[slot, self.held[slot]] = self._allocate()
            self.held[slot] += 1
            self.reserved[slot] -= 1

    def release(self, slot: int) -> None:
        """The slot's row finished: its references end, its reserve returns."""
        for page in self.table[slot, : self.held[slot]]:
            self._release(int(page))
        self.table[slot] = TRASH
        self.held[slot] = 0
        self.reserved[slot] = 0
