"""A persistent min-heap of timers: when each DELAYED job becomes due.

A leftist heap (Okasaki, *Purely Functional Data Structures*, 3.1): every node
is an immutable tuple ``(rank, entry, left, right)`` and the rank of the left
child is never smaller than that of the right, so the right spine has O(log n)
nodes and ``merge`` walks only along it.  Push and pop are O(log n) and share
everything off that spine with the previous version.

An entry is ``(due_ms, ready_lsn, job_id)``: ordered by due time, then by the
LSN that scheduled it (unique, so the order is total and deterministic).
Deletion is lazy: a cancelled job's entry stays until it reaches the top, where
``timers_drop_stale`` discards it because the job no longer matches it.
"""

from __future__ import annotations

from typing import TypeAlias

from .errors import BrokenInvariant

TimerEntry = tuple[int, int, str]
# (rank, entry, left, right); None is the empty heap.
Heap: TypeAlias = "tuple[int, TimerEntry, Heap, Heap] | None"

EMPTY_TIMERS: Heap = None


def _rank(heap: Heap) -> int:
    return 0 if heap is None else heap[0]


def _make(entry: TimerEntry, a: Heap, b: Heap) -> Heap:
    if _rank(a) >= _rank(b):
        return (_rank(b) + 1, entry, a, b)
    return (_rank(a) + 1, entry, b, a)


def timers_merge(a: Heap, b: Heap) -> Heap:
    if a is None:
        return b
    if b is None:
        return a
    if b[1] < a[1]:
        a, b = b, a
    return _make(a[1], a[2], timers_merge(a[3], b))


def timers_push(heap: Heap, entry: TimerEntry) -> Heap:
    return timers_merge(heap, (1, entry, None, None))


def timers_peek(heap: Heap) -> TimerEntry | None:
    return None if heap is None else heap[1]


def timers_pop(heap: Heap) -> Heap:
    if heap is None:
        raise BrokenInvariant("pop from an empty timer heap")
    return timers_merge(heap[2], heap[3])


def timers_size(heap: Heap) -> int:
    """Number of entries, live or stale.  O(n): for checks only."""
    return 0 if heap is None else 1 + timers_size(heap[2]) + timers_size(heap[3])


def timers_entries(heap: Heap) -> list[TimerEntry]:
    """Every entry, in no particular order.  O(n): for checks only."""
    found: list[TimerEntry] = []
    stack: list[Heap] = [heap]
    while stack:
        node = stack.pop()
        if node is not None:
            found.append(node[1])
            stack.append(node[2])
            stack.append(node[3])
    return found


def timers_same_entries(a: Heap, b: Heap) -> bool:
    """Equality of heaps as multisets of entries (their shapes may differ)."""
    return a is b or sorted(timers_entries(a)) == sorted(timers_entries(b))
