"""``evolve(state, event) -> state``: apply one recorded fact.  And ``replay``, the fold.

Nothing here decides anything: ``decide`` already did, and the event says what it
decided.  Each apply function computes the job's new record, asserts that the move
is an edge of the lifecycle table (lifecycle.py, Rule 1), and moves the job
between the state's indexes.

Replay is idempotent in two independent ways (the original design, decision 3):

* **by LSN** (``evolve``): an event at or below ``state.last_lsn`` is already in
  the state, for instance because a snapshot taken at a later LSN covers it, and
  is skipped.  Any other event must be the very next one: a gap means the log lost
  a record, and that is a loud failure, never a silent skip.
* **by state** (``apply_event``): every job remembers the LSN of the last event
  applied to it (``Job.last_lsn``, a page LSN as in ARIES).  An event for a job at
  or below that LSN is already reflected and changes nothing.  An event that is
  not reflected but does not fit the job's state is a broken invariant.  Where no
  job record can answer (the job was forgotten, or the event is about a queue),
  the state's own ``last_lsn`` does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from .events import (
    CancelRequested,
    DelayElapsed,
    Event,
    JobCancelled,
    JobCompleted,
    JobEnqueued,
    JobEvent,
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
from .fifo import EMPTY_FIFO, fifo_push, fifo_remove
from .jobs import AttemptRecord, Job
from .lifecycle import (
    ABSENT,
    CANCELLED,
    COMPLETED,
    DEAD,
    DELAYED,
    FINISHED,
    IN_FLIGHT,
    PENDING,
    JobStatus,
    is_allowed,
)
from .limits import ATTEMPT_HISTORY_MAX
from .records import replace_fields
from .state import State, timers_drop_stale
from .timers import timers_push


def evolve(state: State, event: Event) -> State:
    """Apply ``event`` unless the state already covers its LSN."""
    if event.lsn <= state.last_lsn:
        return state
    assert event.lsn == state.last_lsn + 1, (
        f"log gap: state is at LSN {state.last_lsn}, next event has LSN {event.lsn}"
    )
    after = apply_event(state, event)
    assert after.last_lsn == event.lsn
    return after


def replay(state: State, events: Iterable[Event]) -> State:
    """Fold ``evolve`` over ``events``: recovery's snapshot + log tail."""
    for event in events:
        state = evolve(state, event)
    return state


def apply_event(state: State, event: Event) -> State:
    """Apply ``event``; a no-op if the state already reflects it (see module doc)."""
    if isinstance(event, (QueuePaused, QueueResumed)):
        return _apply_queue_event(state, event)
    job = state.jobs.get(event.job_id)
    if job is None:
        if event.lsn <= state.last_lsn:
            # The job is not here but the state is past this event: the job was
            # forgotten since.  Only the state's own LSN can tell; the job's is gone.
            return state
        # Otherwise only an enqueue may name a job the state does not hold.
        assert isinstance(event, JobEnqueued), f"{event!r} names a job not in the state"
    elif job.last_lsn >= event.lsn:
        return state
    apply = _APPLY[type(event)]
    return apply(state, job, event)


def _apply_queue_event(state: State, event: QueuePaused | QueueResumed) -> State:
    # Queues keep no LSN of their own, so a queue event at or below the state's LSN
    # counts as reflected (a later pause or resume may have overridden it).
    if event.lsn <= state.last_lsn:
        return state
    if isinstance(event, QueuePaused):
        paused = state.paused | {event.queue}
    else:
        paused = state.paused - {event.queue}
    return replace_fields(state, paused=paused, last_lsn=max(state.last_lsn, event.lsn))


# -- One apply function per job event.  ``job`` is None only for JobEnqueued. --------


def _apply_job_enqueued(state: State, job: Job | None, event: JobEnqueued) -> State:
    # A job id is unique among the jobs in the state (decide rule job_id_taken).
    assert job is None, f"{event!r}: job id already in the state"
    target = PENDING if event.ready_at_ms <= event.at_ms else DELAYED
    return _move(
        state,
        None,
        event,
        target,
        spec=event.spec,
        enqueued_lsn=event.lsn,
        enqueued_at_ms=event.at_ms,
        ready_at_ms=event.ready_at_ms,
        ready_lsn=event.lsn,
        attempt=0,
        attempts_used=0,
        lease_expires_at_ms=None,
        cancel_requested=False,
        result_json=None,
        error=None,
        finished_at_ms=None,
        history=(),
    )


def _apply_delay_elapsed(state: State, job: Job | None, event: DelayElapsed) -> State:
    assert job is not None
    return _move(state, job, event, PENDING, ready_lsn=event.lsn)


