"""The state invariants of ``spec/invariants.py``: they hold, and they can fail.

Goal: every invariant holds on every reachable state, and every invariant catches
the kind of damage it exists for.  An invariant that never fires is worse than
none: it reads as a guarantee.

Method:

* *holds*: random reachable histories (``strategies.histories``) are checked with
  ``check_all`` at every state; one run serves every invariant, because drawing the
  run is the cost.  Each invariant is also checked, by name, along a fixed scenario
  that reaches every status.
* *catches*: a state with a job in every status is broken by hand with
  ``attrs.evolve`` (a job dropped from its index, a wrong count, a stale key...).
  Each break must pass the named invariant before and fail it after, and
  ``check_all`` must name it.  A last test requires a break for every invariant.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import immutables
import pytest
from hypothesis import given
from strategies import histories, run

from beaverq.model import (
    Cancel,
    Command,
    Complete,
    Enqueue,
    Event,
    Fail,
    JobStatus,
    Lease,
    State,
    Tick,
    limits,
)
from beaverq.model.errors import BrokenInvariant
from beaverq.model.fifo import EMPTY_FIFO, Fifo, fifo_push
from beaverq.model.timers import EMPTY_TIMERS, timers_push
from beaverq.spec.invariants import (
    INVARIANTS,
    MESSAGES_PER_INVARIANT_MAX,
    check_all,
    violations,
)

# -- A state with a job in every status. ------------------------------------------------


def _every_status_commands() -> list[Command]:
    """Jobs named after their fate.  Each Lease runs while exactly one job is pending,
    so it takes the job meant; ``ready`` and ``ready2`` sit in two FIFOs at the end."""
    return [
        Enqueue(now_ms=0, handler="h", job_id="done", idempotency_key="k-done"),
        Lease(now_ms=0, worker_id="w"),
        Complete(now_ms=1, job_id="done", attempt=1),
        Enqueue(now_ms=1, handler="h", job_id="dead", max_attempts=1),
        Lease(now_ms=1, worker_id="w"),
        Fail(now_ms=2, job_id="dead", attempt=1, error="boom"),
        Enqueue(now_ms=2, handler="h", job_id="gone"),
        Cancel(now_ms=3, job_id="gone"),
        Enqueue(now_ms=3, handler="h", job_id="run", timeout_ms=1000),
        Lease(now_ms=3, worker_id="w"),
        Enqueue(now_ms=4, handler="h", job_id="wait", delay_ms=100),
        Enqueue(now_ms=4, handler="h", job_id="ready", queue="q2", idempotency_key="k-ready"),
        Enqueue(now_ms=5, handler="h", job_id="ready2"),
        Tick(now_ms=5),
    ]


def every_status_run() -> tuple[list[Event], list[State]]:
    return run(_every_status_commands())


def every_status_state() -> State:
    state = every_status_run()[1][-1]
    statuses = {job_id: job.status for job_id, job in state.jobs.items()}
    # The scenario is the base of every break below; it must be what it says.
    assert statuses == {
        "done": JobStatus.COMPLETED,
        "dead": JobStatus.DEAD,
        "gone": JobStatus.CANCELLED,
        "run": JobStatus.IN_FLIGHT,
        "wait": JobStatus.DELAYED,
        "ready": JobStatus.PENDING,
        "ready2": JobStatus.PENDING,
    }, statuses
    return state


# -- Holds. ------------------------------------------------------------------------------


@given(histories())
def test_invariants_hold_on_every_reachable_state(history: tuple[list[Event], list[State]]) -> None:
    _events, states = history
    for state in states:
        check_all(state)


@pytest.mark.parametrize("invariant", INVARIANTS, ids=lambda f: f.__name__)
def test_invariant_holds_along_the_every_status_run(
    invariant: Callable[[State], list[str]],
) -> None:
    for state in every_status_run()[1]:
        assert invariant(state) == [], state.last_lsn


# -- Catches. ----------------------------------------------------------------------------


def with_job(state: State, job_id: str, **changes: object) -> State:
    """``state`` with one job's record changed and nothing else: a targeted break."""
    job = attrs.evolve(state.jobs[job_id], **changes)
    return attrs.evolve(state, jobs=state.jobs.set(job_id, job))


def _reopen_completed_record(state: State) -> State:
    record = state.jobs["done"].history[-1]
    reopened = attrs.evolve(record, outcome=None, ended_at_ms=None)
    return with_job(state, "done", history=(reopened,))


def _close_live_record(state: State) -> State:
    record = state.jobs["run"].history[-1]
    return with_job(state, "run", history=(attrs.evolve(record, outcome="failed", ended_at_ms=9),))


def _second_open_record(state: State) -> State:
    record = state.jobs["run"].history[-1]
    return with_job(state, "run", history=(record, record))


