"""Checkpoints: a state as plain parts, restored exactly (model/checkpoint.py).

A snapshot stores ``checkpoint_of(state)``; recovery continues from
``restore(checkpoint)``.  If the two were not exact inverses on every reachable
state, recovery from a snapshot would diverge from recovery by replay.  And a
checkpoint that does not describe a consistent state (the counts disagree with
the jobs, a job appears twice) must be refused loudly at restore, not turned into
a state that goes wrong later.
"""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from storage_support import WORKLOAD_COMMANDS
from strategies import commands, histories, run, time_of

from beaverq.model import (
    Cancel,
    Enqueue,
    Fail,
    JobStatus,
    Lease,
    PauseQueue,
    Rejected,
    Tick,
    decide,
    evolve,
)
from beaverq.model.checkpoint import checkpoint_of, restore
from beaverq.model.errors import BrokenInvariant
from beaverq.model.state import timer_is_live
from beaverq.spec.invariants import check_all


@given(histories())
def test_restore_inverts_checkpoint_of_on_every_reachable_state(history):
    """Goal: restore(checkpoint_of(s)) == s for every reachable state.

    Method: every state along a random reachable history (delayed jobs, stale
    timers, in-flight and finished jobs, forgotten jobs, paused queues occur on
    the way); the restored state must be equal and meet every invariant.
    """
    _events, states = history
    for state in states:
        restored = restore(checkpoint_of(state))
        assert restored == state
        check_all(restored)


@given(histories(min_commands=1), st.data())
def test_a_restored_state_decides_like_the_original(history, data):
    """Goal: the restored state is not just equal but behaves the same.

    Equality of states compares the timer heaps as multisets, so a heap of a
    different shape passes; this checks that the shape does not matter either.

    Method: restore the final state of a history, then run the same ten random
    commands (drawn against the original) on both; the events (or rejections)
    must be identical at every step.
    """
    events, states = history
    original = states[-1]
    restored = restore(checkpoint_of(original))
    now_ms = time_of(events, len(events))
    for _ in range(10):
        now_ms += data.draw(st.sampled_from([0, 1, 5, 30, 200]))
        command = data.draw(commands(original, now_ms))
        try:
            expected = decide(original, command)
        except Rejected as rejection:
            with pytest.raises(Rejected) as caught:
                decide(restored, command)
            assert str(caught.value) == str(rejection)
            continue
        assert decide(restored, command) == expected
        for event in expected:
            original = evolve(original, event)
            restored = evolve(restored, event)
    assert restored == original


def _scenario():
    """A state with every part a checkpoint must carry, by hand.

    Two queues with pending jobs (one paused), a delayed job, a stale timer (a
    delayed job cancelled), a job in flight, finished jobs (completed, cancelled,
    dead), and ready FIFOs whose heads moved past leased jobs.
    """
    commands_ = (
        *WORKLOAD_COMMANDS,
        Enqueue(now_ms=40_002, handler="h", job_id="f", delay_ms=1_000),
        Enqueue(now_ms=40_002, handler="h", job_id="g", delay_ms=5_000),
        Cancel(now_ms=40_003, job_id="g"),
        Enqueue(now_ms=40_003, handler="h", job_id="x", queue="q2"),
        Lease(now_ms=40_004, worker_id="w2"),
        PauseQueue(now_ms=40_005, queue="default"),
        Tick(now_ms=40_006),
    )
    _events, states = run(commands_)
    return states[-1]


def test_the_scenario_round_trips_with_every_part_present():
    """Goal: the hand-picked scenario holds every kind of part, and round-trips.

    Method: assert the parts are there (so the example cannot silently become
    trivial), then compare restore(checkpoint_of(s)) with s.
    """
    state = _scenario()
    statuses = {job.status for job in state.jobs.values()}
    assert {
        JobStatus.PENDING,
        JobStatus.DELAYED,
        JobStatus.IN_FLIGHT,
        JobStatus.COMPLETED,
        JobStatus.CANCELLED,
    } <= statuses
    checkpoint = checkpoint_of(state)
    assert any(not timer_is_live(state.jobs, entry) for entry in checkpoint.timers)
    assert any(timer_is_live(state.jobs, entry) for entry in checkpoint.timers)
    assert state.paused == {"default", "q2"}
    assert any(bounds.head > 0 for bounds in checkpoint.ready)
    assert restore(checkpoint) == state