def _apply_lease_granted(state: State, job: Job | None, event: LeaseGranted) -> State:
    assert job is not None
    # The fence only ever grows: lease n+1 follows lease n.
    assert event.attempt == job.attempt + 1, (event, job.attempt)
    assert job.attempts_used < job.spec.max_attempts, job
    record = AttemptRecord(
        attempt=event.attempt,
        worker_id=event.worker_id,
        leased_at_ms=event.at_ms,
        expires_at_ms=event.expires_at_ms,
    )
    return _move(
        state,
        job,
        event,
        IN_FLIGHT,
        attempt=event.attempt,
        attempts_used=job.attempts_used + 1,
        lease_expires_at_ms=event.expires_at_ms,
        history=(*job.history, record)[-ATTEMPT_HISTORY_MAX:],
    )


def _apply_job_completed(state: State, job: Job | None, event: JobCompleted) -> State:
    assert job is not None
    assert event.attempt == job.attempt, (event, job.attempt)
    return _move(
        state,
        job,
        event,
        COMPLETED,
        result_json=event.result_json,
        lease_expires_at_ms=None,
        finished_at_ms=event.at_ms,
        history=_end_attempt(job, event.at_ms, "completed", None),
    )


def _apply_job_failed(state: State, job: Job | None, event: JobFailed) -> State:
    assert job is not None
    return _end_unsuccessfully(state, job, event, "failed", event.error, event.retry_at_ms)


def _apply_lease_expired(state: State, job: Job | None, event: LeaseExpired) -> State:
    assert job is not None
    # A timed-out attempt counts (it was counted when leased) and, when attempts
    # remain, the job is re-queued at once.
    error = f"lease expired: attempt {event.attempt} ran longer than {job.spec.timeout_ms} ms"
    return _end_unsuccessfully(state, job, event, "expired", error, event.at_ms)


def _apply_lease_abandoned(state: State, job: Job | None, event: LeaseAbandoned) -> State:
    assert job is not None
    error = f"lease abandoned: the process running attempt {event.attempt} stopped"
    return _end_unsuccessfully(state, job, event, "abandoned", error, event.at_ms)


def _apply_lease_released(state: State, job: Job | None, event: LeaseReleased) -> State:
    assert job is not None
    # The attempt was counted when leased (_apply_lease_granted); a released one was
    # given back unfinished, so it is uncounted: releases alone never make a job
    # DEAD.  The fence ``attempt`` stays, so the released worker's result is stale.
    assert job.attempts_used >= 1, job
    restored = replace_fields(job, attempts_used=job.attempts_used - 1)
    error = f"lease released: attempt {event.attempt} was handed back unfinished"
    # Cancelled if a cancellation was requested, else ready at once: ending_target on
    # the restored budget (which never says DEAD, as attempts_used < max_attempts).
    return _end_unsuccessfully(state, restored, event, "released", error, event.at_ms)


def _apply_cancel_requested(state: State, job: Job | None, event: CancelRequested) -> State:
    assert job is not None
    assert not job.cancel_requested, job
    return _move(state, job, event, IN_FLIGHT, cancel_requested=True)


def _apply_job_cancelled(state: State, job: Job | None, event: JobCancelled) -> State:
    assert job is not None
    return _move(state, job, event, CANCELLED, finished_at_ms=event.at_ms)


def _apply_job_requeued(state: State, job: Job | None, event: JobRequeued) -> State:
    assert job is not None
    # A fresh budget of attempts; ``attempt`` (the fence) keeps counting.
    return _move(
        state,
        job,
        event,
        PENDING,
        attempts_used=0,
        ready_at_ms=event.at_ms,
        ready_lsn=event.lsn,
        finished_at_ms=None,
        cancel_requested=False,
    )


def _apply_job_forgotten(state: State, job: Job | None, event: JobForgotten) -> State:
    assert job is not None
    return _move(state, job, event, ABSENT)


_APPLY: dict[type[Any], Callable[[State, Job | None, Any], State]] = {
    JobEnqueued: _apply_job_enqueued,
    DelayElapsed: _apply_delay_elapsed,
    LeaseGranted: _apply_lease_granted,
    JobCompleted: _apply_job_completed,
    JobFailed: _apply_job_failed,
    LeaseExpired: _apply_lease_expired,
    LeaseAbandoned: _apply_lease_abandoned,
    LeaseReleased: _apply_lease_released,
    CancelRequested: _apply_cancel_requested,
    JobCancelled: _apply_job_cancelled,
    JobRequeued: _apply_job_requeued,
    JobForgotten: _apply_job_forgotten,
}


# -- Shared steps. ----------------------------------------------------------------------