def _too_many_attempt_records(state: State) -> State:
    """Consecutive records ending at the fence, but more than are kept."""
    record = state.jobs["dead"].history[-1]
    count = limits.ATTEMPT_HISTORY_MAX + 1
    records = tuple(attrs.evolve(record, attempt=n) for n in range(1, count + 1))
    return with_job(state, "dead", attempt=count, history=records)


def _too_many_paused_queues(state: State) -> State:
    paused = frozenset(f"q{n}" for n in range(limits.PAUSED_QUEUES_MAX + 1))
    return attrs.evolve(state, paused=paused)


def _ready_fifo_head_on_a_hole(state: State) -> State:
    """``ready2`` moved one slot up, leaving a hole at the head (and nothing else wrong)."""
    key = ("default", 0)
    assert state.jobs["ready2"].slot == 0
    fifo = Fifo(0, 2, immutables.Map({1: "ready2"}))
    return with_job(attrs.evolve(state, ready=state.ready.set(key, fifo)), "ready2", slot=1)


def _ready_fifo_head_past_an_item(state: State) -> State:
    key = ("default", 0)
    fifo = state.ready[key]
    return attrs.evolve(state, ready=state.ready.set(key, attrs.evolve(fifo, head=fifo.tail)))


Break = Callable[[State], State]

#: (invariant name, what is broken, how).  Several per invariant where the invariant
#: checks several things; every invariant has at least one.
BREAKS: list[tuple[str, str, Break]] = [
    (
        "each_job_in_exactly_one_index",
        "pending jobs missing from ready",
        lambda s: attrs.evolve(s, ready=s.ready.delete(("default", 0))),
    ),
    (
        "each_job_in_exactly_one_index",
        "delayed job without a timer",
        lambda s: attrs.evolve(s, timers=EMPTY_TIMERS),
    ),
    (
        "each_job_in_exactly_one_index",
        "in-flight job missing from in_flight",
        lambda s: attrs.evolve(s, in_flight=s.in_flight.delete("run")),
    ),
    (
        "each_job_in_exactly_one_index",
        "in_flight holds another expiry than the job",
        lambda s: attrs.evolve(s, in_flight=s.in_flight.set("run", 1)),
    ),
    (
        "each_job_in_exactly_one_index",
        "a pending job also in in_flight",
        lambda s: attrs.evolve(s, in_flight=s.in_flight.set("ready", 5)),
    ),
    (
        "each_job_in_exactly_one_index",
        "a finished job at the wrong slot",
        lambda s: with_job(s, "done", slot=99),
    ),
    (
        "each_job_in_exactly_one_index",
        "a delayed job with a FIFO slot",
        lambda s: with_job(s, "wait", slot=3),
    ),
    (
        "each_job_in_exactly_one_index",
        "a pending job also in finished",
        lambda s: attrs.evolve(s, finished=fifo_push(s.finished, "ready")[0]),
    ),
    (
        "timers_top_is_live",
        "a stale entry in front",
        lambda s: attrs.evolve(s, timers=timers_push(s.timers, (0, 1, "wait"))),
    ),
    (
        "jobs_keyed_by_their_id",
        "a job filed under another id",
        lambda s: attrs.evolve(s, jobs=s.jobs.set("other", s.jobs["done"])),
    ),
    (
        "no_job_absent",
        "a job with status absent",
        lambda s: with_job(s, "wait", status=JobStatus.ABSENT),
    ),
    (
        "attempts_within_budget",
        "more attempts used than allowed",
        lambda s: with_job(s, "dead", attempts_used=2),
    ),
    (
        "attempts_within_budget",
        "more attempts used than leases",
        lambda s: with_job(s, "run", attempt=0),
    ),
    (
        "at_most_one_live_lease_per_job",
        "a completed job's record reopened",
        _reopen_completed_record,
    ),
    ("at_most_one_live_lease_per_job", "an in-flight job's record closed", _close_live_record),
    ("at_most_one_live_lease_per_job", "two open records", _second_open_record),
    (
        "at_most_one_live_lease_per_job",
        "a pending job with a lease expiry",
        lambda s: with_job(s, "ready", lease_expires_at_ms=5),
    ),
    (
        "attempt_records_match_the_fence",
        "a leased job without records",
        lambda s: with_job(s, "done", history=()),
    ),
    (
        "attempt_records_match_the_fence",
        "the fence ahead of the records",
        lambda s: with_job(s, "dead", attempt=2),
    ),
    ("attempt_records_match_the_fence", "more records than kept", _too_many_attempt_records),
    ("limits_respected", "too many paused queues", _too_many_paused_queues),
    (
        "finished_jobs_have_finish_time",
        "a completed job without finish time",
        lambda s: with_job(s, "done", finished_at_ms=None),
    ),
    (
        "finished_jobs_have_finish_time",
        "a pending job with a finish time",
        lambda s: with_job(s, "ready", finished_at_ms=0),
    ),
    (
        "cancellation_flag_consistent",
        "a pending job flagged for cancellation",
        lambda s: with_job(s, "ready", cancel_requested=True),
    ),
    (
        "cancellation_flag_consistent",
        "a dead job flagged for cancellation",
        lambda s: with_job(s, "dead", cancel_requested=True),
    ),
    (
        "lsn_consistent",
        "a job ahead of the state",
        lambda s: with_job(s, "ready", last_lsn=s.last_lsn + 1),
    ),
    (
        "lsn_consistent",
        "the state behind its last event",
        lambda s: attrs.evolve(s, last_lsn=s.last_lsn - 1),
    ),
    ("lsn_consistent", "ready before enqueued", lambda s: with_job(s, "ready", ready_lsn=0)),
    (
        "counts_consistent",
        "one pending job too many",
        lambda s: attrs.evolve(s, counts=attrs.evolve(s.counts, pending=s.counts.pending + 1)),
    ),
    (
        "counts_consistent",
        "a dead job counted as completed",
        lambda s: attrs.evolve(s, counts=attrs.evolve(s.counts, dead=0, completed=2)),
    ),
    (
        "idempotency_keys_consistent",
        "a job's key missing",
        lambda s: attrs.evolve(s, idempotency_keys=s.idempotency_keys.delete("k-ready")),
    ),
    (
        "idempotency_keys_consistent",
        "a key naming a job without it",
        lambda s: attrs.evolve(s, idempotency_keys=s.idempotency_keys.set("k-stale", "run")),
    ),
    (
        "idempotency_keys_consistent",
        "a key naming a forgotten job",
        lambda s: attrs.evolve(s, idempotency_keys=s.idempotency_keys.set("k-old", "nobody")),
    ),
    (
        "ready_fifos_nonempty_and_heads_valid",
        "an empty FIFO kept in ready",
        lambda s: attrs.evolve(s, ready=s.ready.set(("q9", 0), EMPTY_FIFO)),
    ),
    (
        "ready_fifos_nonempty_and_heads_valid",
        "a ready item below head",
        _ready_fifo_head_past_an_item,
    ),
    ("ready_fifos_nonempty_and_heads_valid", "a hole at a ready head", _ready_fifo_head_on_a_hole),
    (
        "ready_fifos_nonempty_and_heads_valid",
        "a finished item at or past tail",
        lambda s: attrs.evolve(s, finished=attrs.evolve(s.finished, tail=0)),
    ),
]

