"""``decide``, one lifecycle rule at a time (docs/semantics.md, "Commands").

Each test states one rule of the prose semantics and checks it either on
reachable states (``strategies.histories``), comparing with a brute-force answer
computed in the test from the state's jobs, or on a small scripted scenario when
the rule is about a sequence (a job running out of attempts, a cancellation that
waits for the result).  Field validation is table-driven at the end.
"""

from __future__ import annotations

import re

import attrs
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from strategies import (
    QUEUES,
    TOKEN_CHARACTERS,
    commands,
    enqueued_events,
    histories,
    history_points,
    is_derived,
    replay_all,
    step,
    time_of,
    valid_enqueues,
)

from beaverq.model import (
    WORKER_SEPARATOR,
    AbandonNode,
    Cancel,
    CancelRequested,
    Complete,
    DelayElapsed,
    Enqueue,
    Fail,
    JobCancelled,
    JobCompleted,
    JobEnqueued,
    JobEvent,
    JobFailed,
    JobForgotten,
    JobRequeued,
    JobStatus,
    Lease,
    LeaseExpired,
    LeaseGranted,
    LeaseReleased,
    PauseQueue,
    QueuePaused,
    QueueResumed,
    Recover,
    Rejected,
    Release,
    Requeue,
    ResumeQueue,
    State,
    Tick,
    decide,
    enqueued_job_id,
    initial_state,
    limits,
    next_ready_job,
    replay,
)

PENDING = JobStatus.PENDING
DELAYED = JobStatus.DELAYED
IN_FLIGHT = JobStatus.IN_FLIGHT
COMPLETED = JobStatus.COMPLETED
DEAD = JobStatus.DEAD
CANCELLED = JobStatus.CANCELLED

