"""Recovery after a crash: ``Recover`` abandons every lease the dead process held,
``AbandonNode`` every lease the workers of one dead cluster node held.

The state rebuilt from snapshot + log still shows jobs in flight whose workers
died with the process.  ``Recover`` (``recovery.abandon_leases``) ends each of
those leases with ``LeaseAbandoned``; the lost attempt counts, so a job that
crashes the process every time it runs still reaches ``dead``.  In a cluster one
node dies alone: ``AbandonNode`` (``recovery.abandon_node_leases``) ends the leases
of that node's workers (``model/nodes.py``) the same way, and leaves the others.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from strategies import NODES, TOKEN_ALPHABET, history_points, replay_all, step, time_of

from beaverq.model import (
    WORKER_SEPARATOR,
    AbandonNode,
    Cancel,
    Enqueue,
    JobStatus,
    Lease,
    LeaseAbandoned,
    Recover,
    Rejected,
    State,
    abandon_leases,
    abandon_node_leases,
    check_node_name,
    decide,
    initial_state,
    limits,
    node_of_worker,
    replay,
    worker_id_of,
)
from beaverq.model.events import Event
from beaverq.model.validation import check_token

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


# -- One node dies: AbandonNode. ----------------------------------------------------------


def held_by(worker_id: str, node: str) -> bool:
    """The test's own reading of docs/semantics.md, AbandonNode: worker ``i`` of ``node``
    is ``node`` + "-w" + ``i`` in decimal without leading zeros, ``i < IN_FLIGHT_MAX``."""
    found = re.fullmatch(re.escape(node) + r"-w(0|[1-9][0-9]*)", worker_id)
    return found is not None and int(found.group(1)) < limits.IN_FLIGHT_MAX


def leases_of(state: State, node: str) -> list[str]:
    """The ids of the jobs ``node``'s workers hold, by (lease expiry, job id)."""
    return [
        job_id
        for _, job_id in sorted(
            (job.lease_expires_at_ms, job.job_id)
            for job in state.jobs.values()
            if job.status is IN_FLIGHT and held_by(job.history[-1].worker_id, node)
        )
    ]


@given(history_points(), st.sampled_from(NODES), st.integers(0, 300))
def test_abandon_node_ends_exactly_the_nodes_leases(point, node, step_ms):
    """Goal: AbandonNode(node) ends, by (expiry, job id), the live leases whose worker is
    one of ``node``'s, each with the event and fate Recover gives it, and nothing else:
    every other job, in flight or not, is unchanged; no events when the node holds none.

    Method: on a reachable state (whose leases are held by workers of n1 and n2 and by
    "w1", of no node), brute-force the node's leases with the test's own reading of
    the worker-id rule; compare with the events; compare each event with Recover's
    for the same job (all but the LSN); check the state after.
    """
    events, states, index = point
    state = states[index]
    now_ms = time_of(events, index) + step_ms
    expected = leases_of(state, node)
    abandoned = decide(state, AbandonNode(now_ms=now_ms, node=node))
    assert abandon_node_leases(state, now_ms, node) == abandoned
    assert [event.job_id for event in abandoned] == expected
    assert [event.lsn for event in abandoned] == [
        state.last_lsn + offset for offset in range(1, len(expected) + 1)
    ]
    recovered = {event.job_id: event for event in decide(state, Recover(now_ms=now_ms))}
    for event in abandoned:
        assert isinstance(event, LeaseAbandoned)
        assert without_lsn(event) == without_lsn(recovered[event.job_id])
    after = replay(state, abandoned)
    assert leases_of(after, node) == []
    for job_id, job in state.jobs.items():
        if job_id not in expected:
            assert after.jobs[job_id] == job  # other nodes' leases live and untouched
    assert after.counts.in_flight == state.counts.in_flight - len(expected)
    # Nothing of the node's is left to end: a second AbandonNode has nothing to do.
    assert decide(after, AbandonNode(now_ms=now_ms, node=node)) == ()


def without_lsn(event: Event) -> tuple[object, ...]:
    """An ending as Recover and AbandonNode decide it, apart from where it lands in the log."""
    assert isinstance(event, LeaseAbandoned)
    return (event.at_ms, event.job_id, event.attempt, event.target, event.retry_at_ms)


