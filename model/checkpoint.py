"""A checkpoint: the state as plain parts, to be written in a snapshot and read back.

The state's indexes (ready FIFOs, timers, in-flight map, finished FIFO, keys,
counts) are derived data: everything in them follows from the jobs, except the
few numbers a FIFO keeps about itself (``head``/``tail``) and the stale timer
entries awaiting lazy deletion.  A ``Checkpoint`` holds the jobs plus exactly those
numbers, so ``restore(checkpoint_of(state)) == state`` while the snapshot stays
small.  ``restore`` rebuilds every index in one pass and then compares the
recorded counts with a recount: the assertion pair across the disk boundary
(TigerBeetle: check before writing and after reading).
"""

from __future__ import annotations

import attrs
import immutables

from .errors import BrokenInvariant
from .fifo import EMPTY_FIFO, Fifo
from .jobs import Job
from .lifecycle import DELAYED, FINISHED, IN_FLIGHT, PENDING, JobStatus
from .state import Counts, ReadyKey, State
from .timers import Heap, TimerEntry, timers_entries


@attrs.frozen(kw_only=True)
class FifoBounds:
    queue: str
    priority: int
    head: int
    tail: int


@attrs.frozen(kw_only=True)
class Checkpoint:
    last_lsn: int
    jobs: tuple[Job, ...]  # in id order, so equal states give equal checkpoints
    ready: tuple[FifoBounds, ...]
    finished_head: int
    finished_tail: int
    timers: tuple[TimerEntry, ...]  # sorted; stale entries included
    paused: tuple[str, ...]
    counts: Counts


def checkpoint_of(state: State) -> Checkpoint:
    return Checkpoint(
        last_lsn=state.last_lsn,
        jobs=tuple(job for _job_id, job in sorted(state.jobs.items())),
        ready=tuple(
            FifoBounds(queue=queue, priority=priority, head=fifo.head, tail=fifo.tail)
            for (queue, priority), fifo in sorted(state.ready.items())
        ),
        finished_head=state.finished.head,
        finished_tail=state.finished.tail,
        timers=tuple(sorted(timers_entries(state.timers))),
        paused=tuple(sorted(state.paused)),
        counts=state.counts,
    )


def restore(checkpoint: Checkpoint) -> State:
    jobs: dict[str, Job] = {}
    ready_items: dict[ReadyKey, dict[int, str]] = {}
    finished_items: dict[int, str] = {}
    in_flight: dict[str, int] = {}
    keys: dict[str, str] = {}
    tally = dict.fromkeys(JobStatus, 0)
    for job in checkpoint.jobs:
        job_id = job.spec.job_id
        if job_id in jobs:
            raise BrokenInvariant(f"checkpoint lists job {job_id!r} twice")
        jobs[job_id] = job
        status = job.status
        tally[status] += 1
        if status is PENDING:
            ready_items.setdefault((job.spec.queue, job.spec.priority), {})[job.slot] = job_id
        elif status is IN_FLIGHT:
            if job.lease_expires_at_ms is None:
                raise BrokenInvariant(f"checkpoint: in-flight job {job_id!r} has no lease expiry")
            in_flight[job_id] = job.lease_expires_at_ms
        elif status in FINISHED:
            finished_items[job.slot] = job_id
        else:
            if status is not DELAYED:
                raise BrokenInvariant(f"checkpoint: job {job_id!r} has status {status.name}")
        if job.spec.idempotency_key is not None:
            keys[job.spec.idempotency_key] = job_id
    ready = {}
    for bounds in checkpoint.ready:
        key = (bounds.queue, bounds.priority)
        items = ready_items.pop(key, None)
        if not items:
            raise BrokenInvariant(f"checkpoint has an empty or unknown FIFO {key}")
        ready[key] = Fifo(bounds.head, bounds.tail, immutables.Map(items))
    if ready_items:
        raise BrokenInvariant(f"pending jobs in FIFOs the checkpoint does not bound: {ready_items}")
    finished = (
        Fifo(checkpoint.finished_head, checkpoint.finished_tail, immutables.Map(finished_items))
        if finished_items
        else EMPTY_FIFO
    )
    counts = Counts(
        pending=tally[PENDING],
        delayed=tally[DELAYED],
        in_flight=tally[IN_FLIGHT],
        completed=tally[JobStatus.COMPLETED],
        dead=tally[JobStatus.DEAD],
        cancelled=tally[JobStatus.CANCELLED],
    )
    # The pair of the assertion made when the snapshot was taken: the counts the
    # writer recorded are the counts the reader finds.
    if counts != checkpoint.counts:
        raise BrokenInvariant(
            f"checkpoint: recorded counts {checkpoint.counts} but the jobs count {counts}"
        )
    return State(
        jobs=immutables.Map(jobs),
        ready=immutables.Map(ready),
        timers=timers_from_sorted(checkpoint.timers),
        in_flight=immutables.Map(in_flight),
        finished=finished,
        idempotency_keys=immutables.Map(keys),
        paused=frozenset(checkpoint.paused),
        counts=counts,
        last_lsn=checkpoint.last_lsn,
    )


def timers_from_sorted(entries: tuple[TimerEntry, ...]) -> Heap:
    """A leftist heap of sorted entries in O(n): a chain down the left, every rank 1.

    Each node's right child is empty (rank 0) and its left child is the next entry,
    so both heap order and the leftist property hold.  ``merge`` walks only right
    spines, so the chain's length never costs a later push or pop.
    """
    heap: Heap = None
    for index in range(len(entries) - 1, -1, -1):
        if index and entries[index - 1] > entries[index]:
            raise BrokenInvariant("timer entries must be sorted")
        heap = (1, entries[index], heap, None)
    return heap
