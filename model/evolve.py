"""``evolve(state, event) -> state``: apply one recorded fact.  And ``replay``, the fold.

Nothing here decides anything: ``decide`` already did, and the event says what it
decided (its ``target``, and for an ending attempt its ``retry_at_ms``).  Each apply
function computes the job's new record, looks the move up in the lifecycle table
(lifecycle.py, Rule 1: a move not in it is a :class:`BrokenInvariant`), and moves
the job between the state's indexes.  No rule is consulted here: a log replays to
the same state whatever the retry rule says today.

Replay is idempotent in two independent ways (the original design, decision 3):

* **by LSN** (``evolve``): an event at or below ``state.last_lsn`` is already in
  the state, for instance because a snapshot taken at a later LSN covers it, and
  is skipped.  Any other event must be the very next one: a gap means the log lost
  a record, and that is a loud failure, never a silent skip.
* **by state** (``apply_event``): every job remembers the LSN of the last event
  applied to it (``Job.last_lsn``, a page LSN as in ARIES).  An event for a job at
  or below that LSN is already reflected and changes nothing.  An event that is
  not reflected but does not fit the job's state is a :class:`BrokenInvariant`.  Where no
  job record can answer (the job was forgotten, or the event is about a queue),
  the state's own ``last_lsn`` does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from .errors import BrokenInvariant
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
    DELAYED,
    FINISHED,
    IN_FLIGHT,
    PENDING,
    JobStatus,
    next_status,
)
from .limits import ATTEMPT_HISTORY_MAX
from .records import replace_fields
from .state import State, timers_drop_stale
from .timers import timers_push


def evolve(state: State, event: Event) -> State:
    """Apply ``event`` unless the state already covers its LSN."""
    if event.lsn <= state.last_lsn:
        return state
    if event.lsn != state.last_lsn + 1:
        # The log lost a record (or the caller skipped one): applying this event
        # would build a state no history produces.
        raise BrokenInvariant(
            f"log gap: state is at LSN {state.last_lsn}, next event has LSN {event.lsn}"
        )
    after = apply_event(state, event)
    if after.last_lsn != event.lsn:
        raise BrokenInvariant(f"{event!r} left the state at LSN {after.last_lsn}")
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
        if not isinstance(event, JobEnqueued):
            raise BrokenInvariant(f"{event!r} names a job not in the state")
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
    if job is not None:
        raise BrokenInvariant(f"{event!r}: job id already in the state")
    # The recorded target and the recorded ready time must tell the same story.
    if (event.target is DELAYED) != (event.ready_at_ms > event.at_ms):
        raise BrokenInvariant(f"{event!r}: target disagrees with ready_at_ms")
    return _move(
        state,
        None,
        event,
        event.target,
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
    return _move(state, _present(job, event), event, None, ready_lsn=event.lsn)


def _apply_lease_granted(state: State, job: Job | None, event: LeaseGranted) -> State:
    job = _present(job, event)
    # The fence only ever grows: lease n+1 follows lease n.
    if event.attempt != job.attempt + 1:
        raise BrokenInvariant(f"{event!r} does not follow attempt {job.attempt}")
    if job.attempts_used >= job.spec.max_attempts:
        raise BrokenInvariant(f"{event!r}: the job has no attempt left ({job!r})")
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
        None,
        attempt=event.attempt,
        attempts_used=job.attempts_used + 1,
        lease_expires_at_ms=event.expires_at_ms,
        history=(*job.history, record)[-ATTEMPT_HISTORY_MAX:],
    )


def _apply_job_completed(state: State, job: Job | None, event: JobCompleted) -> State:
    job = _present(job, event)
    _require_live_attempt(job, event)
    return _move(
        state,
        job,
        event,
        None,
        result_json=event.result_json,
        lease_expires_at_ms=None,
        finished_at_ms=event.at_ms,
        history=_end_attempt(job, event.at_ms, "completed", None),
    )


def _apply_job_failed(state: State, job: Job | None, event: JobFailed) -> State:
    return _end_unsuccessfully(state, _present(job, event), event, "failed", event.error)


def _apply_lease_expired(state: State, job: Job | None, event: LeaseExpired) -> State:
    job = _present(job, event)
    # A timed-out attempt counts (it was counted when leased).
    error = f"lease expired: attempt {event.attempt} ran longer than {job.spec.timeout_ms} ms"
    return _end_unsuccessfully(state, job, event, "expired", error)


def _apply_lease_abandoned(state: State, job: Job | None, event: LeaseAbandoned) -> State:
    error = f"lease abandoned: the process running attempt {event.attempt} stopped"
    return _end_unsuccessfully(state, _present(job, event), event, "abandoned", error)


def _apply_lease_released(state: State, job: Job | None, event: LeaseReleased) -> State:
    job = _present(job, event)
    # The attempt was counted when leased (_apply_lease_granted); a released one was
    # given back unfinished, so it is uncounted.  The fence ``attempt`` stays, so the
    # released worker's result is stale.  The table has no DEAD for a release.
    if job.attempts_used < 1:
        raise BrokenInvariant(f"{event!r}: no counted attempt to give back ({job!r})")
    restored = replace_fields(job, attempts_used=job.attempts_used - 1)
    error = f"lease released: attempt {event.attempt} was handed back unfinished"
    return _end_unsuccessfully(state, restored, event, "released", error)


def _apply_cancel_requested(state: State, job: Job | None, event: CancelRequested) -> State:
    job = _present(job, event)
    if job.cancel_requested:
        raise BrokenInvariant(f"{event!r}: a cancellation was already requested")
    return _move(state, job, event, None, cancel_requested=True)


def _apply_job_cancelled(state: State, job: Job | None, event: JobCancelled) -> State:
    return _move(state, _present(job, event), event, None, finished_at_ms=event.at_ms)


def _apply_job_requeued(state: State, job: Job | None, event: JobRequeued) -> State:
    # A fresh budget of attempts; ``attempt`` (the fence) keeps counting.
    return _move(
        state,
        _present(job, event),
        event,
        None,
        attempts_used=0,
        ready_at_ms=event.at_ms,
        ready_lsn=event.lsn,
        finished_at_ms=None,
        cancel_requested=False,
    )


def _apply_job_forgotten(state: State, job: Job | None, event: JobForgotten) -> State:
    return _move(state, _present(job, event), event, None)


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


def _present(job: Job | None, event: JobEvent) -> Job:
    # apply_event looks the job up; only JobEnqueued may find none.
    if job is None:
        raise BrokenInvariant(f"{event!r} names a job not in the state")
    return job


def _require_live_attempt(
    job: Job, event: JobCompleted | JobFailed | LeaseExpired | LeaseAbandoned | LeaseReleased
) -> None:
    # The attempt fence: only the live attempt's events end it (decide refused the
    # rest as stale_attempt).
    if event.attempt != job.attempt:
        raise BrokenInvariant(f"{event!r} ends an attempt; the live one is {job.attempt}")


def _end_unsuccessfully(
    state: State,
    job: Job,
    event: JobFailed | LeaseExpired | LeaseAbandoned | LeaseReleased,
    outcome: str,
    error: str,
) -> State:
    """End the live attempt as ``event`` recorded: its target and retry time."""
    _require_live_attempt(job, event)
    retry_at_ms = event.retry_at_ms
    # Not the retry rule (which may change) but what the state must keep whatever
    # it says: the flag is kept only by IN_FLIGHT, CANCELLED and COMPLETED jobs
    # (spec/invariants.py, cancellation_flag_consistent), and a job that waits for
    # a lease has an attempt left for it (_apply_lease_granted would refuse it).
    if job.cancel_requested and event.target is not CANCELLED:
        raise BrokenInvariant(f"{event!r}: a cancellation was requested ({job!r})")
    if event.target in (PENDING, DELAYED) and job.attempts_used >= job.spec.max_attempts:
        raise BrokenInvariant(f"{event!r}: a retry of a job with no attempt left ({job!r})")
    if event.target in FINISHED:
        if retry_at_ms is not None:
            raise BrokenInvariant(f"{event!r}: a finished job has no retry time")
        ready_at_ms, finished_at_ms = job.ready_at_ms, event.at_ms
    else:
        # A retry: due no earlier than the event, and DELAYED exactly when later.
        if retry_at_ms is None or retry_at_ms < event.at_ms:
            raise BrokenInvariant(f"{event!r}: a retry needs a retry time from at_ms on")
        if (event.target is DELAYED) != (retry_at_ms > event.at_ms):
            raise BrokenInvariant(f"{event!r}: target disagrees with retry_at_ms")
        ready_at_ms, finished_at_ms = retry_at_ms, None
    return _move(
        state,
        job,
        event,
        event.target,
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
    if not job.history:
        raise BrokenInvariant(f"{job.job_id}: an attempt ends but none was recorded")
    last = job.history[-1]
    if last.attempt != job.attempt or last.outcome is not None:
        raise BrokenInvariant(f"{job.job_id}: attempt {job.attempt} is not live in {last!r}")
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
    state: State, old: Job | None, event: JobEvent, recorded: JobStatus | None, **changes: Any
) -> State:
    """Move a job along the table's edge for ``event``: rebuild it with ``changes``
    and update every index.

    ``recorded`` is the target the event recorded, or None for an event with a
    single possible target.  ``old`` is None for a new job (``changes`` then gives
    every field); a target of ABSENT removes the job.  The job record is built
    once, after its slot in the target's FIFO is known.
    """
    source = ABSENT if old is None else old.status
    # Rule 1: every move is an edge of the lifecycle table.
    target = next_status(source, type(event).__name__, recorded)
    if target is None:
        raise BrokenInvariant(f"no lifecycle edge from {source.name} on {event!r}")
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
            if new.lease_expires_at_ms is None:
                raise BrokenInvariant(f"{job_id}: in flight without a lease expiry")
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
