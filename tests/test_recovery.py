"""Recovery after a crash: ``Recover`` abandons every lease the dead process held.

The state rebuilt from snapshot + log still shows jobs in flight whose workers
died with the process.  ``Recover`` (``recovery.abandon_leases``) ends each of
those leases with ``LeaseAbandoned``; the lost attempt counts, so a job that
crashes the process every time it runs still reaches ``dead``.
"""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st
from strategies import history_points, replay_all, step, time_of

from beaverq.model import (
    Cancel,
    Enqueue,
    JobStatus,
    Lease,
    LeaseAbandoned,
    Recover,
    abandon_leases,
    decide,
    initial_state,
    limits,
    replay,
)

PENDING = JobStatus.PENDING
IN_FLIGHT = JobStatus.IN_FLIGHT
DEAD = JobStatus.DEAD
CANCELLED = JobStatus.CANCELLED


@given(history_points(), st.integers(0, 300))
def test_recover_abandons_every_lease_in_expiry_then_id_order(point, step_ms):
    """Goal: Recover emits one LeaseAbandoned per in-flight job, ordered by (lease
    expiry, job id), with the live attempt, and decides each job's fate.

    Method: on a reachable state, brute-force the in-flight jobs from the jobs map
    and compare with the events.  After them no job is in flight; each abandoned
    job keeps its fence and its attempts used (the lost attempt counts) and is
    cancelled if a cancellation was requested, dead if its attempts are used up,
    else pending at once; every other job is unchanged.
    """
    events, states, index = point
    state = states[index]
    now_ms = time_of(events, index) + step_ms
    in_flight = sorted(
        (job.lease_expires_at_ms, job.job_id)
        for job in state.jobs.values()
        if job.status is IN_FLIGHT
    )
    abandoned = decide(state, Recover(now_ms=now_ms))
    assert abandon_leases(state, now_ms) == abandoned
    assert all(isinstance(event, LeaseAbandoned) for event in abandoned)
    assert [event.job_id for event in abandoned] == [job_id for _, job_id in in_flight]
    after = replay(state, abandoned)
    assert after.counts.in_flight == 0
    assert not [job for job in after.jobs.values() if job.status is IN_FLIGHT]
    for event in abandoned:
        before, job = state.jobs[event.job_id], after.jobs[event.job_id]
        assert event.attempt == before.attempt == job.attempt
        assert job.attempts_used == before.attempts_used
        if before.cancel_requested:
            assert job.status is CANCELLED
        elif before.attempts_used >= before.spec.max_attempts:
            assert job.status is DEAD
        else:
            assert job.status is PENDING
            assert job.ready_lsn == event.lsn
        assert job.history[-1].outcome == "abandoned"
    for job_id, job in state.jobs.items():
        if job.status is not IN_FLIGHT:
            assert after.jobs[job_id] == job


@given(history_points(), st.integers(0, 300))
def test_recover_without_leases_emits_nothing(point, step_ms):
    """Goal: Recover on a state with no lease has nothing to do.

    Method: on a reachable state, Recover once (abandoning whatever is in flight),
    then Recover again: no events.  And on the reachable state itself, no events
    exactly when no job is in flight.
    """
    events, states, index = point
    state = states[index]
    now_ms = time_of(events, index) + step_ms
    _, recovered = step(state, Recover(now_ms=now_ms))
    assert decide(recovered, Recover(now_ms=now_ms)) == ()
    has_leases = any(job.status is IN_FLIGHT for job in state.jobs.values())
    assert (decide(state, Recover(now_ms=now_ms)) != ()) == has_leases


@given(st.integers(1, 10), st.integers(0, 3))
@example(limits.ATTEMPTS_MAX, 0)
def test_a_job_that_crashes_the_process_every_time_ends_dead(max_attempts, bystanders):
    """Goal: lease -> crash -> Recover, over and over, ends with the job dead after
    exactly ``max_attempts`` recoveries; the queue does not crash forever.

    Method: enqueue the job first (highest priority, so it is always leased), and
    some pending bystanders; loop lease + Recover.  Recovery n abandons attempt n;
    before the last the job is pending again, after it dead; the bystanders were
    never leased.
    """
    state = initial_state()
    _, state = step(
        state,
        Enqueue(now_ms=0, handler="h", job_id="crasher", max_attempts=max_attempts, priority=1),
    )
    for i in range(bystanders):
        _, state = step(state, Enqueue(now_ms=0, handler="h", job_id=f"b{i}"))
    recoveries = 0
    now_ms = 0
    while state.jobs["crasher"].status is not DEAD:
        assert recoveries < max_attempts, "more recoveries than attempts"
        now_ms += 1
        leased, state = step(state, Lease(now_ms=now_ms, worker_id="w"))
        assert [(event.job_id, event.attempt) for event in leased] == [("crasher", recoveries + 1)]
        abandoned, state = step(state, Recover(now_ms=now_ms + 1))
        recoveries += 1
        assert [(event.job_id, event.attempt) for event in abandoned] == [("crasher", recoveries)]
        expected = DEAD if recoveries == max_attempts else PENDING
        assert state.jobs["crasher"].status is expected
    assert recoveries == max_attempts
    assert state.jobs["crasher"].attempts_used == max_attempts
    assert all(state.jobs[f"b{i}"].status is PENDING for i in range(bystanders))


def test_recover_makes_cancellation_requested_jobs_cancelled():
    """Goal: a job whose cancellation was requested while in flight ends cancelled on
    Recover, whatever attempts it has left; its neighbour without the request is
    re-queued.

    Method: two jobs with attempts to spare, both leased, one cancel-requested;
    Recover abandons both (by expiry: the shorter timeout first) with their fates.
    """
    state = initial_state()
    for command in (
        Enqueue(now_ms=0, handler="h", job_id="keep", timeout_ms=50, max_attempts=5),
        Enqueue(now_ms=0, handler="h", job_id="stop", timeout_ms=20, max_attempts=5),
        Lease(now_ms=0, worker_id="w1"),
        Lease(now_ms=0, worker_id="w2"),
        Cancel(now_ms=1, job_id="stop"),
    ):
        _, state = step(state, command)
    abandoned, state = step(state, Recover(now_ms=2))
    assert [event.job_id for event in abandoned] == ["stop", "keep"]
    assert state.jobs["stop"].status is CANCELLED
    assert state.jobs["keep"].status is PENDING


@given(history_points(), st.data())
def test_recovery_from_a_snapshot_and_an_overlapping_log_decides_the_same(point, data):
    """Goal: the full recovery path (snapshot + log tail, then Recover) gives what
    Recover gives on the state the crashed process had.

    Method: for a reachable state at ``index``, rebuild it from a snapshot at k and
    a log read from j <= k up to ``index``, then decide Recover on both.
    """
    events, states, index = point
    k = data.draw(st.integers(0, index), label="snapshot at")
    j = data.draw(st.integers(0, k), label="log read from")
    rebuilt = replay(replay_all(events[:k]), events[j:index])
    assert rebuilt == states[index]
    now_ms = time_of(events, index) + 1
    assert decide(rebuilt, Recover(now_ms=now_ms)) == decide(states[index], Recover(now_ms=now_ms))
