"""Replay: the fold of the log is the state, however the log is cut and re-read.

Recovery rebuilds the state as ``replay(snapshot, log tail)``.  These properties
say that this is always the same state as the fold of the whole log, whatever the
snapshot point, however much of the log before it is read again, and however many
times; that ``evolve`` refuses a log with a hole; and that ``decide`` and
``evolve`` agree.  Histories come from ``strategies.histories`` (reachable states
only, with expiries, recoveries, requeues and forgetting).
"""

from __future__ import annotations

import attrs
import immutables
import pytest
from hypothesis import Phase, assume, find, given, settings
from hypothesis import strategies as st
from strategies import (
    command_lists,
    commands,
    edges_of,
    histories,
    history_points,
    replay_all,
    run,
    time_of,
)

from beaverq.model import (
    JobEnqueued,
    JobEvent,
    JobStatus,
    QueuePaused,
    QueueResumed,
    Recover,
    Rejected,
    Tick,
    apply_event,
    decide,
    edges,
    evolve,
    initial_state,
    replay,
)
from beaverq.model.errors import BrokenInvariant


@given(histories())
def test_snapshot_at_any_prefix_plus_the_rest_is_the_whole_fold(history):
    """Goal: fold(all events) == fold(rest) on top of a snapshot taken at any prefix.

    Method: for a reachable history and *every* split point k, replay the events
    after k on the state reached after k (the snapshot) and compare with the fold
    of the whole log, itself recomputed from scratch.
    """
    events, states = history
    whole = replay(initial_state(), events)
    assert whole == states[-1]
    for k in range(len(events) + 1):
        assert replay(states[k], events[k:]) == whole, k


@given(histories(min_commands=1), st.data())
def test_a_log_tail_that_overlaps_the_snapshot_is_skipped_where_covered(history, data):
    """Goal: a WAL read from an LSN before the snapshot's gives the same state.

    Method: take the snapshot at k and replay events[j:] for some j <= k: the
    events j..k-1 are already in the snapshot and the LSN guard of ``evolve`` must
    skip them; the result equals the fold of the whole log.
    """
    events, states = history
    k = data.draw(st.integers(0, len(events)), label="snapshot at")
    j = data.draw(st.integers(0, k), label="log read from")
    assert replay(replay(initial_state(), events[:k]), events[j:]) == states[-1]


@given(histories())
def test_replaying_twice_is_replaying_once(history):
    """Goal: double replay == single replay.

    Method: fold the log, then fold the same log again over the result; the
    second pass must change nothing (every event is at or below the state's LSN).
    """
    events, _ = history
    once = replay(initial_state(), events)
    assert replay(once, events) == once
    assert replay(replay(initial_state(), events), events) == replay(initial_state(), events)


@given(histories())
def test_apply_event_twice_is_apply_event_once(history):
    """Goal: ``apply_event`` is idempotent by state, and agrees with ``evolve``.

    Method: for every event e of a history and its pre-state s, check
    apply(apply(s, e), e) == apply(s, e) == the next state of the history.  This
    bypasses the LSN guard of ``evolve``: the per-job LSN (or, for a job that has
    just been forgotten, the state's LSN) must do the skipping.
    """
    events, states = history
    for index, event in enumerate(events):
        once = apply_event(states[index], event)
        assert once == states[index + 1], event
        assert apply_event(once, event) == once, event


@given(history_points())
def test_an_older_event_of_a_job_is_ignored_by_apply_event(point):
    """Goal: re-applying an older event of a job changes nothing.

    Method: at a reachable state, re-apply with ``apply_event`` (no LSN guard) every
    earlier job event whose job is still in the state (its ``last_lsn`` covers the
    event) and every earlier non-enqueue event of a job no longer there; the state
    must be unchanged.  (Enqueues of forgotten jobs and queue events are outside
    this guarantee: only ``evolve``'s LSN guard covers them.)
    """
    events, states, index = point
    state = states[index]
    for event in events[:index]:
        if not isinstance(event, JobEvent):
            continue
        job = state.jobs.get(event.job_id)
        if job is None and isinstance(event, JobEnqueued):
            continue
        if job is not None:
            assert job.last_lsn >= event.lsn, (job, event)
        assert apply_event(state, event) == state, event


@given(histories(min_commands=2), st.data())
def test_a_missing_event_is_a_broken_invariant(history, data):
    """Goal: a log with a hole is refused loudly, never skipped over.

    Method: drop one event from a log of at least two events and replay it; the
    event after the hole must trip the ``BrokenInvariant`` of ``evolve`` (naming
    the gap).  Directly: an event one LSN too far ahead of its pre-state.
    """
    events, states = history
    assume(len(events) >= 2)
    hole = data.draw(st.integers(0, len(events) - 2), label="dropped event")
    with pytest.raises(BrokenInvariant, match="log gap"):
        replay(initial_state(), events[:hole] + events[hole + 1 :])
    with pytest.raises(BrokenInvariant, match="log gap"):
        evolve(states[hole], events[hole + 1])