# Tests whose input space is a handful of values per case run fewer examples than
# the profile's (a fifth of it), so that the table stays cheap on every profile.
FEW = settings(max_examples=max(10, settings.default.max_examples // 5))


def rejection_of(state: State, command: object) -> Rejected:
    with pytest.raises(Rejected) as info:
        decide(state, command)
    return info.value


def window_ms(attempts_used: int, base_ms: int, cap_ms: int) -> int:
    """The backoff window of the prose: w = min(cap, base * 2**(n-1))."""
    return min(cap_ms, base_ms * 2 ** (attempts_used - 1))


def expected_backoff_ms(attempts_used: int, base_ms: int, cap_ms: int, seed: int) -> int:
    w = window_ms(attempts_used, base_ms, cap_ms)
    return w // 2 + seed % (w - w // 2 + 1)


def scenario(*commands_: object) -> State:
    """The state after the given commands, each of which must be accepted."""
    state = initial_state()
    for command in commands_:
        _, state = step(state, command)
    return state


# -- Enqueue. ---------------------------------------------------------------------------


@given(history_points(), st.data())
def test_enqueue_keeps_every_field(point, data):
    """Goal: an accepted Enqueue records its fields unchanged.

    Method: at a reachable state, enqueue a job whose fields are drawn from their
    whole valid ranges (fresh id and key).  The one ``JobEnqueued`` carries the
    fields, the next LSN, the id given or ``j<LSN>``, and ``ready_at = now + delay``;
    the new job is pending when there is no delay, else delayed, with no attempts.
    """
    events, states, index = point
    state = states[index]
    now_ms = time_of(events, index)
    command = data.draw(valid_enqueues(now_ms), label="enqueue")
    (event,) = decide(state, command)
    assert isinstance(event, JobEnqueued)
    lsn = state.last_lsn + 1
    assert event.lsn == lsn and event.at_ms == now_ms
    expected_id = f"j{lsn}" if command.job_id is None else command.job_id
    assert event.job_id == expected_id
    assert enqueued_job_id(state, command, (event,)) == expected_id
    spec = event.spec
    for field in (
        "queue",
        "handler",
        "args_json",
        "priority",
        "max_attempts",
        "timeout_ms",
        "backoff_base_ms",
        "backoff_cap_ms",
        "idempotency_key",
    ):
        assert getattr(spec, field) == getattr(command, field), field
    assert event.ready_at_ms == now_ms + command.delay_ms
    job = replay(state, (event,)).jobs[expected_id]
    assert job.spec == spec
    assert job.status is (PENDING if command.delay_ms == 0 else DELAYED)
    assert (job.attempt, job.attempts_used, job.cancel_requested) == (0, 0, False)


@given(histories())
def test_derived_ids_are_j_lsn_and_never_repeat(history):
    """Goal: a job enqueued without an id gets ``j<LSN of its JobEnqueued>``, unique.

    Method: the histories give caller ids only from an alphabet without that shape,
    so every ``j<digits>`` id in a log is derived: it must equal ``j`` + the event's
    LSN, and no derived id occurs twice in the log (even after forgetting).
    """
    events, _ = history
    derived = [event for event in enqueued_events(events) if is_derived(event.job_id)]
    for event in derived:
        assert event.job_id == f"j{event.lsn}"
    assert len({event.job_id for event in derived}) == len(derived)


@given(
    history_points(),
    st.text(st.sampled_from("0123456789"), min_size=1, max_size=30),
)
@example(([], [initial_state()], 0), "1")
@example(([], [initial_state()], 0), "007")
def test_caller_ids_of_the_derived_form_are_reserved(point, digits):
    """Goal: a caller may not choose an id of the form ``j<digits>``.

    Method: enqueue with id ``j`` + digits (leading zeros included) at a reachable
    state; the rejection's rule is ``job_id_reserved``, whether or not a job with
    that id exists.
    """
    events, states, index = point
    rejected = rejection_of(
        states[index], Enqueue(now_ms=time_of(events, index), handler="h", job_id="j" + digits)
    )
    assert rejected.rejection.rule == "job_id_reserved"
    assert rejected.rejection.job_id == "j" + digits


@given(history_points(), st.data())
def test_a_known_idempotency_key_returns_the_first_job_and_emits_nothing(point, data):
    """Goal: a second Enqueue with a key in the state stands for the first job.

    Method: at a reachable state, enqueue with a fresh key (one event, job J), then
    again with the same key and otherwise arbitrary valid fields: no events, and
    ``enqueued_job_id`` names J.  Also, for every key already in the state, an
    Enqueue with it emits nothing and names the job the state maps it to.
    """
    events, states, index = point
    state = states[index]
    now_ms = time_of(events, index)
    first = attrs.evolve(data.draw(valid_enqueues(now_ms)), idempotency_key="fresh-key")
    created, state = step(state, first)
    job_id = enqueued_job_id(states[index], first, created)
    assert state.jobs[job_id].spec.idempotency_key == "fresh-key"
    second = attrs.evolve(data.draw(valid_enqueues(now_ms)), idempotency_key="fresh-key")
    assert decide(state, second) == ()
    assert enqueued_job_id(state, second, ()) == job_id
    for key, holder in states[index].idempotency_keys.items():
        again = Enqueue(now_ms=now_ms, handler="h", idempotency_key=key)
        assert decide(states[index], again) == ()
        assert enqueued_job_id(states[index], again, ()) == holder
        assert states[index].jobs[holder].spec.idempotency_key == key


@given(st.sampled_from(["cancel", "complete", "dead"]))
def test_a_forgotten_jobs_key_is_free_again(ending):
    """Goal: when a job is forgotten its idempotency key goes with it.

    Method: enqueue with a key, finish the job (cancelled, completed or dead), then
    Tick with zero retention: the job is forgotten.  An Enqueue with the same key
    now creates a new job with a new id.
    """
    state = scenario(Enqueue(now_ms=0, handler="h", idempotency_key="k", max_attempts=1))
    if ending == "cancel":
        _, state = step(state, Cancel(now_ms=1, job_id="j1"))
    else:
        _, state = step(state, Lease(now_ms=1, worker_id="w"))
        end = (
            Complete(now_ms=2, job_id="j1", attempt=1)
            if ending == "complete"
            else Fail(now_ms=2, job_id="j1", attempt=1, error="x")
        )
        _, state = step(state, end)
    assert decide(state, Enqueue(now_ms=3, handler="h", idempotency_key="k")) == ()
    forgotten, state = step(state, Tick(now_ms=3, retention_ms=0))
    assert [type(event) for event in forgotten] == [JobForgotten]
    assert "k" not in state.idempotency_keys and "j1" not in state.jobs
    (event,) = decide(state, Enqueue(now_ms=4, handler="h", idempotency_key="k"))
    assert isinstance(event, JobEnqueued) and event.job_id == f"j{event.lsn}" != "j1"


@given(history_points())
def test_a_caller_id_in_the_state_is_taken(point):
    """Goal: an Enqueue with the id of a job in the state is rejected ``job_id_taken``.

    Method: at a reachable state, enqueue (without a key) under the id of each job
    the state holds; each is rejected with that rule, naming the job and its status.
    """
    events, states, index = point
    state = states[index]
    for job_id, job in state.jobs.items():
        if is_derived(job_id):
            continue  # reserved, a different rule (tested above)
        rejected = rejection_of(
            state, Enqueue(now_ms=time_of(events, index), handler="h", job_id=job_id)
        )
        assert rejected.rejection.rule == "job_id_taken"
        assert rejected.rejection.status == job.status.value


# -- Lease. -----------------------------------------------------------------------------


def brute_force_lease(state: State) -> str | None:
    """The job a lease should take, computed from the jobs alone."""
    candidates = [
        job
        for job in state.jobs.values()
        if job.status is PENDING and job.spec.queue not in state.paused
    ]
    if not candidates:
        return None
    best = min(candidates, key=lambda job: (-job.spec.priority, job.ready_lsn))
    return best.job_id


@given(history_points(), st.data())
def test_lease_takes_the_highest_priority_then_the_first_ready(point, data):
    """Goal: Lease picks the pending job of an unpaused queue with the highest
    priority, ties by smallest ready LSN; none: no events.

    Method: compare the leased job with a brute-force minimum over the state's jobs
    of (-priority, ready LSN) among pending jobs of unpaused queues (delayed and
    paused ones are thus excluded).  Check the lease's attempt (fence + 1), expiry
    (now + timeout), and that the job becomes in flight with one more attempt used.
    """
    events, states, index = point
    state = states[index]
    now_ms = time_of(events, index) + data.draw(st.integers(0, 10), label="clock step")
    expected = brute_force_lease(state)
    leased = decide(state, Lease(now_ms=now_ms, worker_id="w"))
    next_job = next_ready_job(state)
    assert (None if next_job is None else next_job.job_id) == expected
    if expected is None:
        assert leased == ()
        return
    (event,) = leased
    before = state.jobs[expected]
    assert isinstance(event, LeaseGranted)
    assert event.job_id == expected
    assert event.attempt == before.attempt + 1
    assert event.expires_at_ms == now_ms + before.spec.timeout_ms
    after = replay(state, leased).jobs[expected]
    assert after.status is IN_FLIGHT
    assert after.attempts_used == before.attempts_used + 1


def test_lease_skips_paused_queues_and_delayed_jobs():
    """Goal: the scripted version of the lease order, one rule per line.

    Method: enqueue, in this order, a delayed job of priority 9, a job of priority 5
    in a paused queue, a priority-1 job in queue q3, then priority-1 jobs in q1 and
    q3 again, and one of priority 0.  Leases take: the first priority-1 job (q3),
    then the q1 one (FIFO across queues: smaller ready LSN), then the second q3
    one, then the priority-0 one; then nothing (paused and delayed left).
    Resuming the queue makes its job leasable, and a Tick past the delay the
    delayed one.
    """
    state = scenario(
        Enqueue(now_ms=0, handler="h", job_id="late", priority=9, delay_ms=100),
        Enqueue(now_ms=0, handler="h", job_id="held", priority=5, queue="q2"),
        PauseQueue(now_ms=0, queue="q2"),
        Enqueue(now_ms=0, handler="h", job_id="first", priority=1, queue="q3"),
        Enqueue(now_ms=0, handler="h", job_id="second", priority=1, queue="q1"),
        Enqueue(now_ms=0, handler="h", job_id="third", priority=1, queue="q3"),
        Enqueue(now_ms=0, handler="h", job_id="low", priority=0),
    )
    order = []
    for _ in range(5):
        leased, state = step(state, Lease(now_ms=1, worker_id="w"))
        order.append(leased[0].job_id if leased else None)
    assert order == ["first", "second", "third", "low", None]
    _, state = step(state, ResumeQueue(now_ms=2, queue="q2"))
    leased, state = step(state, Lease(now_ms=2, worker_id="w"))
    assert [event.job_id for event in leased] == ["held"]
    assert decide(state, Lease(now_ms=99, worker_id="w")) == ()
    _, state = step(state, Tick(now_ms=100))
    leased, state = step(state, Lease(now_ms=100, worker_id="w"))
    assert [event.job_id for event in leased] == ["late"]


# -- Results and the attempt fence. -----------------------------------------------------


@given(history_points(), st.data())
def test_a_result_for_any_attempt_but_the_live_one_is_stale(point, data):
    """Goal: Complete/Fail/Release with any attempt other than the live one is refused.

    Method: at a reachable state with jobs, pick a job and an attempt number that
    is not the live one (any number when the job is not in flight).  Complete,
    Fail and Release are all rejected with ``stale_attempt``, naming the job and its status;
    the state still equals the same log replayed afresh.
    """
    events, states, index = point
    state = states[index]
    assume(state.jobs)
    job_id = data.draw(st.sampled_from(sorted(state.jobs)), label="job")
    job = state.jobs[job_id]
    attempt = data.draw(st.integers(0, job.attempt + 3), label="attempt")
    assume(job.status is not IN_FLIGHT or attempt != job.attempt)
    now_ms = time_of(events, index)
    for command in (
        Complete(now_ms=now_ms, job_id=job_id, attempt=attempt),
        Fail(now_ms=now_ms, job_id=job_id, attempt=attempt, error="late"),
        Release(now_ms=now_ms, job_id=job_id, attempt=attempt),
    ):
        rejection = rejection_of(state, command).rejection
        assert (rejection.rule, rejection.job_id, rejection.status) == (
            "stale_attempt",
            job_id,
            job.status.value,
        )
    assert state == replay_all(events[:index])


@given(histories())
def test_results_are_accepted_only_from_the_live_attempt_and_completion_is_final(history):
    """Goal: a job is never completed twice, and results match the live lease.

    Method: walk a reachable history.  Every JobCompleted/JobFailed names the
    attempt of its in-flight pre-state; per job incarnation (enqueue .. forget)
    there is at most one JobCompleted, and after it only JobForgotten may follow.
    """
    events, states = history
    completed_at: dict[str, int] = {}
    for index, event in enumerate(events):
        if not isinstance(event, JobEvent):
            continue
        before = states[index].jobs.get(event.job_id)
        if isinstance(event, JobEnqueued):
            completed_at.pop(event.job_id, None)
        if event.job_id in completed_at:
            assert isinstance(event, JobForgotten), (event, completed_at[event.job_id])
        if isinstance(event, (JobCompleted, JobFailed)):
            assert before is not None and before.status is IN_FLIGHT
            assert event.attempt == before.attempt
        if isinstance(event, JobCompleted):
            completed_at[event.job_id] = event.lsn


@given(
    history_points(),
    st.integers(0, 200),
    st.integers(0, 2**64 - 1),
)
def test_fail_decides_the_fate_and_the_retry_time(point, step_ms, seed):
    """Goal: Fail of the live attempt: cancelled if requested, dead if the attempts
    are used up, else a retry after the prose's backoff.

    Method: at a reachable state, fail every in-flight job in turn (on the same
    state) with the live attempt.  Compare ``retry_at_ms`` and the job's next status
    with the rule computed from the job's fields; the fence is unchanged.
    """
    events, states, index = point
    state = states[index]
    now_ms = time_of(events, index) + step_ms
    for job_id in sorted(state.in_flight):
        job = state.jobs[job_id]
        command = Fail(
            now_ms=now_ms, job_id=job_id, attempt=job.attempt, error="e", jitter_seed=seed
        )
        (event,) = decide(state, command)
        after = replay(state, (event,)).jobs[job_id]
        assert isinstance(event, JobFailed) and event.attempt == job.attempt
        if job.cancel_requested:
            assert (event.retry_at_ms, after.status) == (None, CANCELLED)
        elif job.attempts_used >= job.spec.max_attempts:
            assert (event.retry_at_ms, after.status) == (None, DEAD)
        else:
            spec = job.spec
            delay = expected_backoff_ms(
                job.attempts_used, spec.backoff_base_ms, spec.backoff_cap_ms, seed
            )
            assert event.retry_at_ms == now_ms + delay
            assert after.status is (DELAYED if delay > 0 else PENDING)
        assert (after.attempt, after.attempts_used) == (job.attempt, job.attempts_used)


@given(
    history_points(),
    st.deferred(lambda: bad_json(limits.RESULT_JSON_BYTES_MAX)),  # defined below
    st.integers(0, 2**64 - 1),
)
def test_a_complete_whose_result_cannot_be_stored_fails_the_attempt(point, bad, seed):
    """Goal: Complete of the live attempt with a result that is not JSON text or too
    large is accepted as a failure: the events of a Fail with the command's seed
    and the error "the result was refused: <detail>"; a stale one stays stale.

    Method: at a reachable state, complete every in-flight job in turn (on the same
    state) with the bad result.  The decision must equal the Fail's, field for
    field, with the error it carries; the job's fate follows the failure rule.  The
    same Complete for an attempt that is not live is refused ``stale_attempt``.
    """
    events, states, index = point
    state = states[index]
    result_json, _problem = bad
    now_ms = time_of(events, index)
    for job_id in sorted(state.in_flight):
        job = state.jobs[job_id]
        complete = Complete(
            now_ms=now_ms,
            job_id=job_id,
            attempt=job.attempt,
            result_json=result_json,
            jitter_seed=seed,
        )
        (event,) = decide(state, complete)
        assert isinstance(event, JobFailed), event
        assert event.error.startswith("the result was refused: result_json")
        fail = Fail(
            now_ms=now_ms, job_id=job_id, attempt=job.attempt, error=event.error, jitter_seed=seed
        )
        assert decide(state, fail) == (event,)
        stale = attrs.evolve(complete, attempt=job.attempt + 1)
        assert rejection_of(state, stale).rejection.rule == "stale_attempt"
    assert state == replay_all(events[:index])


def test_a_refused_result_of_the_last_attempt_kills_the_job_and_a_retry_uses_the_seed():
    """Goal: the failure decided for an unstorable result is a real failure: it
    counts the attempt (the last one leads to dead) and its retry time is the
    backoff drawn with Complete's seed.

    Method: a job with two attempts and a backoff window of 8 ms: its first result
    is not JSON and the seed is 3, so it retries at now + 4 + 3 % 5; its second
    result is too large, and it is dead, with the refusal as its error.
    """
    state = scenario(
        Enqueue(
            now_ms=0,
            handler="h",
            job_id="a",
            max_attempts=2,
            backoff_base_ms=8,
            backoff_cap_ms=8,
        ),
        Lease(now_ms=0, worker_id="w"),
    )
    (failed,), state = step(
        state, Complete(now_ms=10, job_id="a", attempt=1, result_json="{", jitter_seed=3)
    )
    assert isinstance(failed, JobFailed) and failed.retry_at_ms == 10 + 4 + 3
    assert state.jobs["a"].status is DELAYED
    _, state = step(state, Tick(now_ms=17))
    _, state = step(state, Lease(now_ms=17, worker_id="w"))
    too_large = '"' + "x" * limits.RESULT_JSON_BYTES_MAX + '"'
    (failed,), state = step(
        state, Complete(now_ms=20, job_id="a", attempt=2, result_json=too_large)
    )
    job = state.jobs["a"]
    assert isinstance(failed, JobFailed) and failed.retry_at_ms is None
    assert (job.status, job.attempts_used, job.history[-1].outcome) == (DEAD, 2, "failed")
    assert job.error == failed.error
    assert job.error.startswith("the result was refused: result_json is larger than")


@given(history_points(), st.integers(0, 200))
def test_a_release_gives_the_attempt_back_uncounted_and_keeps_the_fence(point, step_ms):
    """Goal: Release of the live attempt: the job is pending again (cancelled if a
    cancellation was requested) with the attempts used before its lease, the fence
    unchanged, the attempt recorded as "released"; a pending job re-enters at the
    end of its ready FIFO; and the released attempt's late results are stale.

    Method: at a reachable state, release every in-flight job in turn (on the same
    state) and compare with the rule computed from the job's fields.  Then, on the
    state after the release, Complete, Fail and Release of the same attempt must be
    refused ``stale_attempt``.
    """
    events, states, index = point
    state = states[index]
    now_ms = time_of(events, index) + step_ms
    for job_id in sorted(state.in_flight):
        job = state.jobs[job_id]
        command = Release(now_ms=now_ms, job_id=job_id, attempt=job.attempt)
        (event,) = decide(state, command)
        assert isinstance(event, LeaseReleased)
        assert (event.job_id, event.attempt, event.at_ms) == (job_id, job.attempt, now_ms)
        after_state = replay(state, (event,))
        after = after_state.jobs[job_id]
        # attempts_used was counted at the lease: it is back to its value before it.
        assert after.attempts_used == job.attempts_used - 1
        assert after.attempt == job.attempt
        assert (after.history[-1].attempt, after.history[-1].outcome) == (job.attempt, "released")
        assert after.history[-1].ended_at_ms == now_ms
        if job.cancel_requested:
            assert after.status is CANCELLED
        else:
            assert after.status is PENDING
            assert (after.ready_lsn, after.ready_at_ms) == (event.lsn, now_ms)
            # Last of its FIFO: every other pending job of its queue and priority was
            # ready before it.
            peers = [
                other
                for other in after_state.jobs.values()
                if other.status is PENDING
                and (other.spec.queue, other.spec.priority) == (job.spec.queue, job.spec.priority)
            ]
            assert max(peers, key=lambda other: other.ready_lsn) is after
        for late in (
            Complete(now_ms=now_ms, job_id=job_id, attempt=job.attempt),
            Fail(now_ms=now_ms, job_id=job_id, attempt=job.attempt, error="late"),
            Release(now_ms=now_ms, job_id=job_id, attempt=job.attempt),
        ):
            assert rejection_of(after_state, late).rejection.rule == "stale_attempt"


def test_a_late_result_of_a_released_attempt_is_stale_even_when_the_job_is_leased_again():
    """Goal: after a release the next lease is attempt n+1 (the fence is not rolled
    back), so the released handler's result, arriving while the new attempt runs,
    is refused and cannot complete the job; the new attempt's result is accepted.

    Method: a scripted run: lease (attempt 1), release, lease again (attempt 2);
    Complete of attempt 1 is stale; Complete of attempt 2 completes the job, with
    one counted attempt.
    """
    state = scenario(
        Enqueue(now_ms=0, handler="h", job_id="a", max_attempts=1),
        Lease(now_ms=0, worker_id="w1"),
        Release(now_ms=1, job_id="a", attempt=1),
    )
    assert (state.jobs["a"].status, state.jobs["a"].attempts_used) == (PENDING, 0)
    (granted,), state = step(state, Lease(now_ms=2, worker_id="w2"))
    assert isinstance(granted, LeaseGranted) and granted.attempt == 2
    late = Complete(now_ms=3, job_id="a", attempt=1, result_json='"old"')
    rejection = rejection_of(state, late).rejection
    assert (rejection.rule, rejection.status) == ("stale_attempt", "in_flight")
    _, state = step(state, Complete(now_ms=4, job_id="a", attempt=2, result_json='"new"'))
    job = state.jobs["a"]
    assert (job.status, job.result_json, job.attempts_used) == (COMPLETED, '"new"', 1)
    assert [record.outcome for record in job.history] == ["released", "completed"]


@given(max_attempts=st.integers(1, 4), extra=st.integers(0, 5))
def test_a_job_released_any_number_of_times_never_dies(max_attempts, extra):
    """Goal: releases never use up the budget: a job released max_attempts + 5
    times is pending after each release, never dead; its attempts still count when
    they fail afterwards.

    Method: lease and release max_attempts + 5 times (attempts_used back to 0 each
    time, the fence counting every lease); then fail max_attempts times (zero
    backoff): dead exactly at the last one.  ``extra`` leading failures (fewer than
    the budget) first show that a release restores the count they left, not 0.
    """
    failures_first = min(extra, max_attempts - 1)
    state = scenario(
        Enqueue(
            now_ms=0,
            handler="h",
            job_id="a",
            max_attempts=max_attempts,
            backoff_base_ms=0,
            backoff_cap_ms=0,
        )
    )
    attempt = 0
    for _ in range(failures_first):
        _, state = step(state, Lease(now_ms=0, worker_id="w"))
        attempt += 1
        _, state = step(state, Fail(now_ms=0, job_id="a", attempt=attempt, error="e"))
    for _ in range(max_attempts + 5):
        _, state = step(state, Lease(now_ms=0, worker_id="w"))
        attempt += 1
        assert state.jobs["a"].attempts_used == failures_first + 1
        (released,), state = step(state, Release(now_ms=0, job_id="a", attempt=attempt))
        assert isinstance(released, LeaseReleased)
        job = state.jobs["a"]
        assert (job.status, job.attempt, job.attempts_used) == (PENDING, attempt, failures_first)
    for used in range(failures_first + 1, max_attempts + 1):
        _, state = step(state, Lease(now_ms=0, worker_id="w"))
        attempt += 1
        _, state = step(state, Fail(now_ms=0, job_id="a", attempt=attempt, error="e"))
        assert state.jobs["a"].status is (DEAD if used == max_attempts else PENDING)
    assert state.jobs["a"].attempt == max_attempts + max_attempts + 5


@given(history_points(), st.integers(0, 200))
def test_a_tick_expires_due_leases_and_counts_the_attempt(point, step_ms):
    """Goal: Tick ends every lease with ``expires_at <= now``, by (expiry, id), and
    the timed-out attempt stays counted; the job is re-queued at once, or is dead
    or cancelled.

    Method: brute-force the due leases from the in-flight jobs of a reachable state;
    the Tick (default retention, so nothing is forgotten) must begin with exactly
    those ``LeaseExpired`` events in that order, each with the live attempt.  Then
    check each job's status, attempts and fence; leases not due are untouched.
    """
    events, states, index = point
    state = states[index]
    now_ms = time_of(events, index) + step_ms
    in_flight = [job for job in state.jobs.values() if job.status is IN_FLIGHT]
    due = sorted(
        (job.lease_expires_at_ms, job.job_id)
        for job in in_flight
        if job.lease_expires_at_ms <= now_ms
    )
    batch = decide(state, Tick(now_ms=now_ms))
    expired = [event for event in batch if isinstance(event, LeaseExpired)]
    assert batch[: len(expired)] == tuple(expired)
    assert [event.job_id for event in expired] == [job_id for _, job_id in due]
    after = replay(state, batch)
    for event in expired:
        before, job = state.jobs[event.job_id], after.jobs[event.job_id]
        assert event.attempt == before.attempt == job.attempt
        assert job.attempts_used == before.attempts_used
        if before.cancel_requested:
            assert job.status is CANCELLED
        elif before.attempts_used >= before.spec.max_attempts:
            assert job.status is DEAD
        else:
            assert job.status is PENDING
        assert job.history[-1].outcome == "expired"
    for job in in_flight:
        if job.lease_expires_at_ms > now_ms:
            assert after.jobs[job.job_id].status is IN_FLIGHT


@given(
    max_attempts=st.integers(1, 5),
    endings=st.lists(st.sampled_from(["fail", "expire"]), min_size=5, max_size=5),
    base_ms=st.integers(0, 20),
    seed=st.integers(0, 2**64 - 1),
)
def test_a_job_is_dead_after_max_attempts_and_requeue_gives_a_fresh_budget(
    max_attempts, endings, base_ms, seed
):
    """Goal: attempts (by failure or expiry) count up to ``max_attempts``, then dead;
    a requeue makes it pending with a fresh budget while the fence keeps counting.

    Method: one job, leased and ended ``max_attempts`` times (Fail or a Tick past
    the timeout, as drawn), with a Tick past any backoff in between.  Lease n has
    attempt n and uses n attempts; before the last the job comes back, after it it
    is dead and nothing is leasable.  Requeue: pending, 0 used, no cancellation;
    the next lease has attempt max_attempts + 1; a second round ends dead at
    attempt 2 * max_attempts.
    """
    state = scenario(
        Enqueue(
            now_ms=0,
            handler="h",
            job_id="a",
            max_attempts=max_attempts,
            timeout_ms=10,
            backoff_base_ms=base_ms,
            backoff_cap_ms=20,
        )
    )
    now_ms = 0
    for round_ in range(2):
        for n in range(1, max_attempts + 1):
            leased, state = step(state, Lease(now_ms=now_ms, worker_id="w"))
            assert [event.attempt for event in leased] == [round_ * max_attempts + n]
            assert state.jobs["a"].attempts_used == n
            if endings[n - 1] == "fail":
                _, state = step(
                    state,
                    Fail(
                        now_ms=now_ms,
                        job_id="a",
                        attempt=leased[0].attempt,
                        error="x",
                        jitter_seed=seed,
                    ),
                )
            else:
                now_ms += 10
                ended, state = step(state, Tick(now_ms=now_ms))
                assert [type(event) for event in ended] == [LeaseExpired]
            job = state.jobs["a"]
            if n < max_attempts:
                assert job.status in (PENDING, DELAYED)
                now_ms = max(now_ms, job.ready_at_ms)
                _, state = step(state, Tick(now_ms=now_ms))
                assert state.jobs["a"].status is PENDING
            else:
                assert job.status is DEAD
                assert decide(state, Lease(now_ms=now_ms, worker_id="w")) == ()
        requeued, state = step(state, Requeue(now_ms=now_ms, job_id="a"))
        assert [type(event) for event in requeued] == [JobRequeued]
        job = state.jobs["a"]
        assert (job.status, job.attempts_used, job.cancel_requested) == (PENDING, 0, False)
        assert job.attempt == (round_ + 1) * max_attempts


@given(history_points())
def test_only_dead_jobs_can_be_requeued(point):
    """Goal: Requeue of any job that is not dead is ``job_not_dead``; of an absent one
    ``job_not_found``; of a dead one a ``JobRequeued``.

    Method: try Requeue on every job of a reachable state, and on an absent id.
    """
    events, states, index = point
    state = states[index]
    now_ms = time_of(events, index)
    for job_id, job in state.jobs.items():
        command = Requeue(now_ms=now_ms, job_id=job_id)
        if job.status is DEAD:
            (event,) = decide(state, command)
            assert isinstance(event, JobRequeued) and event.job_id == job_id
        else:
            assert rejection_of(state, command).rejection.rule == "job_not_dead"
    assert rejection_of(state, Requeue(now_ms=now_ms, job_id="nobody")).rejection.rule == (
        "job_not_found"
    )


# -- Cancel. ----------------------------------------------------------------------------


@given(history_points())
def test_cancel_acts_by_the_jobs_status(point):
    """Goal: Cancel: pending/delayed -> cancelled; in flight -> CancelRequested (once);
    cancelled -> no events; completed/dead -> ``job_finished``.

    Method: cancel every job of a reachable state in turn (each on the same state)
    and compare the outcome with the prose, by the job's status.
    """
    events, states, index = point
    state = states[index]
    now_ms = time_of(events, index)
    for job_id, job in state.jobs.items():
        command = Cancel(now_ms=now_ms, job_id=job_id)
        if job.status in (COMPLETED, DEAD):
            rejection = rejection_of(state, command).rejection
            assert (rejection.rule, rejection.status) == ("job_finished", job.status.value)
            continue
        decided = decide(state, command)
        after = replay(state, decided)
        if job.status in (PENDING, DELAYED):
            assert [type(event) for event in decided] == [JobCancelled]
            assert after.jobs[job_id].status is CANCELLED
        elif job.status is IN_FLIGHT and not job.cancel_requested:
            assert [type(event) for event in decided] == [CancelRequested]
            assert after.jobs[job_id].status is IN_FLIGHT
            assert after.jobs[job_id].cancel_requested
        else:
            assert decided == ()


@given(
    st.sampled_from(["complete", "fail", "expire", "recover", "abandon_node", "release"]),
    st.integers(1, 3),
)
def test_a_cancellation_requested_in_flight_takes_effect_at_the_result(ending, max_attempts):
    """Goal: an in-flight job whose cancellation was requested keeps running; its
    next Fail, expiry, abandonment or release makes it cancelled, a Complete completed.

    Method: enqueue, lease, cancel (CancelRequested; a second cancel emits nothing),
    then end the attempt in the drawn way and check the final status (whatever
    attempts remain) and that a JobFailed carries no retry time.
    """
    state = scenario(
        Enqueue(now_ms=0, handler="h", job_id="a", max_attempts=max_attempts, timeout_ms=5),
        Lease(now_ms=0, worker_id="n-w0"),
        Cancel(now_ms=1, job_id="a"),
    )
    assert state.jobs["a"].status is IN_FLIGHT and state.jobs["a"].cancel_requested
    assert decide(state, Cancel(now_ms=1, job_id="a")) == ()
    command = {
        "complete": Complete(now_ms=2, job_id="a", attempt=1),
        "fail": Fail(now_ms=2, job_id="a", attempt=1, error="x"),
        "expire": Tick(now_ms=5),
        "recover": Recover(now_ms=2),
        "abandon_node": AbandonNode(now_ms=2, node="n"),
        "release": Release(now_ms=2, job_id="a", attempt=1),
    }[ending]
    ended, state = step(state, command)
    assert len(ended) == 1
    if isinstance(ended[0], JobFailed):
        assert ended[0].retry_at_ms is None
    assert state.jobs["a"].status is (COMPLETED if ending == "complete" else CANCELLED)
    if ending == "release":
        # Cancelled, and the released attempt still does not count.
        assert (state.jobs["a"].attempt, state.jobs["a"].attempts_used) == (1, 0)


# -- Pause and resume. ------------------------------------------------------------------


@given(history_points(), st.sampled_from(QUEUES))
def test_pause_and_resume_are_idempotent_and_fence_leases(point, queue):
    """Goal: pausing a paused queue / resuming an unpaused one emits nothing; after a
    pause no lease takes a job of that queue; after a resume the queue is open.

    Method: at a reachable state, pause the queue (event iff it was not paused),
    check no lease in a row of leases takes a job of it, resume (one event), and
    check the lease choice agrees with the brute force again.
    """
    events, states, index = point
    state = states[index]
    now_ms = time_of(events, index)
    paused = decide(state, PauseQueue(now_ms=now_ms, queue=queue))
    was_paused = queue in state.paused
    assert [type(event) for event in paused] == ([] if was_paused else [QueuePaused])
    state = replay(state, paused)
    assert queue in state.paused
    assert decide(state, PauseQueue(now_ms=now_ms, queue=queue)) == ()
    probe = state
    while True:
        leased, probe = step(probe, Lease(now_ms=now_ms, worker_id="w"))
        if not leased:
            break
        assert probe.jobs[leased[0].job_id].spec.queue != queue
    resumed, state = step(state, ResumeQueue(now_ms=now_ms, queue=queue))
    assert [type(event) for event in resumed] == [QueueResumed]
    assert decide(state, ResumeQueue(now_ms=now_ms, queue=queue)) == ()
    leased = decide(state, Lease(now_ms=now_ms, worker_id="w"))
    assert [event.job_id for event in leased] == [
        job_id for job_id in [brute_force_lease(state)] if job_id is not None
    ]


# -- Tick: release and retention. -------------------------------------------------------


def brute_force_forgets(state: State, now_ms: int, retention_ms: int, retained_max: int):
    """The jobs retention forgets, oldest finished first, computed from the jobs."""
    finished = sorted(
        (job for job in state.jobs.values() if job.status in (COMPLETED, DEAD, CANCELLED)),
        key=lambda job: job.last_lsn,  # the LSN of the event that finished it
    )
    forgotten = []
    left = len(finished)
    for job in finished:
        if left > retained_max or job.finished_at_ms + retention_ms <= now_ms:
            forgotten.append(job.job_id)
            left -= 1
        else:
            break
    return forgotten


@given(
    history_points(),
    st.integers(0, 300),
    st.integers(0, 150),
    st.integers(0, 5),
)
def test_a_tick_releases_due_jobs_then_forgets_the_oldest_finished(
    point, step_ms, retention_ms, retained_max
):
    """Goal: Tick's phases in order: expiries, then the due delayed jobs by
    (ready_at, ready LSN), then finished jobs forgotten oldest first while too many
    or too old.

    Method: at a reachable state, Tick; check the events come grouped by phase.
    Brute-force the released jobs from the state after the expiries, and the
    forgotten ones from the state after the releases (finished jobs sorted by the
    LSN that finished them); compare both lists.  Then the same Tick again has
    nothing to do.
    """
    events, states, index = point
    state = states[index]
    now_ms = time_of(events, index) + step_ms
    tick = Tick(now_ms=now_ms, retention_ms=retention_ms, finished_jobs_retained_max=retained_max)
    batch = decide(state, tick)
    phases = [{LeaseExpired: 0, DelayElapsed: 1, JobForgotten: 2}[type(event)] for event in batch]
    assert phases == sorted(phases)
    expired = phases.count(0)
    released = phases.count(1)
    after_expiries = replay(state, batch[:expired])
    due = sorted(
        (job.ready_at_ms, job.ready_lsn, job.job_id)
        for job in after_expiries.jobs.values()
        if job.status is DELAYED and job.ready_at_ms <= now_ms
    )
    assert [event.job_id for event in batch[expired : expired + released]] == [
        job_id for _, _, job_id in due
    ]
    after_releases = replay(state, batch[: expired + released])
    assert [event.job_id for event in batch[expired + released :]] == brute_force_forgets(
        after_releases, now_ms, retention_ms, retained_max
    )
    assert decide(replay(state, batch), tick) == ()


def test_retention_boundaries_by_age_and_by_count():
    """Goal: a finished job is too old exactly when ``finished_at + retention <= now``,
    and too many exactly when more than ``finished_jobs_retained_max`` are finished.

    Method: three jobs cancelled at 10, 20, 30.  With retention 15: a Tick at 24
    forgets nothing (10 + 15 > 24), at 25 the first, at 35 the first two.  With no age limit
    and a bound of 3 nothing goes; with 2, the oldest; with 0, all, oldest first.
    """
    state = scenario(*(Enqueue(now_ms=0, handler="h", job_id=i) for i in "abc"))
    for now_ms, job_id in ((10, "a"), (20, "b"), (30, "c")):
        _, state = step(state, Cancel(now_ms=now_ms, job_id=job_id))

    def forgotten(now_ms: int, retention_ms: int, retained_max: int) -> list[str]:
        tick = Tick(
            now_ms=now_ms, retention_ms=retention_ms, finished_jobs_retained_max=retained_max
        )
        return [event.job_id for event in decide(state, tick)]

    never = limits.TIME_MS_MAX
    assert forgotten(24, 15, 3) == []
    assert forgotten(25, 15, 3) == ["a"]
    assert forgotten(34, 15, 3) == ["a"]
    assert forgotten(35, 15, 3) == ["a", "b"]
    assert forgotten(45, 15, 3) == ["a", "b", "c"]
    assert forgotten(45, never, 3) == []
    assert forgotten(45, never, 2) == ["a"]
    assert forgotten(45, never, 0) == ["a", "b", "c"]
    assert forgotten(9, 0, 3) == []  # a clock behind the finish times forgets nothing


def _many(count: int, **fields: object) -> list[Enqueue]:
    return [Enqueue(now_ms=0, handler="h", job_id=f"x{i:05d}", **fields) for i in range(count)]


def test_a_tick_expires_at_most_its_budget_of_leases_in_order():
    """Goal: one Tick expires at most ``TICK_EXPIRIES_MAX`` leases, the earliest by
    (expiry, id); the next Tick carries on.

    Method: lease budget + 1 jobs with scattered timeouts, Tick past every expiry:
    the first Tick expires exactly the budget, in the brute-force order, the second
    the one left.
    """
    count = limits.TICK_EXPIRIES_MAX + 1
    state = initial_state()
    for i, command in enumerate(_many(count)):
        _, state = step(state, attrs.evolve(command, timeout_ms=1 + (i * 7919) % 97))
    for _ in range(count):
        _, state = step(state, Lease(now_ms=0, worker_id="w"))
    expected = sorted((expires, job_id) for job_id, expires in state.in_flight.items())
    first, state = step(state, Tick(now_ms=100))
    second, state = step(state, Tick(now_ms=100))
    assert all(isinstance(event, LeaseExpired) for event in first + second)
    assert [event.job_id for event in first] == [j for _, j in expected[:-1]]
    assert [event.job_id for event in second] == [expected[-1][1]]


def test_a_tick_releases_at_most_its_budget_of_delayed_jobs_in_order():
    """Goal: one Tick releases at most ``TICK_PROMOTIONS_MAX`` delayed jobs, by
    (ready_at, ready LSN); the next Tick carries on.

    Method: budget + 1 jobs with scattered delays, Tick past them all, twice.
    """
    count = limits.TICK_PROMOTIONS_MAX + 1
    state = initial_state()
    for i, command in enumerate(_many(count)):
        _, state = step(state, attrs.evolve(command, delay_ms=1 + (i * 7919) % 97))
    expected = sorted((job.ready_at_ms, job.ready_lsn, job.job_id) for job in state.jobs.values())
    first, state = step(state, Tick(now_ms=100))
    second, state = step(state, Tick(now_ms=100))
    assert all(isinstance(event, DelayElapsed) for event in first + second)
    assert [event.job_id for event in first] == [j for _, _, j in expected[:-1]]
    assert [event.job_id for event in second] == [expected[-1][2]]


def test_a_tick_forgets_at_most_its_budget_of_finished_jobs_oldest_first():
    """Goal: one Tick forgets at most ``TICK_FORGETS_MAX`` finished jobs, in the order
    they finished; the next Tick carries on.

    Method: budget + 1 jobs cancelled in an order unlike their ids, Tick with zero
    retention twice.
    """
    count = limits.TICK_FORGETS_MAX + 1
    state = initial_state()
    for command in _many(count):
        _, state = step(state, command)
    order = sorted(state.jobs, key=lambda job_id: (int(job_id[1:]) * 7919) % count)
    for now_ms, job_id in enumerate(order, start=1):
        _, state = step(state, Cancel(now_ms=now_ms, job_id=job_id))
    first, state = step(state, Tick(now_ms=count + 1, retention_ms=0))
    second, state = step(state, Tick(now_ms=count + 1, retention_ms=0))
    assert [event.job_id for event in first] == order[:-1]
    assert [event.job_id for event in second] == order[-1:]
    assert not state.jobs


# -- Rejections. ------------------------------------------------------------------------

JOB_COMMANDS = (Complete, Fail, Cancel, Requeue)


@st.composite
def hostile_commands(draw: st.DrawFn, state: State, now_ms: int):
    """Commands likely to be refused: aimed at a job of the state (or an absent one)
    in a way its status may not allow, or with a bad field."""
    job_id = draw(st.sampled_from([*sorted(state.jobs), "nobody"]))
    job = state.jobs.get(job_id)
    attempt = draw(st.integers(0, 2 + (0 if job is None else job.attempt)))
    return draw(
        st.sampled_from(
            [
                Cancel(now_ms=now_ms, job_id=job_id),
                Requeue(now_ms=now_ms, job_id=job_id),
                Complete(now_ms=now_ms, job_id=job_id, attempt=attempt),
                Fail(now_ms=now_ms, job_id=job_id, attempt=attempt, error="e"),
                Enqueue(now_ms=now_ms, handler="h", job_id=job_id),
                Enqueue(now_ms=now_ms, handler="h", job_id=job_id, priority=99),
                Lease(now_ms=now_ms, worker_id=""),
                Tick(now_ms=now_ms, retention_ms=-1),
                PauseQueue(now_ms=now_ms, queue="_bad"),
                Recover(now_ms=-1),
                AbandonNode(now_ms=now_ms, node=f"n{WORKER_SEPARATOR}1"),
            ]
        )
    )


@given(history_points(), st.data())
def test_every_rejection_names_command_job_state_and_rule(point, data):
    """Goal: a refused command raises Rejected whose fields and message name the
    command, the job, its status and the rule, and leaves the state as it was.

    Method: decide commands aimed at a reachable state, ordinary or hostile (stale,
    finished, absent, badly formed).  For each rejection: ``command`` is the class
    name; a job command names its job; ``status`` is that job's status in the
    state (None if absent); the rule is snake_case; the message is ``describe()``
    and contains all of them.  The state equals the same log replayed afresh.
    """
    events, states, index = point
    state = states[index]
    now_ms = time_of(events, index)
    command = data.draw(
        st.one_of(commands(state, now_ms), hostile_commands(state, now_ms)), label="command"
    )
    try:
        decide(state, command)
    except Rejected as rejected:
        error = rejected
    else:
        return
    rejection = error.rejection
    assert rejection.command == type(command).__name__
    if isinstance(command, JOB_COMMANDS):
        assert rejection.job_id == command.job_id
    if rejection.job_id is not None:
        job = state.jobs.get(rejection.job_id)
        assert rejection.status == (None if job is None else job.status.value)
        if job is None and isinstance(command, JOB_COMMANDS):
            assert rejection.rule == "job_not_found"  # (their fields here are valid)
    assert re.fullmatch(r"[a-z][a-z0-9_]*", rejection.rule)
    assert rejection.detail
    message = str(error)
    assert message == rejection.describe()
    assert message.startswith(f"{rejection.command} rejected:")
    for part in (rejection.rule, rejection.detail):
        assert part in message
    if rejection.job_id is not None:
        assert repr(rejection.job_id) in message
    if rejection.status is not None:
        assert f"(state: {rejection.status})" in message
    assert state == replay_all(events[:index])


# -- Field validation, table-driven. ----------------------------------------------------

# A state with one in-flight job "a" at attempt 1, so that results reach their checks.
IN_FLIGHT_STATE = scenario(
    Enqueue(now_ms=0, handler="h", job_id="a"), Lease(now_ms=0, worker_id="w")
)

NOT_INTEGERS = st.one_of(st.floats(allow_nan=False), st.booleans(), st.none(), st.text(max_size=3))
NOT_STRINGS = st.one_of(st.integers(), st.binary(min_size=1, max_size=3), st.lists(st.none()))
WHITE_OR_CONTROL = st.sampled_from(
    [" ", "\t", "\n", "\r", "\x00", "\x1f", "\x7f", "\x85", "\xa0", "\u2028", "\u200b", "\u3000"]
)
Bad = st.SearchStrategy[tuple[object, str]]  # (value, rule suffix)


def bad_tokens(bytes_max: int) -> Bad:
    """Values that break the token rules: empty, spaced, not a string, too long."""
    spaced = st.builds(
        lambda a, c, b: a + c + b,
        st.text(TOKEN_CHARACTERS, max_size=3),
        WHITE_OR_CONTROL,
        st.text(TOKEN_CHARACTERS, max_size=3),
    )
    too_long = st.one_of(
        st.text(TOKEN_CHARACTERS, min_size=bytes_max + 1, max_size=bytes_max + 8),
        # Few characters, many bytes: the limit is in UTF-8 bytes.
        st.just("é" * (bytes_max // 2 + 1)),
        st.just("𝄞" * (bytes_max // 4 + 1)),
    )
    return st.one_of(
        st.just(("", "invalid")),
        spaced.map(lambda v: (v, "invalid")),
        NOT_STRINGS.map(lambda v: (v, "invalid")),
        too_long.map(lambda v: (v, "too_long")),
    )


def bad_node_names() -> Bad:
    """Bad tokens, and good tokens that hold the worker separator (model/nodes.py)."""
    holding = st.builds(
        lambda a, b: a + WORKER_SEPARATOR + b,
        st.text(TOKEN_CHARACTERS, max_size=3),
        st.text(TOKEN_CHARACTERS, max_size=3),
    )
    return st.one_of(bad_tokens(limits.NODE_NAME_BYTES_MAX), holding.map(lambda v: (v, "invalid")))


def bad_queue_names() -> Bad:
    """Bad tokens, and good tokens that do not match ``[A-Za-z0-9][A-Za-z0-9_.:-]*``."""
    misfits = st.sampled_from(["_q", "-q", ".q", "q/1", "q#", "é", "q*", "Ω1", "q,r"])
    return st.one_of(bad_tokens(limits.QUEUE_NAME_BYTES_MAX), misfits.map(lambda v: (v, "invalid")))


def bad_ranges(low: int, high: int) -> Bad:
    return st.one_of(
        st.integers(max_value=low - 1).map(lambda v: (v, "out_of_range")),
        st.integers(min_value=high + 1).map(lambda v: (v, "out_of_range")),
        NOT_INTEGERS.map(lambda v: (v, "invalid")),
    )


def bad_json(bytes_max: int) -> Bad:
    invalid = st.sampled_from(
        ["", " ", "{", "[1,]", "nan", "NaN", "[NaN]", "Infinity", "-Infinity", "{'a': 1}", "1 2"]
    )
    too_large = st.integers(bytes_max - 1, bytes_max + 5).map(lambda n: '"' + "x" * n + '"')
    return st.one_of(
        invalid.map(lambda v: (v, "invalid")),
        NOT_STRINGS.map(lambda v: (v, "invalid")),
        too_large.map(lambda v: (v, "too_large")),
    )


def _enqueue(field: str):
    return lambda value: Enqueue(**{"now_ms": 1, "handler": "h", field: value})


# label -> (rule prefix, bad values, command built from a value, state decided on)
FIELD_TABLE = {
    "Enqueue.job_id": ("job_id", bad_tokens(limits.JOB_ID_BYTES_MAX), _enqueue("job_id")),
    "Enqueue.queue": ("queue", bad_queue_names(), _enqueue("queue")),
    "Enqueue.handler": ("handler", bad_tokens(limits.HANDLER_NAME_BYTES_MAX), _enqueue("handler")),
    "Enqueue.args_json": ("args_json", bad_json(limits.ARGS_JSON_BYTES_MAX), _enqueue("args_json")),
    "Enqueue.priority": (
        "priority",
        bad_ranges(limits.PRIORITY_MIN, limits.PRIORITY_MAX),
        _enqueue("priority"),
    ),
    "Enqueue.max_attempts": (
        "max_attempts",
        bad_ranges(1, limits.ATTEMPTS_MAX),
        _enqueue("max_attempts"),
    ),
    "Enqueue.timeout_ms": (
        "timeout_ms",
        bad_ranges(limits.TIMEOUT_MS_MIN, limits.TIMEOUT_MS_MAX),
        _enqueue("timeout_ms"),
    ),
    "Enqueue.delay_ms": ("delay_ms", bad_ranges(0, limits.DELAY_MS_MAX), _enqueue("delay_ms")),
    "Enqueue.backoff_cap_ms": (
        "backoff_cap_ms",
        bad_ranges(0, limits.BACKOFF_CAP_MS_MAX),
        # A base of 0 is valid under any cap, so only the cap is wrong.
        lambda v: Enqueue(now_ms=1, handler="h", backoff_cap_ms=v, backoff_base_ms=0),
    ),
    "Enqueue.backoff_base_ms": (
        "backoff_base_ms",
        bad_ranges(0, 1_000),
        lambda v: Enqueue(now_ms=1, handler="h", backoff_cap_ms=1_000, backoff_base_ms=v),
    ),
    "Enqueue.idempotency_key": (
        "idempotency_key",
        bad_tokens(limits.IDEMPOTENCY_KEY_BYTES_MAX),
        _enqueue("idempotency_key"),
    ),
    "AbandonNode.node": ("node", bad_node_names(), lambda v: AbandonNode(now_ms=1, node=v)),
    "Lease.worker_id": (
        "worker_id",
        bad_tokens(limits.WORKER_ID_BYTES_MAX),
        lambda v: Lease(now_ms=1, worker_id=v),
    ),
    "Complete.jitter_seed": (
        "jitter_seed",
        bad_ranges(0, 2**64 - 1),
        lambda v: Complete(now_ms=1, job_id="a", attempt=1, jitter_seed=v),
    ),
    "Fail.jitter_seed": (
        "jitter_seed",
        bad_ranges(0, 2**64 - 1),
        lambda v: Fail(now_ms=1, job_id="a", attempt=1, error="x", jitter_seed=v),
    ),
    "Tick.retention_ms": (
        "retention_ms",
        bad_ranges(0, limits.TIME_MS_MAX),
        lambda v: Tick(now_ms=1, retention_ms=v),
    ),
    "Tick.finished_jobs_retained_max": (
        "finished_jobs_retained_max",
        bad_ranges(0, limits.JOBS_MAX),
        lambda v: Tick(now_ms=1, finished_jobs_retained_max=v),
    ),
    "PauseQueue.queue": ("queue", bad_queue_names(), lambda v: PauseQueue(now_ms=1, queue=v)),
    "ResumeQueue.queue": ("queue", bad_queue_names(), lambda v: ResumeQueue(now_ms=1, queue=v)),
    "Complete.job_id": (
        "job_id",
        bad_tokens(limits.JOB_ID_BYTES_MAX),
        lambda v: Complete(now_ms=1, job_id=v, attempt=1),
    ),
    "Fail.job_id": (
        "job_id",
        bad_tokens(limits.JOB_ID_BYTES_MAX),
        lambda v: Fail(now_ms=1, job_id=v, attempt=1, error="x"),
    ),
    "Release.job_id": (
        "job_id",
        bad_tokens(limits.JOB_ID_BYTES_MAX),
        lambda v: Release(now_ms=1, job_id=v, attempt=1),
    ),
    "Cancel.job_id": (
        "job_id",
        bad_tokens(limits.JOB_ID_BYTES_MAX),
        lambda v: Cancel(now_ms=1, job_id=v),
    ),
    "Requeue.job_id": (
        "job_id",
        bad_tokens(limits.JOB_ID_BYTES_MAX),
        lambda v: Requeue(now_ms=1, job_id=v),
    ),
}

# Every command checks now_ms first.
VALID_COMMANDS = {
    "Enqueue": Enqueue(now_ms=1, handler="h"),
    "Lease": Lease(now_ms=1, worker_id="w"),
    "Complete": Complete(now_ms=1, job_id="a", attempt=1),
    "Fail": Fail(now_ms=1, job_id="a", attempt=1, error="x"),
    "Release": Release(now_ms=1, job_id="a", attempt=1),
    "Tick": Tick(now_ms=1),
    "Cancel": Cancel(now_ms=1, job_id="a"),
    "Requeue": Requeue(now_ms=1, job_id="a"),
    "PauseQueue": PauseQueue(now_ms=1, queue="q"),
    "ResumeQueue": ResumeQueue(now_ms=1, queue="q"),
    "Recover": Recover(now_ms=1),
    "AbandonNode": AbandonNode(now_ms=1, node="n1"),
}
for _name, _command in VALID_COMMANDS.items():
    FIELD_TABLE[f"{_name}.now_ms"] = (
        "now_ms",
        bad_ranges(0, limits.TIME_MS_MAX),
        (lambda command: lambda v: attrs.evolve(command, now_ms=v))(_command),
    )


def test_the_valid_commands_of_the_table_are_accepted():
    """Goal: the table's base commands are valid, so each row breaks one field only.

    Method: decide every base command (and the Enqueue of each row with a good value
    in its field) on the in-flight state: none is rejected except Requeue of the
    live job, which is not dead (``job_not_dead``, a state rule, not a field rule).
    """
    for name, command in VALID_COMMANDS.items():
        if name == "Requeue":
            assert rejection_of(IN_FLIGHT_STATE, command).rejection.rule == "job_not_dead"
        else:
            decide(IN_FLIGHT_STATE, command)


@pytest.mark.parametrize("label", sorted(FIELD_TABLE))
@FEW
@given(data=st.data())
def test_a_bad_field_value_gives_the_documented_rule(label, data):
    """Goal: each validated field, given a bad value, yields ``<field>_<problem>``.

    Method: table-driven: for each field, draw an out-of-range integer, a
    non-integer, an empty / spaced / over-long (in UTF-8 bytes) token, a
    non-string, invalid or over-large JSON, as fits the field; put it in an
    otherwise valid command and decide it on a state where the command's job is
    in flight.  The rule is the field's name and the problem.
    """
    prefix, bad_values, build = FIELD_TABLE[label]
    value, problem = data.draw(bad_values, label="bad value")
    rejection = rejection_of(IN_FLIGHT_STATE, build(value)).rejection
    assert rejection.rule == f"{prefix}_{problem}"
    assert rejection.detail


MALFORMED_JOB_IDS = st.one_of(
    NOT_STRINGS, st.dictionaries(st.text(max_size=2), st.none(), max_size=2), st.sets(st.none())
)
JOB_ID_COMMANDS = {
    "Enqueue": lambda v: Enqueue(now_ms=1, handler="h", job_id=v),
    "Complete": lambda v: Complete(now_ms=1, job_id=v, attempt=1),
    "Fail": lambda v: Fail(now_ms=1, job_id=v, attempt=1, error="x"),
    "Release": lambda v: Release(now_ms=1, job_id=v, attempt=1),
    "Cancel": lambda v: Cancel(now_ms=1, job_id=v),
    "Requeue": lambda v: Requeue(now_ms=1, job_id=v),
}


@pytest.mark.parametrize("kind", sorted(JOB_ID_COMMANDS))
@FEW
@given(job_id=MALFORMED_JOB_IDS)
@example(job_id=[])  # regression: an unhashable id crashed the job lookup of the rejection
@example(job_id={})
def test_a_malformed_job_id_is_rejected_not_a_crash(kind, job_id):
    """Goal: a job id that is not a string, even an unhashable one, is refused with
    ``job_id_invalid``, never a TypeError from looking it up in the state.

    Method: decide each job command with such an id on a state with jobs.
    """
    rejection = rejection_of(IN_FLIGHT_STATE, JOB_ID_COMMANDS[kind](job_id)).rejection
    assert rejection.rule == "job_id_invalid"
    assert rejection.status is None


# The prose's order of the Enqueue field checks, with one bad value for each.
ENQUEUE_CHECK_ORDER = [
    ("now_ms", -1, "now_ms_out_of_range"),
    ("job_id", "", "job_id_invalid"),
    ("queue", "_q", "queue_invalid"),
    ("handler", "", "handler_invalid"),
    ("args_json", "{", "args_json_invalid"),
    ("priority", limits.PRIORITY_MAX + 1, "priority_out_of_range"),
    ("max_attempts", 0, "max_attempts_out_of_range"),
    ("timeout_ms", 0, "timeout_ms_out_of_range"),
    ("delay_ms", -1, "delay_ms_out_of_range"),
    ("backoff_cap_ms", -1, "backoff_cap_ms_out_of_range"),
    ("backoff_base_ms", -1, "backoff_base_ms_out_of_range"),
    ("idempotency_key", "", "idempotency_key_invalid"),
]


@given(st.sets(st.integers(0, len(ENQUEUE_CHECK_ORDER) - 1), min_size=1))
def test_enqueue_checks_its_fields_in_the_documented_order(broken):
    """Goal: with several bad fields, the rejection names the first in the prose's order.

    Method: break a set of Enqueue fields at once; the rule is that of the field
    that comes first in ``ENQUEUE_CHECK_ORDER``.
    """
    fields = {"now_ms": 1, "handler": "h"}
    for index in broken:
        name, value, _ = ENQUEUE_CHECK_ORDER[index]
        fields[name] = value
    rejection = rejection_of(initial_state(), Enqueue(**fields)).rejection
    assert rejection.rule == ENQUEUE_CHECK_ORDER[min(broken)][2]
