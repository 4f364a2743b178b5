"""Page tables of S batch shards: slots split evenly, one page pool (and free list) per shard.

On a mesh with S = data x fsdp batch shards, shard k owns slots k*B/S .. (k+1)*B/S - 1 and a
pool of its own pages, named by local ids 0 .. N/S - 1 (0: that shard's trash page), so the
compiled engine gathers only local pages (continuous.py). The n samples of a request go to one
shard (its `home`) so their shared context pages stay local; a request's first waiting sample
goes to the shard with the most free pages among those with a free slot that can promise its
worst case. With S = 1 this is one PageTable over every slot.
"""

from __future__ import annotations

import numpy as np

from attnrl_jax.sampling.pages import PageTable


class ShardedPages:
    """`shards` PageTables of slots // shards slots and num_pages // shards pages each."""

    def __init__(
        self, num_pages: int, page_size: int, slots: int, pages_per_slot: int, shards: int
    ):
        if slots % shards or num_pages % shards:
            raise ValueError(
                f"{slots} slots and {num_pages} KV pages must split evenly over "
                f"{shards} batch shards"
            )
        self.page_size, self.shards, self.local = page_size, shards, slots // shards
        self.pages_per_shard = num_pages // shards
        self.tables = [
            PageTable(self.pages_per_shard, page_size, self.local, pages_per_slot)
            for _ in range(shards)
        ]
        self.home: dict[int, int] = {}  # request -> the shard holding its shared pages

    def at(self, slot: int) -> tuple[PageTable, int]:
        """The shard's page table and the local index of global `slot`."""
        return self.tables[slot // self.local], slot % self.local

    @property
    def table(self) -> np.ndarray:
        """[slots, pages_per_slot] int32: every slot's pages, ids local to its shard."""
        return np.concatenate([t.table for t in self.tables])

    @property
    def in_use(self) -> int:
        return sum(t.in_use for t in self.tables)

    @property
    def peak(self) -> int:
        """Sum over shards of each shard's most pages allocated at once."""
        return sum(t.peak for t in self.tables)

    def worst(self, request: int, context: int, total: int) -> int:
        """Pages one row may need in an empty shard (to check against pages_per_shard - 1)."""
        return self.tables[0].cost(request, context, total)

    def place(self, request: int, context: int, total: int, free: list[bool]) -> int | None:
        """The global slot for the next sample of `request`, or None when no shard can take it
        now. free [slots]: which slots are empty. Its home shard first; else the shard with
        the most available pages (the request's hold on its old home's pages then ends: later
        samples share the new home's copy)."""

        def fits(k: int) -> int | None:
            start = k * self.local
            slot = next((b for b in range(start, start + self.local) if free[b]), None)
            if (
                slot is None
                or self.tables[k].cost(request, context, total) > self.tables[k].available
            ):
                return None
            return slot

        home = self.home.get(request)
        if home is not None and (slot := fits(home)) is not None:
            return slot
        options = [(k, fits(k)) for k in range(self.shards) if k != home]
        options = [(k, slot) for k, slot in options if slot is not None]
        if not options:
            return None
        k, slot = max(options, key=lambda o: (self.tables[o[0]].available, -o[0]))
        if home is not None:
            self.tables[home].drop_request(request)
        self.home[request] = k
        return slot

    def admit(self, slot: int, request: int, context: int, total: int, ahead: int) -> int:
        """Admits `request`'s row into global `slot` (placed by `place`): the first context
        position its prefill writes (0 when the shard's shared pages are new)."""
        pages, local = self.at(slot)
        shared, new = pages.shared_pages(request, context)
        pages.admit(local, shared, context, total, ahead)
        return 0 if new else len(shared) * self.page_size

    def drop_request(self, request: int) -> None:
        """The request's last sample got a slot: its home's hold on the shared pages ends."""
        home = self.home.pop(request, None)
        if home is not None:
            self.tables[home].drop_request(request)

    def grow(self, slot: int, positions: int) -> None:
        pages, local = self.at(slot)
        pages.grow(local, positions)

    def release(self, slot: int) -> None:
        pages, local = self.at(slot)
        pages.release(local)
