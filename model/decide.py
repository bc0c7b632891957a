"""``decide(state, command) -> events``: every lifecycle decision lives here.

``decide`` reads the state and a command and returns the events that record what
happens, numbered with the next LSNs.  It never changes the state: the caller
appends the events to the log and then folds them in with ``evolve``.  A command
that is malformed or not allowed raises :class:`Rejected` naming the command, the
job, its state and the rule; a command with nothing to do (lease when no job is
ready, pause a paused queue, enqueue a duplicate idempotency key) returns ``()``.

Commands that produce several events (``Tick``, ``Recover``, ``AbandonNode``)
decide each one on the state left by the previous ones (``Tick`` through a small
``_Emitter``, the recoveries in recovery.py); so a batch of events is exactly what
deciding them one at a time would have produced.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import attrs

from . import limits
from .backoff import backoff_ms
from .commands import (
    AbandonNode,
    Cancel,
    Command,
    Complete,
    Enqueue,
    Fail,
    Lease,
    PauseQueue,
    Recover,
    Release,
    Requeue,
    ResumeQueue,
    Tick,
)
from .endings import attempt_ending
from .errors import (
    ERROR_INVALID,
    IN_FLIGHT_MAX_REACHED,
    JOB_FINISHED,
    JOB_ID_TAKEN,
    JOB_NOT_DEAD,
    JOB_NOT_FOUND,
    JOBS_MAX_REACHED,
    PAUSED_QUEUES_MAX_REACHED,
    STALE_ATTEMPT,
    BrokenInvariant,
    Rejected,
    Rejection,
)
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
    LeaseExpired,
    LeaseGranted,
    LeaseReleased,
    QueuePaused,
    QueueResumed,
)
from .evolve import evolve
from .fifo import fifo_first
from .jobs import Job, JobSpec
from .lifecycle import CANCELLED, COMPLETED, DEAD, DELAYED, IN_FLIGHT, PENDING
from .nodes import check_node_name
from .records import replace_fields
from .recovery import abandon_leases, abandon_node_leases
from .state import State, timer_is_live
from .timers import timers_peek, timers_pop
from .validation import (
    Problem,
    check_integer,
    check_job_id,
    check_json,
    check_queue_name,
    check_range,
    check_time,
    check_token,
    truncate_utf8,
)

E = TypeVar("E", bound=Event)

#: The error of a ``JobFailed`` decided for a ``Complete`` whose result cannot be
#: stored; the rest is the validation detail.
RESULT_REFUSED_PREFIX = "the result was refused: "


def decide(state: State, command: Command) -> tuple[Event, ...]:
    handler = _DECIDE[type(command)]
    _refuse_if(command, None, state, check_time(command.now_ms))
    events = handler(state, command)
    # Events are numbered consecutively after the state's last LSN.
    for offset, event in enumerate(events, start=1):
        if event.lsn != state.last_lsn + offset:
            raise BrokenInvariant(f"{event!r} is not numbered after LSN {state.last_lsn}")
    return events


def derived_job_id(lsn: int) -> str:
    """The id given to a job enqueued without one: unique, since LSNs never repeat."""
    return f"j{lsn}"


def enqueued_job_id(state: State, command: Enqueue, events: tuple[Event, ...]) -> str:
    """The job an ``Enqueue`` refers to: the new one, or the one its key already names."""
    if events:
        first = events[0]
        if not isinstance(first, JobEnqueued):
            raise BrokenInvariant(f"an Enqueue decided {first!r}")
        return first.job_id
    if command.idempotency_key is None:
        raise BrokenInvariant("an Enqueue without a key decided no event")
    return state.idempotency_keys[command.idempotency_key]


# -- Rejections. ------------------------------------------------------------------------


def _refuse(
    command: Command, job_id: str | None, job: Job | None, rule: str, detail: str
) -> Rejected:
    status = None if job is None else job.status.value
    return Rejected(
        Rejection(
            command=type(command).__name__, job_id=job_id, status=status, rule=rule, detail=detail
        )
    )


def _refuse_if(command: Command, job_id: str | None, state: State, problem: Problem | None) -> None:
    if problem is not None:
        job = state.jobs.get(job_id) if isinstance(job_id, str) else None  # may be malformed
        raise _refuse(command, job_id, job, *problem)


def _job_or_refuse(state: State, command: Command, job_id: str) -> Job:
    _refuse_if(
        command,
        job_id,
        state,
        check_token("job_id", job_id, limits.JOB_ID_BYTES_MAX, "JOB_ID_BYTES_MAX"),
    )
    job = state.jobs.get(job_id)
    if job is None:
        raise _refuse(command, job_id, None, JOB_NOT_FOUND, "no such job in the state")
    return job


# -- Enqueue. ---------------------------------------------------------------------------


def _decide_enqueue(state: State, command: Enqueue) -> tuple[Event, ...]:
    given_id = command.job_id
    for problem in _enqueue_problems(command):
        _refuse_if(command, given_id, state, problem)
    if command.idempotency_key is not None and command.idempotency_key in state.idempotency_keys:
        return ()  # the first enqueue with this key stands (see enqueued_job_id)
    lsn = state.last_lsn + 1
    job_id = derived_job_id(lsn) if given_id is None else given_id
    existing = state.jobs.get(job_id)
    if existing is not None:
        raise _refuse(command, job_id, existing, JOB_ID_TAKEN, "a job with this id is in the state")
    if state.counts.total >= limits.JOBS_MAX:
        raise _refuse(
            command,
            job_id,
            None,
            JOBS_MAX_REACHED,
            f"the state holds JOBS_MAX={limits.JOBS_MAX} jobs",
        )
    spec = JobSpec(
        job_id=job_id,
        queue=command.queue,
        handler=command.handler,
        args_json=command.args_json,
        priority=command.priority,
        max_attempts=command.max_attempts,
        timeout_ms=command.timeout_ms,
        backoff_base_ms=command.backoff_base_ms,
        backoff_cap_ms=command.backoff_cap_ms,
        idempotency_key=command.idempotency_key,
    )
    ready_at_ms = command.now_ms + command.delay_ms
    target = DELAYED if ready_at_ms > command.now_ms else PENDING
    return (
        JobEnqueued(
            lsn=lsn, at_ms=command.now_ms, spec=spec, ready_at_ms=ready_at_ms, target=target
        ),
    )


def _enqueue_problems(command: Enqueue) -> list[Problem | None]:
    key = command.idempotency_key
    return [
        None if command.job_id is None else check_job_id(command.job_id),
        check_queue_name(command.queue),
        check_token(
            "handler", command.handler, limits.HANDLER_NAME_BYTES_MAX, "HANDLER_NAME_BYTES_MAX"
        ),
        check_json(
            "args_json", command.args_json, limits.ARGS_JSON_BYTES_MAX, "ARGS_JSON_BYTES_MAX"
        ),
        check_range(
            "priority",
            command.priority,
            limits.PRIORITY_MIN,
            limits.PRIORITY_MAX,
            "PRIORITY_MIN..PRIORITY_MAX",
        ),
        check_range(
            "max_attempts", command.max_attempts, 1, limits.ATTEMPTS_MAX, "1..ATTEMPTS_MAX"
        ),
        check_range(
            "timeout_ms",
            command.timeout_ms,
            limits.TIMEOUT_MS_MIN,
            limits.TIMEOUT_MS_MAX,
            "TIMEOUT_MS_MIN..TIMEOUT_MS_MAX",
        ),
        check_range("delay_ms", command.delay_ms, 0, limits.DELAY_MS_MAX, "0..DELAY_MS_MAX"),
        check_range(
            "backoff_cap_ms",
            command.backoff_cap_ms,
            0,
            limits.BACKOFF_CAP_MS_MAX,
            "0..BACKOFF_CAP_MS_MAX",
        ),
        check_range(
            "backoff_base_ms",
            command.backoff_base_ms,
            0,
            max(0, command.backoff_cap_ms) if isinstance(command.backoff_cap_ms, int) else 0,
            "0..backoff_cap_ms",
        ),
        None
        if key is None
        else check_token(
            "idempotency_key", key, limits.IDEMPOTENCY_KEY_BYTES_MAX, "IDEMPOTENCY_KEY_BYTES_MAX"
        ),
    ]


# -- Lease. -----------------------------------------------------------------------------


def next_ready_job(state: State) -> Job | None:
    """The job a lease would take: highest priority, then first ready (FIFO), skipping
    paused queues.  DELAYED jobs are not in ``ready``, so not-yet-due jobs never are."""
    best: Job | None = None
    for (queue, _priority), fifo in state.ready.items():
        if queue in state.paused:
            continue
        first = fifo_first(fifo)
        if first is None:
            raise BrokenInvariant(f"the ready FIFO of {(queue, _priority)} is empty")
        job = state.jobs[first[1]]
        if best is None or _lease_order(job) < _lease_order(best):
            best = job
    return best


def _lease_order(job: Job) -> tuple[int, int]:
    return (-job.spec.priority, job.ready_lsn)


def _decide_lease(state: State, command: Lease) -> tuple[Event, ...]:
    _refuse_if(
        command,
        None,
        state,
        check_token(
            "worker_id", command.worker_id, limits.WORKER_ID_BYTES_MAX, "WORKER_ID_BYTES_MAX"
        ),
    )
    job = next_ready_job(state)
    if job is None:
        return ()
    if state.counts.in_flight >= limits.IN_FLIGHT_MAX:
        raise _refuse(
            command,
            job.job_id,
            job,
            IN_FLIGHT_MAX_REACHED,
            f"IN_FLIGHT_MAX={limits.IN_FLIGHT_MAX} leases are live",
        )
    if job.status is not PENDING:
        raise BrokenInvariant(f"{job.job_id} is ready but {job.status.name}")
    return (
        LeaseGranted(
            lsn=state.last_lsn + 1,
            at_ms=command.now_ms,
            job_id=job.job_id,
            attempt=job.attempt + 1,
            worker_id=command.worker_id,
            expires_at_ms=command.now_ms + job.spec.timeout_ms,
        ),
    )


# -- Results: the attempt fence. --------------------------------------------------------


def _current_attempt_or_refuse(state: State, command: Complete | Fail | Release) -> Job:
    job = _job_or_refuse(state, command, command.job_id)
    # An attempt number is an integer: True or 1.0 must not pass for attempt 1.  Any
    # integer that is not the live attempt is simply stale.
    _refuse_if(command, job.job_id, state, check_integer("attempt", command.attempt))
    if job.status is not IN_FLIGHT or command.attempt != job.attempt:
        # A result (or a release) from any lease but the live one is stale: accepting
        # it could complete a job twice, resurrect a finished one, or hand back a
        # lease someone else now holds (spec: fenced results).
        live = f"live attempt is {job.attempt}" if job.status is IN_FLIGHT else "no live lease"
        raise _refuse(
            command,
            job.job_id,
            job,
            STALE_ATTEMPT,
            f"{type(command).__name__} for attempt {command.attempt}; {live}",
        )
    return job


def _decide_complete(state: State, command: Complete) -> tuple[Event, ...]:
    job = _current_attempt_or_refuse(state, command)
    _refuse_if(command, job.job_id, state, _check_jitter_seed(command.jitter_seed))
    problem = check_json(
        "result_json", command.result_json, limits.RESULT_JSON_BYTES_MAX, "RESULT_JSON_BYTES_MAX"
    )
    if problem is not None:
        # The work ran but its result cannot be stored (not JSON, too large).  Refusing
        # would leave the job in flight until its lease expires and lose the reason;
        # the attempt fails instead, saying why (spec: semantics.md, Complete).
        _rule, detail = problem
        error = f"{RESULT_REFUSED_PREFIX}{detail}"
        return (_failure(state, job, command.now_ms, error, command.jitter_seed),)
    return (
        JobCompleted(
            lsn=state.last_lsn + 1,
            at_ms=command.now_ms,
            job_id=job.job_id,
            attempt=job.attempt,
            result_json=command.result_json,
        ),
    )


def _decide_fail(state: State, command: Fail) -> tuple[Event, ...]:
    job = _current_attempt_or_refuse(state, command)
    _refuse_if(command, job.job_id, state, _check_jitter_seed(command.jitter_seed))
    if not isinstance(command.error, str):
        raise _refuse(command, job.job_id, job, ERROR_INVALID, "error must be a string")
    return (_failure(state, job, command.now_ms, command.error, command.jitter_seed),)


def _check_jitter_seed(jitter_seed: int) -> Problem | None:
    return check_range("jitter_seed", jitter_seed, 0, 2**64 - 1, "0..2**64-1")


def _failure(state: State, job: Job, now_ms: int, error: str, jitter_seed: int) -> JobFailed:
    """The live attempt of ``job`` failed with ``error``: its fate and retry time."""
    backoff = backoff_ms(
        job.attempts_used, job.spec.backoff_base_ms, job.spec.backoff_cap_ms, jitter_seed
    )
    ending = attempt_ending(job, now_ms, now_ms + backoff)
    return JobFailed(
        lsn=state.last_lsn + 1,
        at_ms=now_ms,
        job_id=job.job_id,
        attempt=job.attempt,
        # A long error is cut, not refused: refusing would lose the failure itself.
        error=truncate_utf8(error, limits.ERROR_BYTES_MAX),
        target=ending.target,
        retry_at_ms=ending.retry_at_ms,
    )


def _decide_release(state: State, command: Release) -> tuple[Event, ...]:
    job = _current_attempt_or_refuse(state, command)
    # The fence is not rolled back: a late result of this attempt stays stale.  The
    # budget is (the attempt is given back), so the ending is decided on the job with
    # its attempt uncounted, and a release can never lead to DEAD.
    uncounted = replace_fields(job, attempts_used=job.attempts_used - 1)
    ending = attempt_ending(uncounted, command.now_ms, command.now_ms)
    return (
        LeaseReleased(
            lsn=state.last_lsn + 1,
            at_ms=command.now_ms,
            job_id=job.job_id,
            attempt=job.attempt,
            target=ending.target,
            retry_at_ms=ending.retry_at_ms,
        ),
    )


# -- Time passes. -----------------------------------------------------------------------


@attrs.define
class _Emitter:
    """Numbers events and folds each into a running state as it is decided."""

    state: State
    now_ms: int
    events: list[Event] = attrs.Factory(list)

    def emit(self, event_type: Callable[..., E], **fields: Any) -> E:
        event = event_type(lsn=self.state.last_lsn + 1, at_ms=self.now_ms, **fields)
        self.state = evolve(self.state, event)
        self.events.append(event)
        return event


def _decide_tick(state: State, command: Tick) -> tuple[Event, ...]:
    _refuse_if(
        command,
        None,
        state,
        check_range("retention_ms", command.retention_ms, 0, limits.TIME_MS_MAX, "0..TIME_MS_MAX"),
    )
    _refuse_if(
        command,
        None,
        state,
        check_range(
            "finished_jobs_retained_max",
            command.finished_jobs_retained_max,
            0,
            limits.JOBS_MAX,
            "0..JOBS_MAX",
        ),
    )
    emitter = _Emitter(state, command.now_ms)
    _expire_leases(emitter)
    _release_due_jobs(emitter)
    _forget_finished_jobs(emitter, command.retention_ms, command.finished_jobs_retained_max)
    return tuple(emitter.events)


def _expire_leases(emitter: _Emitter) -> None:
    now_ms = emitter.now_ms
    expired = sorted(
        (expires_at_ms, job_id)
        for job_id, expires_at_ms in emitter.state.in_flight.items()
        if expires_at_ms <= now_ms
    )
    for _expires_at_ms, job_id in expired[: limits.TICK_EXPIRIES_MAX]:
        job = emitter.state.jobs[job_id]
        # A timed-out job is retried at once: the timeout already made it wait.
        ending = attempt_ending(job, now_ms, now_ms)
        emitter.emit(
            LeaseExpired,
            job_id=job_id,
            attempt=job.attempt,
            target=ending.target,
            retry_at_ms=ending.retry_at_ms,
        )


def _release_due_jobs(emitter: _Emitter) -> None:
    # Walk the heap in order on a private copy (popping a persistent heap leaves
    # the state's heap untouched), skipping stale entries.
    timers = emitter.state.timers
    jobs = emitter.state.jobs
    released = 0
    entry = timers_peek(timers)
    while (
        entry is not None and entry[0] <= emitter.now_ms and released < limits.TICK_PROMOTIONS_MAX
    ):
        if timer_is_live(jobs, entry):
            emitter.emit(DelayElapsed, job_id=entry[2])
            released += 1
        timers = timers_pop(timers)
        entry = timers_peek(timers)


def _forget_finished_jobs(emitter: _Emitter, retention_ms: int, retained_max: int) -> None:
    # Finished jobs leave in the order they finished: first those over the count
    # bound, then those older than the retention period.
    for _ in range(limits.TICK_FORGETS_MAX):
        finished = emitter.state.finished
        first = fifo_first(finished)
        if first is None:
            return
        job = emitter.state.jobs[first[1]]
        if job.finished_at_ms is None:
            raise BrokenInvariant(f"{job.job_id} is finished but has no finish time")
        too_many = len(finished) > retained_max
        too_old = job.finished_at_ms + retention_ms <= emitter.now_ms
        if not (too_many or too_old):
            return
        emitter.emit(JobForgotten, job_id=job.job_id)


def _decide_recover(state: State, command: Recover) -> tuple[Event, ...]:
    return abandon_leases(state, command.now_ms)


def _decide_abandon_node(state: State, command: AbandonNode) -> tuple[Event, ...]:
    # A name that no worker id can carry is refused rather than matching nothing: a
    # leader that asks to abandon it has mistaken what a node is called.
    _refuse_if(command, None, state, check_node_name(command.node))
    return abandon_node_leases(state, command.now_ms, command.node)


# -- Operator commands. -----------------------------------------------------------------


def _decide_cancel(state: State, command: Cancel) -> tuple[Event, ...]:
    job = _job_or_refuse(state, command, command.job_id)
    lsn, at_ms = state.last_lsn + 1, command.now_ms
    if job.status in (PENDING, DELAYED):
        return (JobCancelled(lsn=lsn, at_ms=at_ms, job_id=job.job_id),)
    if job.status is IN_FLIGHT:
        # The worker is not interrupted; the cancellation takes effect at its result.
        if job.cancel_requested:
            return ()
        return (CancelRequested(lsn=lsn, at_ms=at_ms, job_id=job.job_id),)
    if job.status is CANCELLED:
        return ()
    if job.status not in (COMPLETED, DEAD):
        raise BrokenInvariant(f"cancel of {job.job_id}: unhandled status {job.status.name}")
    raise _refuse(command, job.job_id, job, JOB_FINISHED, "a finished job cannot be cancelled")


def _decide_requeue(state: State, command: Requeue) -> tuple[Event, ...]:
    job = _job_or_refuse(state, command, command.job_id)
    if job.status is not DEAD:
        raise _refuse(command, job.job_id, job, JOB_NOT_DEAD, "only dead jobs can be requeued")
    return (JobRequeued(lsn=state.last_lsn + 1, at_ms=command.now_ms, job_id=job.job_id),)


def _decide_pause(state: State, command: PauseQueue) -> tuple[Event, ...]:
    _refuse_if(command, None, state, check_queue_name(command.queue))
    if command.queue in state.paused:
        return ()
    if len(state.paused) >= limits.PAUSED_QUEUES_MAX:
        raise _refuse(
            command,
            None,
            None,
            PAUSED_QUEUES_MAX_REACHED,
            f"PAUSED_QUEUES_MAX={limits.PAUSED_QUEUES_MAX} queues are paused",
        )
    return (QueuePaused(lsn=state.last_lsn + 1, at_ms=command.now_ms, queue=command.queue),)


def _decide_resume(state: State, command: ResumeQueue) -> tuple[Event, ...]:
    _refuse_if(command, None, state, check_queue_name(command.queue))
    if command.queue not in state.paused:
        return ()
    return (QueueResumed(lsn=state.last_lsn + 1, at_ms=command.now_ms, queue=command.queue),)


_DECIDE: dict[type[Any], Callable[[State, Any], tuple[Event, ...]]] = {
    Enqueue: _decide_enqueue,
    Lease: _decide_lease,
    Complete: _decide_complete,
    Fail: _decide_fail,
    Release: _decide_release,
    Tick: _decide_tick,
    Cancel: _decide_cancel,
    Requeue: _decide_requeue,
    PauseQueue: _decide_pause,
    ResumeQueue: _decide_resume,
    Recover: _decide_recover,
    AbandonNode: _decide_abandon_node,
}
