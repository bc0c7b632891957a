"""The limits of ``model/limits.py``: their relations, and each one enforced exactly at
its boundary (the value at the limit accepted, one past it rejected)."""

from __future__ import annotations

import pytest
from strategies import step

from beaverq.model import (
    Complete,
    Enqueue,
    Event,
    Fail,
    JobCompleted,
    JobEnqueued,
    JobFailed,
    JobSpec,
    Lease,
    LeaseGranted,
    PauseQueue,
    Recover,
    Rejected,
    ResumeQueue,
    State,
    Tick,
    decide,
    evolve,
    initial_state,
    limits,
)
from beaverq.model.lifecycle import JobStatus

LIMIT_NAMES = sorted(name for name in vars(limits) if name.isupper())


def test_the_relations_between_limits_hold():
    """Goal: the limits are consistent with each other and with the time range.

    Method: restate each relation the module asserts at import (so that a change
    there that drops an assertion is caught here), plus facts the rest of the model
    relies on: priorities straddle 0, time is exact in a JSON double, a deadline
    built from the largest delay, backoff and timeout stays far inside the time
    range, and one Recover can abandon every lease.
    """
    assert limits.PRIORITY_MIN < 0 < limits.PRIORITY_MAX
    assert limits.PRIORITY_MIN <= limits.PRIORITY_DEFAULT <= limits.PRIORITY_MAX
    assert 1 <= limits.ATTEMPTS_DEFAULT <= limits.ATTEMPTS_MAX
    assert limits.TIMEOUT_MS_MIN <= limits.TIMEOUT_MS_DEFAULT <= limits.TIMEOUT_MS_MAX
    assert (
        0
        <= limits.BACKOFF_BASE_MS_DEFAULT
        <= limits.BACKOFF_CAP_MS_DEFAULT
        <= limits.BACKOFF_CAP_MS_MAX
    )
    assert limits.IN_FLIGHT_MAX <= limits.JOBS_MAX
    assert limits.TIME_MS_MAX == 2**53 and float(limits.TIME_MS_MAX) == limits.TIME_MS_MAX
    assert (
        limits.DELAY_MS_MAX + limits.BACKOFF_CAP_MS_MAX + limits.TIMEOUT_MS_MAX
        < limits.TIME_MS_MAX // 2
    )
    assert limits.IN_FLIGHT_MAX <= 10 * limits.TICK_EXPIRIES_MAX
    assert 0 <= limits.RETENTION_MS_DEFAULT <= limits.TIME_MS_MAX
    assert 0 <= limits.FINISHED_JOBS_RETAINED_MAX_DEFAULT <= limits.JOBS_MAX
    assert limits.ERROR_BYTES_MAX <= limits.RESULT_JSON_BYTES_MAX


@pytest.mark.parametrize("name", LIMIT_NAMES)
def test_every_limit_is_an_integer_named_with_its_qualifier_last(name):
    """Goal: each limit is a plain int whose name ends in MAX, MIN or DEFAULT.

    Method: read every upper-case name of the module (the naming rule of its
    docstring: "unit and qualifier last").
    """
    value = getattr(limits, name)
    assert type(value) is int
    assert name.endswith(("_MAX", "_MIN", "_DEFAULT")), name


# -- Each limit at its boundary. --------------------------------------------------------

# One in-flight job "a" at attempt 1, so that results reach their checks.
_, IN_FLIGHT_STATE = step(initial_state(), Enqueue(now_ms=0, handler="h", job_id="a"))
_, IN_FLIGHT_STATE = step(IN_FLIGHT_STATE, Lease(now_ms=0, worker_id="w"))


def _enqueue(field, **others):
    return lambda value: Enqueue(**{"now_ms": 1, "handler": "h", field: value, **others})


def _ascii(size: int) -> str:
    return "x" * size


def _json_of_size(size: int) -> str:
    return '"' + "x" * (size - 2) + '"'