def ending_target(job: Job, retry_at_ms: int | None, at_ms: int) -> JobStatus:
    """Where an attempt that did not succeed leads (lifecycle.py, second NB).

    ``decide`` uses the same function to choose ``retry_at_ms``, so a failure event
    and its application can never disagree about the job's fate.
    """
    if job.cancel_requested:
        return CANCELLED
    if job.attempts_used >= job.spec.max_attempts:
        return DEAD
    assert retry_at_ms is not None, f"{job.job_id}: a retry needs a retry time"
    return DELAYED if retry_at_ms > at_ms else PENDING


def _end_unsuccessfully(
    state: State,
    job: Job,
    event: JobFailed | LeaseExpired | LeaseAbandoned | LeaseReleased,
    outcome: str,
    error: str,
    retry_at_ms: int | None,
) -> State:
    assert event.attempt == job.attempt, (event, job.attempt)
    target = ending_target(job, retry_at_ms, event.at_ms)
    if target in FINISHED:
        assert retry_at_ms is None or not isinstance(event, JobFailed), event
        ready_at_ms, finished_at_ms = job.ready_at_ms, event.at_ms
    else:
        assert retry_at_ms is not None
        ready_at_ms, finished_at_ms = max(retry_at_ms, event.at_ms), None
    return _move(
        state,
        job,
        event,
        target,
        error=error,
        lease_expires_at_ms=None,
        ready_at_ms=ready_at_ms,
        ready_lsn=event.lsn,
        finished_at_ms=finished_at_ms,
        history=_end_attempt(job, event.at_ms, outcome, error),
    )


def _end_attempt(
    job: Job, at_ms: int, outcome: str, error: str | None
) -> tuple[AttemptRecord, ...]:
    assert job.history, f"{job.job_id}: an attempt ends but none was recorded"
    last = job.history[-1]
    assert last.attempt == job.attempt
    assert last.outcome is None, last
    ended = AttemptRecord(
        attempt=last.attempt,
        worker_id=last.worker_id,
        leased_at_ms=last.leased_at_ms,
        expires_at_ms=last.expires_at_ms,
        ended_at_ms=at_ms,
        outcome=outcome,
        error=error,
    )
    return (*job.history[:-1], ended)


def _move(
    state: State, old: Job | None, event: JobEvent, target: JobStatus, **changes: Any
) -> State:
    """Move a job to ``target``: rebuild it with ``changes`` and update every index.

    ``old`` is None for a new job (``changes`` then gives every field); ``target``
    ABSENT removes the job.  The job record is built once, after its slot in the
    target's FIFO is known.
    """
    source = ABSENT if old is None else old.status
    # Rule 1: every move is an edge of the lifecycle table.
    assert is_allowed(source, type(event).__name__, target), (source, event, target)
    job_id = event.job_id
    ready, timers, in_flight, finished = state.ready, state.timers, state.in_flight, state.finished
    keys, jobs = state.idempotency_keys, state.jobs
    spec = changes["spec"] if old is None else old.spec

    if old is not None:
        if source is PENDING:
            key = (spec.queue, spec.priority)
            fifo = fifo_remove(ready[key], old.slot)
            ready = ready.set(key, fifo) if fifo else ready.delete(key)
        elif source is IN_FLIGHT:
            in_flight = in_flight.delete(job_id)
        elif source in FINISHED:
            finished = fifo_remove(finished, old.slot)
        # A DELAYED job's timer entry turns stale; it is dropped below.

    if target is ABSENT:
        jobs = jobs.delete(job_id)
        if spec.idempotency_key is not None:
            keys = keys.delete(spec.idempotency_key)
    else:
        slot = -1
        if target is PENDING:
            key = (spec.queue, spec.priority)
            fifo, slot = fifo_push(ready.get(key, EMPTY_FIFO), job_id)
            ready = ready.set(key, fifo)
        elif target in FINISHED:
            finished, slot = fifo_push(finished, job_id)
        if old is None:
            new = Job(status=target, slot=slot, last_lsn=event.lsn, **changes)
            if spec.idempotency_key is not None:
                keys = keys.set(spec.idempotency_key, job_id)
        else:
            new = replace_fields(old, status=target, slot=slot, last_lsn=event.lsn, **changes)
        if target is DELAYED:
            timers = timers_push(timers, (new.ready_at_ms, new.ready_lsn, job_id))
        elif target is IN_FLIGHT:
            assert new.lease_expires_at_ms is not None
            in_flight = in_flight.set(job_id, new.lease_expires_at_ms)
        jobs = jobs.set(job_id, new)

    if source is DELAYED:
        timers = timers_drop_stale(timers, jobs)
    return State(
        jobs=jobs,
        ready=ready,
        timers=timers,
        in_flight=in_flight,
        finished=finished,
        idempotency_keys=keys,
        paused=state.paused,
        counts=state.counts if source is target else state.counts.moved(source, target),
        last_lsn=max(state.last_lsn, event.lsn),
    )