_INVARIANT_BY_NAME = {invariant.__name__: invariant for invariant in INVARIANTS}


@pytest.mark.parametrize(("name", "what", "break_state"), BREAKS, ids=[b[1] for b in BREAKS])
def test_invariant_catches_a_broken_state(name: str, what: str, break_state: Break) -> None:
    invariant = _INVARIANT_BY_NAME[name]
    state = every_status_state()
    assert invariant(state) == [], f"{name} must hold before the break"
    broken = break_state(state)
    assert invariant(broken), f"{name} misses: {what}"
    with pytest.raises(BrokenInvariant, match=name):
        check_all(broken)


def test_every_invariant_has_a_break() -> None:
    """Every invariant is shown able to fail (the list above is not just examples)."""
    assert {name for name, _, _ in BREAKS} == set(_INVARIANT_BY_NAME)


def test_check_all_names_every_broken_invariant() -> None:
    """Two unrelated breaks: both are reported, not just the first."""
    state = every_status_state()
    broken = attrs.evolve(
        with_job(state, "dead", attempts_used=2),
        idempotency_keys=state.idempotency_keys.delete("k-ready"),
    )
    assert set(violations(broken)) == {"attempts_within_budget", "idempotency_keys_consistent"}
    with pytest.raises(BrokenInvariant) as raised:
        check_all(broken)
    assert "attempts_within_budget" in str(raised.value)
    assert "idempotency_keys_consistent" in str(raised.value)


def test_messages_are_capped_per_invariant() -> None:
    """A state broken everywhere reports a bounded number of lines per invariant."""
    state = every_status_state()
    bogus_keys = {f"k{n}": "nobody" for n in range(3 * MESSAGES_PER_INVARIANT_MAX)}
    broken = attrs.evolve(state, idempotency_keys=state.idempotency_keys.update(bogus_keys))
    messages = violations(broken)["idempotency_keys_consistent"]
    assert len(messages) == MESSAGES_PER_INVARIANT_MAX + 1
    assert messages[-1] == f"... and {2 * MESSAGES_PER_INVARIANT_MAX} more"