def test_in_flight_and_dead_jobs_round_trip():
    """Goal: jobs in flight (with their lease expiry) and dead jobs survive restore.

    Method: a job failed once with max_attempts=1 (dead), another leased and left
    running; check both statuses are present and the in-flight index is rebuilt.
    """
    _events, states = run(
        [
            Enqueue(now_ms=0, handler="h", job_id="a", max_attempts=1),
            Enqueue(now_ms=0, handler="h", job_id="b"),
            Lease(now_ms=1, worker_id="w1"),
            Lease(now_ms=1, worker_id="w2"),
            Fail(now_ms=2, job_id="a", attempt=1, error="x"),
        ]
    )
    state = states[-1]
    assert state.jobs["a"].status is JobStatus.DEAD
    assert state.jobs["b"].status is JobStatus.IN_FLIGHT
    restored = restore(checkpoint_of(state))
    assert restored == state
    assert dict(restored.in_flight) == {"b": state.jobs["b"].lease_expires_at_ms}


# -- Tampered checkpoints fail loudly. -------------------------------------------------


def _tamper(name):
    def counts_off(checkpoint):
        counts = checkpoint.counts
        return attrs.evolve(checkpoint, counts=attrs.evolve(counts, pending=counts.pending + 1))

    def counts_swapped(checkpoint):
        counts = checkpoint.counts
        return attrs.evolve(
            checkpoint,
            counts=attrs.evolve(
                counts, completed=counts.cancelled + 1, cancelled=counts.completed - 1
            ),
        )

    def job_twice(checkpoint):
        return attrs.evolve(checkpoint, jobs=(*checkpoint.jobs, checkpoint.jobs[0]))

    def job_missing(checkpoint):
        return attrs.evolve(checkpoint, jobs=checkpoint.jobs[1:])

    def fifo_bounds_missing(checkpoint):
        return attrs.evolve(checkpoint, ready=checkpoint.ready[1:])

    def fifo_bounds_invented(checkpoint):
        bounds = attrs.evolve(checkpoint.ready[0], queue="nowhere")
        return attrs.evolve(checkpoint, ready=(*checkpoint.ready, bounds))

    def timers_unsorted(checkpoint):
        return attrs.evolve(checkpoint, timers=tuple(reversed(checkpoint.timers)))

    return {
        "counts_off": counts_off,
        "counts_swapped": counts_swapped,
        "job_twice": job_twice,
        "job_missing": job_missing,
        "fifo_bounds_missing": fifo_bounds_missing,
        "fifo_bounds_invented": fifo_bounds_invented,
        "timers_unsorted": timers_unsorted,
    }[name]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("counts_off", "Counts"),
        ("counts_swapped", "Counts"),
        ("job_twice", "twice"),
        ("job_missing", "Counts"),
        ("fifo_bounds_missing", "do(es)? not bound"),
        ("fifo_bounds_invented", "empty or unknown FIFO"),
        ("timers_unsorted", "sorted"),
    ],
)
def test_a_tampered_checkpoint_fails_loudly(damage, message):
    """Goal: a checkpoint that does not describe a consistent state raises
    BrokenInvariant at restore, with a message saying what is wrong.

    Method: take the scenario's checkpoint (it has several jobs, FIFOs and timers),
    apply one damage (wrong counts, a job listed twice or left out, FIFO bounds
    missing or invented, timers out of order) and restore.  The intact checkpoint
    restores, so the failure is the damage's doing.
    """
    checkpoint = checkpoint_of(_scenario())
    assert len(checkpoint.jobs) >= 2 and len(checkpoint.ready) >= 1
    assert len(set(checkpoint.timers)) >= 2
    restore(checkpoint)
    with pytest.raises(BrokenInvariant, match=message):
        restore(_tamper(damage)(checkpoint))