def abandon_every_node(state: State, now_ms: int) -> tuple[list[str], list[Event], State]:
    """AbandonNode for each node that holds a lease, nodes in the order Recover reaches
    their first lease: (the nodes, the events, the state after)."""
    order: list[str] = []
    for event in decide(state, Recover(now_ms=now_ms)):
        worker_id = state.jobs[event.job_id].lease_worker_id
        node = None if worker_id is None else node_of_worker(worker_id)
        if node is not None and node not in order:
            order.append(node)
    found: list[Event] = []
    for node in order:
        abandoned, state = step(state, AbandonNode(now_ms=now_ms, node=node))
        found.extend(abandoned)
    return order, found, state


def grouped_by_node(events: Sequence[Event], state: State, order: list[str]) -> list[object]:
    """Recover's endings of node-held leases, regrouped node by node (stable)."""
    rank = {node: position for position, node in enumerate(order)}
    held = [
        (rank[node], position, without_lsn(event))
        for position, event in enumerate(events)
        if (node := node_of_worker(state.jobs[event.job_id].lease_worker_id or "")) in rank
    ]
    return [ending for _, _, ending in sorted(held)]


@given(history_points(), st.integers(0, 300))
def test_abandoning_every_node_that_holds_a_lease_is_recover(point, step_ms):
    """Goal: Recover is AbandonNode of every node at once.  Abandoning, one after the
    other, every node that holds a lease leaves live exactly the leases of no node's
    workers, and records Recover's endings regrouped node by node.  When every lease
    is a node's and each node's leases come together in Recover's order (one node,
    say), it is Recover exactly: the same events in the same order, the same state.

    Method: on a reachable state, abandon the nodes in the order Recover reaches their
    first lease; compare with Recover on the same state.
    """
    events, states, index = point
    state = states[index]
    now_ms = time_of(events, index) + step_ms
    recovered_events, recovered = step(state, Recover(now_ms=now_ms))
    order, found, after = abandon_every_node(state, now_ms)
    nodeless = sorted(
        job_id
        for job_id, job in state.jobs.items()
        if job.status is IN_FLIGHT and node_of_worker(job.history[-1].worker_id) is None
    )
    assert sorted(after.in_flight) == nodeless
    for job_id in nodeless:
        assert after.jobs[job_id] == state.jobs[job_id]
    assert [without_lsn(event) for event in found] == grouped_by_node(
        recovered_events, state, order
    )
    regrouped = [without_lsn(event) for event in recovered_events] == [
        without_lsn(event) for event in found
    ]
    if regrouped:  # every lease a node's, and no node's leases split by another's
        assert tuple(found) == recovered_events
        assert after == recovered
    if not nodeless:
        # Every job ends as Recover ends it; only where it queues may differ.
        for job_id, job in recovered.jobs.items():
            mine = after.jobs[job_id]
            assert (mine.status, mine.attempt, mine.attempts_used) == (
                job.status,
                job.attempt,
                job.attempts_used,
            )
        assert after.last_lsn == recovered.last_lsn


def test_abandoning_nodes_one_by_one_regroups_recovers_events():
    """Goal: the two cases of the property above, scripted: one node holding every
    lease is Recover exactly; two nodes whose leases interleave in Recover's order
    get the same endings, node by node, and so other LSNs and ready order.

    Method: three jobs leased by n1, n2, n1 (expiring in that order).
    """
    state = initial_state()
    for command in (
        Enqueue(now_ms=0, handler="h", job_id="a", timeout_ms=10),
        Enqueue(now_ms=0, handler="h", job_id="b", timeout_ms=20),
        Enqueue(now_ms=0, handler="h", job_id="c", timeout_ms=30),
        Lease(now_ms=0, worker_id=worker_id_of("n1", 0)),
        Lease(now_ms=0, worker_id=worker_id_of("n2", 0)),
        Lease(now_ms=0, worker_id=worker_id_of("n1", 1)),
    ):
        _, state = step(state, command)
    recovered_events, recovered = step(state, Recover(now_ms=5))
    assert [event.job_id for event in recovered_events] == ["a", "b", "c"]
    order, found, after = abandon_every_node(state, 5)
    assert order == ["n1", "n2"]
    assert [event.job_id for event in found] == ["a", "c", "b"]
    assert after.counts == recovered.counts and not after.in_flight
    # One node: n2's lease alone, after n1's are gone, is Recover of what is left.
    only_n2 = replay(state, decide(state, AbandonNode(now_ms=5, node="n1")))
    assert step(only_n2, AbandonNode(now_ms=5, node="n2")) == step(only_n2, Recover(now_ms=5))


