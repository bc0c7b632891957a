"""Events: the facts the log records, named in the past tense.

Every event carries its log sequence number ``lsn`` (assigned by ``decide``,
consecutive from 1) and ``at_ms``, the time of the command that produced it.
Events record *decisions*, never re-derive them.  Every event that could lead a
job to more than one status carries the status ``decide`` chose, in ``target``,
and an attempt that ends without success carries the time the retry is due, in
``retry_at_ms`` (None when there is no retry).  ``evolve`` applies them and checks
that the move is an edge of the lifecycle table; it never asks the retry rule.  So
a change to the rule (more attempts, another backoff) changes what future commands
decide and never how an old log replays, and two replicas running different code
fold the same log into the same state (docs/storage.md, "Schema evolution").

An event is immutable, in memory and on disk: once appended, its bytes mean the
same forever.  A new field is a new schema version, and the events of older logs
are *upcast* when read (upcast.py), never rewritten.

Each job event names its job in ``job_id``; the events of one attempt also carry
its ``attempt`` number, the fence that makes stale results recognisable.
"""

from __future__ import annotations

import attrs

from .jobs import JobSpec
from .lifecycle import JobStatus


@attrs.frozen(kw_only=True)
class JobEnqueued:
    lsn: int
    at_ms: int
    spec: JobSpec
    ready_at_ms: int  # the earliest time the job may be leased
    target: JobStatus  # PENDING, or DELAYED when ready_at_ms is later than at_ms

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
    target: JobStatus  # DELAYED or PENDING (a retry), DEAD or CANCELLED
    retry_at_ms: int | None  # None exactly when ``target`` is a finished status


@attrs.frozen(kw_only=True)
class LeaseExpired:
    lsn: int
    at_ms: int
    job_id: str
    attempt: int
    target: JobStatus  # PENDING (a retry), DEAD or CANCELLED
    retry_at_ms: int | None  # None exactly when ``target`` is a finished status


@attrs.frozen(kw_only=True)
class LeaseAbandoned:
    """The process holding the lease died; recovery decides the job's fate (recovery.py)."""

    lsn: int
    at_ms: int
    job_id: str
    attempt: int
    target: JobStatus  # PENDING (a retry), DEAD or CANCELLED
    retry_at_ms: int | None  # None exactly when ``target`` is a finished status


@attrs.frozen(kw_only=True)
class LeaseReleased:
    """The runtime gave the live attempt back unfinished (graceful shutdown): the job
    is ready again and the attempt does not count against ``max_attempts``."""

    lsn: int
    at_ms: int
    job_id: str
    attempt: int
    target: JobStatus  # PENDING or CANCELLED: a release never counts, so never DEAD
    retry_at_ms: int | None  # None exactly when ``target`` is a finished status


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
