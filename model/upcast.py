"""Upcasting: the events of a schema-1 log, read as the events of today's schema.

Schema 1 (beaverq up to commit 3322584) recorded an attempt's ending without its
outcome: ``JobFailed`` carried its retry time, but ``evolve`` decided there whether
the job went DEAD, CANCELLED, DELAYED or PENDING, and ``LeaseExpired``,
``LeaseAbandoned`` and ``LeaseReleased`` carried no decision at all.  Schema 2
records the outcome in the event (events.py, ``target`` and ``retry_at_ms``), so
that a log replays the same whatever the retry rule says today.

A schema-1 log cannot be rewritten: its bytes are checksummed and chained, and they
are the record of what was acknowledged.  So its events are *upcast* when read: one
small pure function per changed event type turns a schema-1 event into the schema-2
event the old code's behaviour amounts to.  Each needs the state just before the
event (the fold of every event before it), because the old outcome depended on it;
the storage layer reads the log in order and passes that state along.

The old rule is frozen here as ``_schema1_ending``, a copy of what schema-1 code
did, on purpose not a call to today's ``endings.attempt_ending``: if the rule
changes, logs written under the old one must keep the outcomes they had when they
were written (tests/test_upcast.py changes today's rule and replays the fixture).

Events whose shape did not change (``LeaseGranted``, ``JobCompleted``, ...) are the
same classes in both schemas and pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from .errors import BrokenInvariant
from .events import (
    CancelRequested,
    DelayElapsed,
    Event,
    JobCancelled,
    JobCompleted,
    JobEnqueued,
    JobFailed,
    JobForgotten,
    JobRequeued,
    LeaseAbandoned,
    LeaseExpired,
    LeaseGranted,
    LeaseReleased,
    QueuePaused,
    QueueResumed,
)
from .jobs import Job, JobSpec
from .lifecycle import CANCELLED, DEAD, DELAYED, FINISHED, PENDING, JobStatus
from .records import replace_fields
from .state import State

# -- The schema-1 shapes of the events that changed.  Their tags on disk are the
# -- names without the ``Schema1`` prefix (impl/storage/codec.py). ---------------------------


@attrs.frozen(kw_only=True)
class Schema1JobEnqueued:
    lsn: int
    at_ms: int
    spec: JobSpec
    ready_at_ms: int


@attrs.frozen(kw_only=True)
class Schema1JobFailed:
    lsn: int
    at_ms: int
    job_id: str
    attempt: int
    error: str
    retry_at_ms: int | None


@attrs.frozen(kw_only=True)
class Schema1LeaseExpired:
    lsn: int
    at_ms: int
    job_id: str
    attempt: int


@attrs.frozen(kw_only=True)
class Schema1LeaseAbandoned:
    lsn: int
    at_ms: int
    job_id: str
    attempt: int


@attrs.frozen(kw_only=True)
class Schema1LeaseReleased:
    lsn: int
    at_ms: int
    job_id: str
    attempt: int


Schema1Event = (
    Schema1JobEnqueued
    | DelayElapsed
    | LeaseGranted
    | JobCompleted
    | Schema1JobFailed
    | Schema1LeaseExpired
    | Schema1LeaseAbandoned
    | Schema1LeaseReleased
    | CancelRequested
    | JobCancelled
    | JobRequeued
    | JobForgotten
    | QueuePaused
    | QueueResumed
)

#: Schema-1 class -> the schema-2 class it becomes.  Every other event is shared.
SCHEMA1_RENAMED: dict[type[Any], type[Event]] = {
    Schema1JobEnqueued: JobEnqueued,
    Schema1JobFailed: JobFailed,
    Schema1LeaseExpired: LeaseExpired,
    Schema1LeaseAbandoned: LeaseAbandoned,
    Schema1LeaseReleased: LeaseReleased,
}


def upcast_schema1(state: State, event: Schema1Event) -> Event | None:
    """The schema-2 event for schema-1 ``event``, read where it stands in its log.

    ``state`` is the fold of every event before it.  None if the state already
    covers the event's LSN (a snapshot taken later includes it; ``evolve`` would
    skip it anyway, and the job it names may since have been forgotten).
    """
    if event.lsn <= state.last_lsn:
        return None
    upcaster = _UPCASTERS.get(type(event))
    if upcaster is None:
        return event  # type: ignore[return-value]  # a shared class: already schema 2
    return upcaster(state, event)


def _upcast_job_enqueued(state: State, event: Schema1JobEnqueued) -> JobEnqueued:
    # Schema 1 derived the target from the event alone; no state needed.
    target = DELAYED if event.ready_at_ms > event.at_ms else PENDING
    return JobEnqueued(
        lsn=event.lsn,
        at_ms=event.at_ms,
        spec=event.spec,
        ready_at_ms=event.ready_at_ms,
        target=target,
    )


def _upcast_job_failed(state: State, event: Schema1JobFailed) -> JobFailed:
    job = _job_of(state, event.job_id, event)
    target, retry_at_ms = _schema1_ending(job, event.retry_at_ms, event.at_ms)
    if target in FINISHED and event.retry_at_ms is not None:
        # Schema 1's decide never wrote one, and its evolve refused it (an assert):
        # a damaged log, not an outcome to recover.
        raise BrokenInvariant(f"schema-1 {event!r} ends the job {target.name} with a retry time")
    return JobFailed(
        lsn=event.lsn,
        at_ms=event.at_ms,
        job_id=event.job_id,
        attempt=event.attempt,
        error=event.error,
        target=target,
        retry_at_ms=retry_at_ms,
    )


def _upcast_lease_expired(state: State, event: Schema1LeaseExpired) -> Event:
    # Schema 1 retried an expired attempt at once.
    return _ended_at_once(_job_of(state, event.job_id, event), event, LeaseExpired)


def _upcast_lease_abandoned(state: State, event: Schema1LeaseAbandoned) -> Event:
    # Schema 1 retried an abandoned attempt at once, as an expired one.
    return _ended_at_once(_job_of(state, event.job_id, event), event, LeaseAbandoned)


def _upcast_lease_released(state: State, event: Schema1LeaseReleased) -> Event:
    job = _job_of(state, event.job_id, event)
    # Schema 1 gave the released attempt back before it decided the ending.
    uncounted = replace_fields(job, attempts_used=job.attempts_used - 1)
    return _ended_at_once(uncounted, event, LeaseReleased)


def _ended_at_once(
    job: Job,
    event: Schema1LeaseExpired | Schema1LeaseAbandoned | Schema1LeaseReleased,
    new_type: type[LeaseExpired] | type[LeaseAbandoned] | type[LeaseReleased],
) -> Event:
    """The schema-2 form of an ending whose retry, if any, was due at once."""
    target, retry_at_ms = _schema1_ending(job, event.at_ms, event.at_ms)
    return new_type(
        lsn=event.lsn,
        at_ms=event.at_ms,
        job_id=event.job_id,
        attempt=event.attempt,
        target=target,
        retry_at_ms=retry_at_ms,
    )


_UPCASTERS: dict[type[Any], Callable[[State, Any], Event]] = {
    Schema1JobEnqueued: _upcast_job_enqueued,
    Schema1JobFailed: _upcast_job_failed,
    Schema1LeaseExpired: _upcast_lease_expired,
    Schema1LeaseAbandoned: _upcast_lease_abandoned,
    Schema1LeaseReleased: _upcast_lease_released,
}


def _schema1_ending(job: Job, retry_at_ms: int | None, at_ms: int) -> tuple[JobStatus, int | None]:
    """Schema 1's ending of an attempt, exactly as its ``evolve`` decided it.

    Frozen: this is what the old code did when the log was written, whatever
    today's rule (endings.py) says.
    """
    if job.cancel_requested:
        target = CANCELLED
    elif job.attempts_used >= job.spec.max_attempts:
        target = DEAD
    elif retry_at_ms is None:
        raise BrokenInvariant(f"{job.job_id}: a schema-1 retry without a retry time")
    else:
        target = DELAYED if retry_at_ms > at_ms else PENDING
    if target in FINISHED:
        return target, None
    # Schema 1 made the job ready at the later of the retry time and the event.
    return target, max(retry_at_ms or at_ms, at_ms)


def _job_of(state: State, job_id: str, event: object) -> Job:
    job = state.jobs.get(job_id)
    if job is None:
        raise BrokenInvariant(f"schema-1 {event!r} names a job not in the state")
    return job