# (label, command from a value, value at the limit, value one past, rule one past)
BOUNDARIES = [
    ("job_id bytes", _enqueue("job_id"), _ascii(128), _ascii(129), "job_id_too_long"),
    ("job_id bytes, 2-byte chars", _enqueue("job_id"), "é" * 64, "é" * 64 + "x", "job_id_too_long"),
    ("queue bytes", _enqueue("queue"), _ascii(64), _ascii(65), "queue_too_long"),
    ("handler bytes", _enqueue("handler"), _ascii(200), _ascii(201), "handler_too_long"),
    (
        "handler bytes, 4-byte chars",
        _enqueue("handler"),
        "𝄞" * 50,
        "𝄞" * 50 + "x",
        "handler_too_long",
    ),
    (
        "idempotency_key bytes",
        _enqueue("idempotency_key"),
        _ascii(200),
        _ascii(201),
        "idempotency_key_too_long",
    ),
    (
        "worker_id bytes",
        lambda v: Lease(now_ms=1, worker_id=v),
        _ascii(128),
        _ascii(129),
        "worker_id_too_long",
    ),
    (
        "args_json bytes",
        _enqueue("args_json"),
        _json_of_size(64 * 1024),
        _json_of_size(64 * 1024 + 1),
        "args_json_too_large",
    ),
    (
        "args_json depth",
        _enqueue("args_json"),
        "[" * 64 + "]" * 64,
        "[" * 65 + "]" * 65,
        "args_json_too_deep",
    ),
    ("priority max", _enqueue("priority"), 10, 11, "priority_out_of_range"),
    ("priority min", _enqueue("priority"), -10, -11, "priority_out_of_range"),
    ("max_attempts max", _enqueue("max_attempts"), 100, 101, "max_attempts_out_of_range"),
    ("max_attempts min", _enqueue("max_attempts"), 1, 0, "max_attempts_out_of_range"),
    ("timeout max", _enqueue("timeout_ms"), 86_400_000, 86_400_001, "timeout_ms_out_of_range"),
    ("timeout min", _enqueue("timeout_ms"), 1, 0, "timeout_ms_out_of_range"),
    (
        "delay max",
        _enqueue("delay_ms"),
        366 * 86_400_000,
        366 * 86_400_000 + 1,
        "delay_ms_out_of_range",
    ),
    ("delay min", _enqueue("delay_ms"), 0, -1, "delay_ms_out_of_range"),
    (
        "backoff cap max",
        _enqueue("backoff_cap_ms", backoff_base_ms=0),
        86_400_000,
        86_400_001,
        "backoff_cap_ms_out_of_range",
    ),
    (
        "backoff cap min",
        _enqueue("backoff_cap_ms", backoff_base_ms=0),
        0,
        -1,
        "backoff_cap_ms_out_of_range",
    ),
    (
        "backoff base <= cap",
        _enqueue("backoff_base_ms", backoff_cap_ms=500),
        500,
        501,
        "backoff_base_ms_out_of_range",
    ),
    (
        "backoff base min",
        _enqueue("backoff_base_ms"),
        0,
        -1,
        "backoff_base_ms_out_of_range",
    ),
    ("now max", lambda v: Tick(now_ms=v), 2**52, 2**52 + 1, "now_ms_out_of_range"),
    ("now min", lambda v: Tick(now_ms=v), 0, -1, "now_ms_out_of_range"),
    (
        "jitter_seed max",
        lambda v: Fail(now_ms=1, job_id="a", attempt=1, error="e", jitter_seed=v),
        2**64 - 1,
        2**64,
        "jitter_seed_out_of_range",
    ),
    (
        "jitter_seed min",
        lambda v: Fail(now_ms=1, job_id="a", attempt=1, error="e", jitter_seed=v),
        0,
        -1,
        "jitter_seed_out_of_range",
    ),
    (
        "retention max",
        lambda v: Tick(now_ms=1, retention_ms=v),
        2**53,
        2**53 + 1,
        "retention_ms_out_of_range",
    ),
    (
        "retention min",
        lambda v: Tick(now_ms=1, retention_ms=v),
        0,
        -1,
        "retention_ms_out_of_range",
    ),
    (
        "finished_jobs_retained_max max",
        lambda v: Tick(now_ms=1, finished_jobs_retained_max=v),
        10_000_000,
        10_000_001,
        "finished_jobs_retained_max_out_of_range",
    ),
    (
        "finished_jobs_retained_max min",
        lambda v: Tick(now_ms=1, finished_jobs_retained_max=v),
        0,
        -1,
        "finished_jobs_retained_max_out_of_range",
    ),
]