@given(history_points(), st.data())
def test_decide_agrees_with_evolve_and_leaves_its_input_alone(point, data):
    """Goal: decide's events fold onto the state it decided on; decide is pure.

    Method: at a reachable state, decide a command aimed at it.  Unless rejected,
    the events carry the next LSNs in order and the command's time, each applies
    (no assertion in ``evolve``) and changes more than the LSN (decide emits no
    empty facts), and the fold ends exactly at the last of them.  Deciding again
    gives the same events (determinism).  The input state, rejected or not, is
    still equal to the same prefix replayed afresh.
    """
    events, states, index = point
    state = states[index]
    now_ms = time_of(events, index) + data.draw(st.integers(0, 100), label="clock step")
    command = data.draw(commands(state, now_ms), label="command")
    try:
        decided = decide(state, command)
    except Rejected:
        decided = None
    assert state == replay_all(events[:index])
    if decided is None:
        return
    assert decide(state, command) == decided
    assert [event.lsn for event in decided] == list(
        range(state.last_lsn + 1, state.last_lsn + 1 + len(decided))
    )
    assert all(event.at_ms == now_ms for event in decided)
    current = state
    for event in decided:
        after = evolve(current, event)
        assert attrs.evolve(after, last_lsn=current.last_lsn) != current, event
        current = after
    assert current.last_lsn == state.last_lsn + len(decided)


@given(history_points(), st.data())
def test_a_batch_is_what_deciding_one_event_at_a_time_gives(point, data):
    """Goal: Tick and Recover decide each event on the state left by the previous ones.

    Method: decide a Tick (small retention) or a Recover on a reachable state; for
    each prefix of the batch, deciding the same command again on the state after
    that prefix yields exactly the rest of the batch (histories stay far below the
    per-Tick budgets, which would otherwise let a later decision do more).  In
    particular, after the whole batch the same command has nothing left to do.
    """
    events, states, index = point
    state = states[index]
    now_ms = time_of(events, index) + data.draw(st.integers(0, 300), label="clock step")
    command = data.draw(
        st.one_of(
            st.builds(
                Tick,
                now_ms=st.just(now_ms),
                retention_ms=st.integers(0, 100),
                finished_jobs_retained_max=st.integers(0, 4),
            ),
            st.just(Recover(now_ms=now_ms)),
        ),
        label="command",
    )
    batch = decide(state, command)
    current = state
    for done in range(len(batch) + 1):
        assert decide(current, command) == batch[done:], done
        if done < len(batch):
            current = evolve(current, batch[done])


@given(histories(), st.data())
def test_state_equality_is_structural(history, data):
    """Goal: equal contents make equal states, however they were built.

    Method: build the final state three ways (one fold; snapshot at k plus the
    tail; the step-by-step states of the history) and, from it, a copy whose maps
    were rebuilt by inserting their entries in reverse order.  All are ``==`` and
    hash alike though they are distinct objects; and a state that differs in one
    field is not equal.
    """
    events, states = history
    k = data.draw(st.integers(0, len(events)), label="snapshot at")
    whole = replay(initial_state(), events)
    from_snapshot = replay(replay(initial_state(), events[:k]), events[k:])
    assert whole == from_snapshot == states[-1]
    rebuilt = attrs.evolve(
        whole,
        jobs=immutables.Map(reversed(list(whole.jobs.items()))),
        in_flight=immutables.Map(reversed(list(whole.in_flight.items()))),
        ready=immutables.Map(reversed(list(whole.ready.items()))),
        idempotency_keys=immutables.Map(reversed(list(whole.idempotency_keys.items()))),
        paused=frozenset(reversed(sorted(whole.paused))),
    )
    assert rebuilt is not whole
    assert rebuilt == whole
    assert hash(rebuilt) == hash(whole)
    assert attrs.evolve(whole, last_lsn=whole.last_lsn + 1) != whole


@given(histories())
def test_queue_events_apply_in_log_order(history):
    """Goal: the paused set is the fold of the pause/resume events, in order.

    Method: recompute the set of paused queues from the queue events of the log
    alone and compare with the replayed state.
    """
    events, states = history
    paused: set[str] = set()
    for event in events:
        if isinstance(event, QueuePaused):
            assert event.queue not in paused, "decide never pauses a paused queue"
            paused.add(event.queue)
        elif isinstance(event, QueueResumed):
            assert event.queue in paused, "decide never resumes an unpaused queue"
            paused.discard(event.queue)
    assert states[-1].paused == paused


@given(histories())
def test_histories_walk_only_edges_of_the_lifecycle_table(history):
    """Goal: every job move in a reachable history is an edge of ``TRANSITIONS``.

    Method: for each job event, read the job's status before and after it from the
    history's states and check the (source, event, target) triple is an edge.
    """
    events, states = history
    assert edges_of(events, states) <= edges()


def test_histories_reach_every_edge_of_the_lifecycle_table():
    """Goal: the history generator exercises the whole lifecycle, so the properties
    over histories are not passing vacuously.

    Method: ``find`` generates histories (derandomized, so the run is reproducible)
    until the edges walked so far cover every edge of ``TRANSITIONS``, including
    abandonment into cancelled and requeue of dead jobs; it fails if 1,000
    histories do not.  It usually stops after a hundred or two.
    """
    seen: set[tuple[JobStatus, str, JobStatus]] = set()

    def covers_everything(history) -> bool:
        seen.update(edges_of(*history))
        return seen >= edges()

    find(
        histories(),
        covers_everything,
        settings=settings(
            max_examples=1_000, phases=[Phase.generate], derandomize=True, database=None
        ),
    )
    assert seen >= edges()


@given(command_lists())
def test_a_state_blind_run_is_the_fold_of_its_log(commands_):
    """Goal: ``run`` (fixed commands, state-blind) records a log whose folds are its states.

    Method: for each prefix of the run's log, the fold from the initial state equals
    the recorded state; the LSNs run 1, 2, 3...
    """
    events, states = run(commands_)
    assert [event.lsn for event in events] == list(range(1, len(events) + 1))
    state = initial_state()
    for index, event in enumerate(events):
        state = evolve(state, event)
        assert state == states[index + 1]
