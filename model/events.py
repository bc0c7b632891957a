"""Events: the facts the log records, named in the past tense.

Every event carries its log sequence number ``lsn`` (assigned by ``decide``,
consecutive from 1) and ``at_ms``, the time of the command that produced it.
Events record *decisions*, never re-derive them: a failure carries the retry time
that ``decide`` chose with its jitter, so ``evolve`` is a plain application of the
fact and replay can never disagree with the original run.

Each job event names its job in ``job_id``; the events of one attempt also carry
its ``attempt`` number, the fence that makes stale results recognisable.
"""

from __future__ import annotations

import attrs

from .jobs import JobSpec


@attrs.frozen(kw_only=True)
class JobEnqueued:
    lsn: int
    at_ms: int
    spec: JobSpec
    ready_at_ms: int  # the earliest time the job may be leased

    @property
    def job_id(self) -> str:
        return self.spec.job_id


@attrs.frozen(kw_only=True)
class DelayElapsed:
    lsn: int
    at_ms: int
    job_id: str


@attrs.frozen(kw_only=True)
class LeaseGranted:
    lsn: int
    at_ms: int
    job_id: str
    attempt: int
    worker_id: str
    expires_at_ms: int


@attrs.frozen(kw_only=True)
class JobCompleted:
    lsn: int
    at_ms: int
    job_id: str
    attempt: int
    result_json: str


@attrs.frozen(kw_only=True)
class JobFailed:
    lsn: int
    at_ms: int
    job_id: str
    attempt: int
    error: str
    retry_at_ms: int | None  # None: no retry (attempts used up, or cancellation)


@attrs.frozen(kw_only=True)
class LeaseExpired:
    lsn: int
    at_ms: int
    job_id: str
    attempt: int


@attrs.frozen(kw_only=True)
class LeaseAbandoned:
    """The process holding the lease died; recovery returns the job (see recovery.py)."""

    lsn: int
    at_ms: int
    job_id: str
    attempt: int


@attrs.frozen(kw_only=True)
class LeaseReleased:
    """The runtime gave the live attempt back unfinished (graceful shutdown): the job
    is ready again and the attempt does not count against ``max_attempts``."""

    lsn: int
    at_ms: int
    job_id: str
    attempt: int


@attrs.frozen(kw_only=True)
class CancelRequested:
    lsn: int
    at_ms: int
    job_id: str


@attrs.frozen(kw_only=True)
class JobCancelled:
    lsn: int
    at_ms: int
    job_id: str


@attrs.frozen(kw_only=True)
class JobRequeued:
    lsn: int
    at_ms: int
    job_id: str


@attrs.frozen(kw_only=True)
class JobForgotten:
    lsn: int
    at_ms: int
    job_id: str


@attrs.frozen(kw_only=True)
class QueuePaused:
    lsn: int
    at_ms: int
    queue: str


@attrs.frozen(kw_only=True)
class QueueResumed:
    lsn: int
    at_ms: int
    queue: str


JobEvent = (
    JobEnqueued
    | DelayElapsed
    | LeaseGranted
    | JobCompleted
    | JobFailed
    | LeaseExpired
    | LeaseAbandoned
    | LeaseReleased
    | CancelRequested
    | JobCancelled
    | JobRequeued
    | JobForgotten
)
QueueEvent = QueuePaused | QueueResumed
Event = JobEvent | QueueEvent

JOB_EVENT_TYPES: tuple[type[JobEvent], ...] = (
    JobEnqueued,
    DelayElapsed,
    LeaseGranted,
    JobCompleted,
    JobFailed,
    LeaseExpired,
    LeaseAbandoned,
    LeaseReleased,
    CancelRequested,
    JobCancelled,
    JobRequeued,
    JobForgotten,
)
QUEUE_EVENT_TYPES: tuple[type[QueueEvent], ...] = (QueuePaused, QueueResumed)
EVENT_TYPES: tuple[type[Event], ...] = JOB_EVENT_TYPES + QUEUE_EVENT_TYPES