@pytest.mark.parametrize(
    ("build", "at_limit", "past_limit", "rule"),
    [row[1:] for row in BOUNDARIES],
    ids=[row[0] for row in BOUNDARIES],
)
def test_each_limit_is_enforced_exactly_at_its_boundary(build, at_limit, past_limit, rule):
    """Goal: the value at a limit is accepted and the value one past it is rejected.

    Method: the numbers are written out literally (not read from limits.py), so a
    changed limit fails here until the prose and this table change with it.  Byte
    limits are probed with 1-, 2- and 4-byte UTF-8 characters.  Decide the command
    with each value on a state where its job is in flight.
    """
    decide(IN_FLIGHT_STATE, build(at_limit))
    with pytest.raises(Rejected) as info:
        decide(IN_FLIGHT_STATE, build(past_limit))
    assert info.value.rejection.rule == rule


def test_a_result_past_its_limit_fails_the_attempt_instead_of_being_refused():
    """Goal: a result of exactly RESULT_JSON_BYTES_MAX (64 KiB) bytes completes the
    job; one byte more cannot be stored, and the attempt fails saying so (a result
    is never refused for its content: docs/semantics.md, Complete).

    Method: complete the in-flight job with results at and one past the limit.
    """
    (done,) = decide(
        IN_FLIGHT_STATE,
        Complete(now_ms=1, job_id="a", attempt=1, result_json=_json_of_size(64 * 1024)),
    )
    assert isinstance(done, JobCompleted)
    (failed,) = decide(
        IN_FLIGHT_STATE,
        Complete(now_ms=1, job_id="a", attempt=1, result_json=_json_of_size(64 * 1024 + 1)),
    )
    assert isinstance(failed, JobFailed)
    assert failed.error.startswith("the result was refused: result_json is larger than 65536")


@pytest.mark.parametrize(
    ("error", "kept"),
    [
        ("e" * 4096, "e" * 4096),
        ("e" * 4097, "e" * 4096),
        ("e" * 4095 + "é", "e" * 4095),  # never cut inside a character
        ("𝄞" * 1025, "𝄞" * 1024),
    ],
    ids=["at the limit", "one past", "not inside a 2-byte char", "4-byte chars"],
)
def test_a_long_error_is_cut_to_its_limit_not_refused(error, kept):
    """Goal: Fail's error is cut to ERROR_BYTES_MAX (4 KiB) bytes, on a character
    boundary, and the failure is recorded rather than refused.

    Method: fail the in-flight job with errors around the limit; compare the error
    the event carries.
    """
    (event,) = decide(IN_FLIGHT_STATE, Fail(now_ms=1, job_id="a", attempt=1, error=error))
    assert event.error == kept
    assert len(event.error.encode()) <= limits.ERROR_BYTES_MAX


def test_paused_queues_are_bounded():
    """Goal: at most PAUSED_QUEUES_MAX (1,000) queues are paused; pausing an already
    paused queue at the limit is still a no-op, not a rejection.

    Method: pause 1,000 queues (all accepted), then a new one (rejected
    ``paused_queues_max_reached``), then one of the paused ones again (no events);
    resume one and the new one can be paused.
    """
    state = initial_state()
    for i in range(1_000):
        _, state = step(state, PauseQueue(now_ms=0, queue=f"q{i}"))
    assert len(state.paused) == 1_000
    with pytest.raises(Rejected) as info:
        decide(state, PauseQueue(now_ms=0, queue="one-more"))
    assert info.value.rejection.rule == "paused_queues_max_reached"
    assert decide(state, PauseQueue(now_ms=0, queue="q7")) == ()
    _, state = step(state, ResumeQueue(now_ms=0, queue="q7"))
    assert len(decide(state, PauseQueue(now_ms=0, queue="one-more"))) == 1


