"""A persistent first-in-first-out sequence of job ids.

Items live in an ``immutables.Map`` from a dense slot number to a job id, so a
push, a removal anywhere, and a peek at the front each cost O(1) map operations
(O(log32 n) in the HAMT, flat in practice) and share structure with the previous
version.  Removal from the middle (a cancelled job) leaves a hole.  Every slot
below ``head`` is empty, and when the item at the head is removed the head moves
on past any holes to the next live item, so ``first`` is O(1).  Each hole is
stepped over once along one history, so removal is amortised O(1).
"""

from __future__ import annotations

import attrs
import immutables

from .errors import BrokenInvariant


@attrs.frozen(slots=False)
class Fifo:
    head: int
    tail: int  # the next free slot; every slot >= tail is empty
    items: immutables.Map[int, str]

    def __len__(self) -> int:
        return len(self.items)


EMPTY_FIFO = Fifo(0, 0, immutables.Map())


def fifo_push(fifo: Fifo, job_id: str) -> tuple[Fifo, int]:
    """Append ``job_id``; return the new FIFO and the slot it occupies."""
    slot = fifo.tail
    return Fifo(fifo.head, slot + 1, fifo.items.set(slot, job_id)), slot


def fifo_remove(fifo: Fifo, slot: int) -> Fifo:
    if not fifo.head <= slot < fifo.tail:
        raise BrokenInvariant(f"slot {slot} is outside the FIFO [{fifo.head}, {fifo.tail})")
    if slot not in fifo.items:
        raise BrokenInvariant(f"slot {slot} of the FIFO is empty")
    items = fifo.items.delete(slot)
    if not items:
        return EMPTY_FIFO
    head = fifo.head
    if slot == head:
        # Step over the holes that earlier removals left behind the old head, so
        # the head points at a live item again and ``fifo_first`` costs O(1).
        head = slot + 1
        while head not in items:
            head += 1
            if head >= fifo.tail:
                raise BrokenInvariant("a non-empty FIFO has an item before its tail")
    return Fifo(head, fifo.tail, items)


def fifo_first(fifo: Fifo) -> tuple[int, str] | None:
    """The oldest (slot, job id), or None when empty."""
    if not fifo.items:
        return None
    slot = fifo.head
    items = fifo.items
    # Bounded: a non-empty FIFO has an item before ``tail``.
    while slot not in items:
        slot += 1
        if slot >= fifo.tail:
            raise BrokenInvariant("a non-empty FIFO has an item before its tail")
    return slot, items[slot]


def fifo_iter(fifo: Fifo) -> list[tuple[int, str]]:
    """Every (slot, job id), oldest first.  O(n): for checks and inspection only."""
    return sorted(fifo.items.items())