def test_abandon_node_refuses_a_name_no_worker_id_can_carry():
    """Goal: an empty node name, one holding the separator, or one that is not a token
    is refused with ``node_invalid`` (too long: ``node_too_long``), whatever the state.

    Method: decide each on a state where "n1" holds a lease; the state is unchanged.
    """
    state = initial_state()
    for command in (
        Enqueue(now_ms=0, handler="h", job_id="a"),
        Lease(now_ms=0, worker_id=worker_id_of("n1", 0)),
    ):
        _, state = step(state, command)
    for node, rule in (
        ("", "node_invalid"),
        ("n1" + WORKER_SEPARATOR, "node_invalid"),
        (WORKER_SEPARATOR, "node_invalid"),
        ("a" + WORKER_SEPARATOR + "b", "node_invalid"),
        ("n 1", "node_invalid"),
        ("n" * (limits.NODE_NAME_BYTES_MAX + 1), "node_too_long"),
    ):
        with pytest.raises(Rejected) as info:
            decide(state, AbandonNode(now_ms=1, node=node))
        assert info.value.rejection.rule == rule, node
        assert info.value.rejection.command == "AbandonNode"
    assert decide(state, AbandonNode(now_ms=1, node="n" * limits.NODE_NAME_BYTES_MAX)) == ()


# -- The node of a worker (model/nodes.py). ------------------------------------------------

NODE_NAMES = st.text(TOKEN_ALPHABET, min_size=1, max_size=limits.NODE_NAME_BYTES_MAX // 4).filter(
    lambda text: WORKER_SEPARATOR not in text
)


@given(NODE_NAMES, st.integers(0, limits.IN_FLIGHT_MAX - 1))
@example("n", limits.IN_FLIGHT_MAX - 1)
@example("n" * limits.NODE_NAME_BYTES_MAX, limits.IN_FLIGHT_MAX - 1)
def test_a_workers_id_names_its_node(node, index):
    """Goal: ``worker_id_of`` builds a worker id that Lease accepts and that reads back
    to its node; the runtime's ids, longest name and largest index included, fit.

    Method: build, check it as Lease checks a worker id, read it back.
    """
    worker_id = worker_id_of(node, index)
    assert worker_id == f"{node}-w{index}"
    assert check_token("worker_id", worker_id, limits.WORKER_ID_BYTES_MAX, "") is None
    assert node_of_worker(worker_id) == node
    assert held_by(worker_id, node)


@given(st.text(TOKEN_ALPHABET + "-w0123456789", max_size=12))
@example("w1")
@example("n1-w01")
@example("n1-w0-w1")
@example("n1-w")
@example("-w0")
@example("n1-w10000")
def test_no_other_worker_id_names_a_node(worker_id):
    """Goal: ``node_of_worker`` is exactly the inverse of ``worker_id_of``: it names a
    node only for an id that ``worker_id_of`` builds from that node, else None.

    Method: any text; if it names a node, rebuilding the id from the node and the
    index gives the text back, else no node holds it by the prose's reading.
    """
    node = node_of_worker(worker_id)
    if node is None:
        # A node's name holds no separator, so the only candidate is the text before
        # the first one; it is no node, or the rest is not one of its workers.
        head, separator, _ = worker_id.partition(WORKER_SEPARATOR)
        assert not separator or check_node_name(head) is not None or not held_by(worker_id, head)
    else:
        index = int(worker_id[len(node) + len(WORKER_SEPARATOR) :])
        assert worker_id_of(node, index) == worker_id
        assert held_by(worker_id, node)


@pytest.mark.parametrize(
    ("node", "index"),
    [("", 0), ("a-wb", 0), ("n 1", 0), ("n", -1), ("n", limits.IN_FLIGHT_MAX), ("n", True)],
)
def test_worker_id_of_refuses_what_would_not_read_back(node, index):
    with pytest.raises(ValueError):
        worker_id_of(node, index)