def _spec(job_id: str) -> JobSpec:
    return JobSpec(
        job_id=job_id,
        queue="q",
        handler="h",
        args_json="null",
        priority=0,
        max_attempts=1,
        timeout_ms=100,
        backoff_base_ms=0,
        backoff_cap_ms=0,
        idempotency_key=None,
    )


@pytest.fixture(scope="module")
def nearly_full() -> State:
    """IN_FLIGHT_MAX + 1 jobs enqueued and IN_FLIGHT_MAX - 1 of them leased.

    Built by replaying a log (no decide), which is the cheap way to 20,000 events.
    """
    state = initial_state()
    lsn = 0
    log: list[Event] = []
    for i in range(limits.IN_FLIGHT_MAX + 1):
        lsn += 1
        log.append(
            JobEnqueued(
                lsn=lsn, at_ms=0, spec=_spec(f"x{i:05d}"), ready_at_ms=0, target=JobStatus.PENDING
            )
        )
    for i in range(limits.IN_FLIGHT_MAX - 1):
        lsn += 1
        log.append(
            LeaseGranted(
                lsn=lsn,
                at_ms=0,
                job_id=f"x{i:05d}",
                attempt=1,
                worker_id="w",
                expires_at_ms=100,
            )
        )
    for event in log:
        state = evolve(state, event)
    return state


def test_leases_are_bounded_by_in_flight_max(nearly_full):
    """Goal: the IN_FLIGHT_MAX-th lease is granted, the next is rejected
    ``in_flight_max_reached`` naming the pending job it would have taken; with no
    job ready the lease is simply empty.

    Method: on a state with IN_FLIGHT_MAX - 1 leases and two pending jobs, lease
    (accepted), lease again (rejected).
    """
    assert nearly_full.counts.in_flight == limits.IN_FLIGHT_MAX - 1
    leased, full = step(nearly_full, Lease(now_ms=1, worker_id="w"))
    assert len(leased) == 1 and full.counts.in_flight == limits.IN_FLIGHT_MAX
    with pytest.raises(Rejected) as info:
        decide(full, Lease(now_ms=1, worker_id="w"))
    rejection = info.value.rejection
    assert rejection.rule == "in_flight_max_reached"
    assert (rejection.job_id, rejection.status) == (f"x{limits.IN_FLIGHT_MAX:05d}", "pending")
    # Completing one frees a slot.
    job_id = leased[0].job_id
    _, freed = step(full, Complete(now_ms=2, job_id=job_id, attempt=1))
    assert len(decide(freed, Lease(now_ms=2, worker_id="w"))) == 1


def test_one_recover_abandons_in_flight_max_leases(nearly_full):
    """Goal: Recover ends every lease in one decision, even IN_FLIGHT_MAX of them.

    Method: fill the in-flight set to the limit, Recover: IN_FLIGHT_MAX events, and
    the state after them has no lease.
    """
    _, full = step(nearly_full, Lease(now_ms=1, worker_id="w"))
    abandoned, after = step(full, Recover(now_ms=2))
    assert len(abandoned) == limits.IN_FLIGHT_MAX
    assert after.counts.in_flight == 0


def test_a_job_keeps_the_history_of_its_last_attempts_only():
    """Goal: a job's attempt history keeps the ATTEMPT_HISTORY_MAX (20) latest.

    Method: fail a job 25 times (no backoff); its history holds attempts 6..25, the
    last one ended as failed.
    """
    _, state = step(
        initial_state(),
        Enqueue(now_ms=0, handler="h", job_id="a", max_attempts=30, backoff_base_ms=0),
    )
    for attempt in range(1, 26):
        _, state = step(state, Lease(now_ms=attempt, worker_id="w"))
        _, state = step(state, Fail(now_ms=attempt, job_id="a", attempt=attempt, error="e"))
    history = state.jobs["a"].history
    assert [record.attempt for record in history] == list(range(6, 26))
    assert history[-1].outcome == "failed"
