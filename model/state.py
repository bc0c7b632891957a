"""The state of the queue: every live job plus the indexes that make decisions fast.

The state is one frozen value built from persistent maps (``immutables.Map``, a
hash array mapped trie in C).  An event changes a few entries and shares all the
rest with the previous state, so one ``evolve`` costs the same with a thousand
or a million jobs, and old states stay valid: a snapshot is just a reference.

Indexes, and which jobs each holds (``spec/invariants.py`` checks all of this):

``jobs``
    every job in the state, by id;
``ready``
    PENDING jobs, one FIFO per (queue, priority);
``timers``
    DELAYED jobs, a heap by due time (entries of jobs that left DELAYED are
    stale and are dropped when they reach the top);
``in_flight``
    IN_FLIGHT jobs, mapped to their lease expiry time;
``finished``
    COMPLETED, DEAD and CANCELLED jobs, one FIFO in the order they finished,
    oldest first: the order retention forgets them in;
``idempotency_keys``
    key -> job id, for every job in the state that has a key;
``paused``
    names of paused queues.
"""

from __future__ import annotations

import attrs
import immutables

from .errors import BrokenInvariant
from .fifo import EMPTY_FIFO, Fifo
from .jobs import Job
from .lifecycle import JobStatus
from .timers import EMPTY_TIMERS, Heap, timers_peek, timers_pop, timers_same_entries

ReadyKey = tuple[str, int]  # (queue, priority)


@attrs.frozen(slots=False)
class Counts:
    """How many jobs are in each state (kept so that gauges cost nothing)."""

    pending: int = 0
    delayed: int = 0
    in_flight: int = 0
    completed: int = 0
    dead: int = 0
    cancelled: int = 0

    def of(self, status: JobStatus) -> int:
        value: int = self.__dict__[_COUNT_FIELD[status]]
        return value

    def moved(self, source: JobStatus, target: JobStatus) -> Counts:
        """The counts after one job moves from ``source`` to ``target``."""
        if source is target:
            raise BrokenInvariant(f"a move from {source.name} to itself changes no count")
        values = [
            self.pending,
            self.delayed,
            self.in_flight,
            self.completed,
            self.dead,
            self.cancelled,
        ]
        if source is not JobStatus.ABSENT:
            values[_COUNT_INDEX[source]] -= 1
        if target is not JobStatus.ABSENT:
            values[_COUNT_INDEX[target]] += 1
        return Counts(*values)

    @property
    def total(self) -> int:
        return (
            self.pending
            + self.delayed
            + self.in_flight
            + self.completed
            + self.dead
            + self.cancelled
        )


# Field name and position per status.  Enum's ``.value`` is a Python-level
# property, too slow to call on every event; these dict lookups are not.
_COUNT_FIELD: dict[JobStatus, str] = {
    status: status.value for status in JobStatus if status is not JobStatus.ABSENT
}
_COUNT_INDEX: dict[JobStatus, int] = {status: index for index, status in enumerate(_COUNT_FIELD)}


@attrs.frozen(kw_only=True, slots=False)
class State:
    jobs: immutables.Map[str, Job]
    ready: immutables.Map[ReadyKey, Fifo]
    # Two heaps holding the same entries are the same timers, whatever their shape.
    timers: Heap = attrs.field(eq=attrs.cmp_using(eq=timers_same_entries), hash=False)
    in_flight: immutables.Map[str, int]
    finished: Fifo
    idempotency_keys: immutables.Map[str, str]
    paused: frozenset[str]
    counts: Counts
    last_lsn: int  # the LSN of the last event applied; 0 before any


def initial_state() -> State:
    return State(
        jobs=immutables.Map(),
        ready=immutables.Map(),
        timers=EMPTY_TIMERS,
        in_flight=immutables.Map(),
        finished=EMPTY_FIFO,
        idempotency_keys=immutables.Map(),
        paused=frozenset(),
        counts=Counts(),
        last_lsn=0,
    )


def timer_is_live(jobs: immutables.Map[str, Job], entry: tuple[int, int, str]) -> bool:
    """Whether a timer entry still describes its job (see timers.py, lazy deletion)."""
    due_ms, ready_lsn, job_id = entry
    job = jobs.get(job_id)
    return (
        job is not None
        and job.status is JobStatus.DELAYED
        and job.ready_lsn == ready_lsn
        and job.ready_at_ms == due_ms
    )


def timers_drop_stale(timers: Heap, jobs: immutables.Map[str, Job]) -> Heap:
    """Pop stale entries off the top, so the top (if any) is a live timer."""
    entry = timers_peek(timers)
    while entry is not None and not timer_is_live(jobs, entry):
        timers = timers_pop(timers)
        entry = timers_peek(timers)
    return timers


def job_for_idempotency_key(state: State, key: str) -> Job | None:
    job_id = state.idempotency_keys.get(key)
    return None if job_id is None else state.jobs[job_id]
