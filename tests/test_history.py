"""The history properties of ``spec/history.py``: they hold, and they can fail.

Goal: every property holds on every reachable history (whole, or a log tail that
starts after a snapshot), and each one catches the damage it exists for.

Method:

* *holds*: random reachable histories (``strategies.histories``) pass
  ``check_history`` with their states, without them, and cut in two (the second
  half alone, as replay after a snapshot sees it).  Each property is also checked
  by name on a fixed scenario that reuses a job id, requeues, expires and forgets.
* *catches*: that scenario is broken by hand, either its events (renumbered so
  that only the intended fact is wrong) or one of its states (``attrs.evolve``).
  Each break must pass the named property before and fail it after, and
  ``check_history`` must name it.  A last test requires a break for every property.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
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
    JobCompleted,
    JobEnqueued,
    JobFailed,
    JobStatus,
    Lease,
    LeaseGranted,
    LeaseReleased,
    PauseQueue,
    QueuePaused,
    Release,
    Requeue,
    ResumeQueue,
    State,
    Tick,
)
from beaverq.model.errors import BrokenInvariant
from beaverq.model.lifecycle import DEAD
from beaverq.spec.history import (
    EVENT_PROPERTIES,
    STATE_PROPERTIES,
    check_history,
    history_violations,
    job_id_of,
)

History = tuple[list[Event], list[State]]

# -- A fixed history that exercises every property. --------------------------------------


def _scenario_commands() -> list[Command]:
    """Job ``a`` completes, is forgotten, and is enqueued and completed again under the
    same id; ``d`` dies, is requeued, and dies again by an expired lease; ``c`` is
    cancelled; ``r`` is released and completes on its next lease; ``e`` waits out a
    delay; a queue is paused and resumed.  One job is
    pending at a time, so each Lease takes the job meant."""
    return [
        Enqueue(now_ms=0, handler="h", job_id="a"),
        Lease(now_ms=0, worker_id="w"),
        Complete(now_ms=1, job_id="a", attempt=1),
        Tick(now_ms=1, retention_ms=0),
        Enqueue(now_ms=2, handler="h", job_id="a"),
        Lease(now_ms=2, worker_id="w"),
        Complete(now_ms=3, job_id="a", attempt=1),
        Enqueue(now_ms=3, handler="h", job_id="d", max_attempts=1, timeout_ms=5),
        Lease(now_ms=3, worker_id="w"),
        Fail(now_ms=4, job_id="d", attempt=1, error="boom"),
        Requeue(now_ms=10, job_id="d"),
        Lease(now_ms=10, worker_id="w"),
        Tick(now_ms=15),
        Enqueue(now_ms=15, handler="h", job_id="c"),
        Cancel(now_ms=15, job_id="c"),
        PauseQueue(now_ms=16, queue="q"),
        ResumeQueue(now_ms=16, queue="q"),
        Enqueue(now_ms=16, handler="h", job_id="r"),
        Lease(now_ms=16, worker_id="w"),
        Release(now_ms=16, job_id="r", attempt=1),
        Lease(now_ms=16, worker_id="w"),
        Complete(now_ms=16, job_id="r", attempt=2),
        Enqueue(now_ms=16, handler="h", job_id="e", delay_ms=4),
        Tick(now_ms=20),
    ]


def scenario() -> History:
    events, states = run(_scenario_commands())
    names = [type(event).__name__ for event in events]
    # The breaks below lean on these events being there.
    assert names.count("JobCompleted") == 3, names
    assert "LeaseReleased" in names
    assert "JobForgotten" in names
    assert "LeaseExpired" in names
    assert "QueuePaused" in names
    assert "DelayElapsed" in names
    return events, states


def index_of(events: Sequence[Event], kind: type[Event], job_id: str | None = None) -> int:
    """The index of the first event of ``kind`` (for ``job_id``, if given)."""
    for index, event in enumerate(events):
        if isinstance(event, kind) and (job_id is None or job_id_of(event) == job_id):
            return index
    raise AssertionError(f"no {kind.__name__} for {job_id!r} in the scenario")


def renumbered(events: Sequence[Event], first_lsn: int = 1) -> list[Event]:
    """The same events with consecutive LSNs: a break of one property stays only that."""
    return [attrs.evolve(event, lsn=first_lsn + n) for n, event in enumerate(events)]


# -- Holds. ------------------------------------------------------------------------------


@given(histories())
def test_properties_hold_on_every_reachable_history(history: History) -> None:
    events, states = history
    check_history(events, states)
    check_history(events)
    # A log tail after a snapshot: the first event is not LSN 1, and earlier
    # leases and completions are out of sight.
    middle = len(events) // 2
    check_history(events[middle:], states[middle:])


_ALL_PROPERTIES = [*EVENT_PROPERTIES, *STATE_PROPERTIES]


@pytest.mark.parametrize("prop", _ALL_PROPERTIES, ids=lambda f: f.__name__)
def test_property_holds_on_the_scenario(prop: Callable[..., list[str]]) -> None:
    events, states = scenario()
    found = prop(events) if prop in EVENT_PROPERTIES else prop(events, states)
    assert found == []


def test_a_reused_job_id_may_complete_again() -> None:
    """Completion is at most once per *incarnation*: ``a`` was forgotten in between."""
    events, _states = scenario()
    completed = [e for e in events if isinstance(e, JobCompleted) and e.job_id == "a"]
    assert len(completed) == 2
    assert "completion_recorded_at_most_once_per_job" not in history_violations(events)


# -- Catches: broken events. -------------------------------------------------------------


def _drop_an_event(events: list[Event]) -> list[Event]:
    return events[:3] + events[4:]


def _swap_two_events(events: list[Event]) -> list[Event]:
    return [events[1], events[0], *events[2:]]


def _complete_twice(events: list[Event]) -> list[Event]:
    done = index_of(events, JobCompleted, "a")
    return renumbered([*events[: done + 1], events[done], *events[done + 1 :]])


def _complete_with_a_later_attempt(events: list[Event]) -> list[Event]:
    done = index_of(events, JobCompleted, "a")
    late = attrs.evolve(events[done], attempt=2)
    return [*events[:done], late, *events[done + 1 :]]


def _fail_after_completion(events: list[Event]) -> list[Event]:
    """A result for a lease that already ended (the fence must refuse it)."""
    done = index_of(events, JobCompleted, "a")
    stale = JobFailed(
        lsn=0, at_ms=1, job_id="a", attempt=1, error="late", target=DEAD, retry_at_ms=None
    )
    return renumbered([*events[: done + 1], stale, *events[done + 1 :]])


def _complete_after_release(events: list[Event]) -> list[Event]:
    """The released attempt's late result taken (the fence must refuse it)."""
    released = index_of(events, LeaseReleased, "r")
    late = JobCompleted(lsn=0, at_ms=16, job_id="r", attempt=1, result_json="null")
    return renumbered([*events[: released + 1], late, *events[released + 1 :]])


def _lease_skips_an_attempt(events: list[Event]) -> list[Event]:
    leased = index_of(events, LeaseGranted, "a")
    return [*events[:leased], attrs.evolve(events[leased], attempt=2), *events[leased + 1 :]]


def _lease_while_leased(events: list[Event]) -> list[Event]:
    leased = index_of(events, LeaseGranted, "a")
    return renumbered([*events[: leased + 1], events[leased], *events[leased + 1 :]])


EventBreak = Callable[[list[Event]], list[Event]]

EVENT_BREAKS: list[tuple[str, str, EventBreak]] = [
    ("lsns_consecutive", "an event lost", _drop_an_event),
    ("lsns_consecutive", "two events swapped", _swap_two_events),
    ("lsns_consecutive", "numbering from 0", lambda events: renumbered(events, first_lsn=0)),
    ("completion_recorded_at_most_once_per_job", "completed twice", _complete_twice),
    ("fenced_results", "a result with another attempt", _complete_with_a_later_attempt),
    ("fenced_results", "a result after the lease ended", _fail_after_completion),
    ("fenced_results", "a result after the lease was released", _complete_after_release),
    ("fenced_results", "a lease skipping an attempt", _lease_skips_an_attempt),
    ("fenced_results", "a lease while one is live", _lease_while_leased),
]


@pytest.mark.parametrize(("name", "what", "breaks"), EVENT_BREAKS, ids=[b[1] for b in EVENT_BREAKS])
def test_event_property_catches_a_broken_history(name: str, what: str, breaks: EventBreak) -> None:
    events, _states = scenario()
    assert name not in history_violations(events), f"{name} must hold before the break"
    broken = breaks(events)
    assert name in history_violations(broken), f"{name} misses: {what}"
    with pytest.raises(BrokenInvariant, match=name):
        check_history(broken)


# -- Catches: broken states. -------------------------------------------------------------


def with_job(state: State, job_id: str, **changes: object) -> State:
    job = attrs.evolve(state.jobs[job_id], **changes)
    return attrs.evolve(state, jobs=state.jobs.set(job_id, job))


def _at(history: History, index: int, change: Callable[[State], State]) -> History:
    """The history with ``states[index]`` replaced by ``change(states[index])``."""
    events, states = history
    return events, [*states[:index], change(states[index]), *states[index + 1 :]]


def _after_pause(history: History) -> int:
    """The index of the state right after the QueuePaused event: a moment when no
    job event happens, so any job change there is unexplained."""
    return index_of(history[0], QueuePaused) + 1


def _job_drops_out(history: History) -> History:
    return _at(history, _after_pause(history), lambda s: attrs.evolve(s, jobs=s.jobs.delete("a")))


def _job_appears(history: History) -> History:
    def add_ghost(state: State) -> State:
        return attrs.evolve(state, jobs=state.jobs.set("ghost", state.jobs["a"]))

    return _at(history, _after_pause(history), add_ghost)


def _completed_job_reopens(history: History) -> History:
    return _at(history, _after_pause(history), lambda s: with_job(s, "a", status=JobStatus.PENDING))


def _dead_job_revives_without_requeue(history: History) -> History:
    return _at(history, _after_pause(history), lambda s: with_job(s, "d", status=JobStatus.PENDING))


def _lease_completes_at_once(history: History) -> History:
    leased = index_of(history[0], LeaseGranted, "a") + 1
    return _at(history, leased, lambda s: with_job(s, "a", status=JobStatus.COMPLETED))


def _enqueue_changes_another_job(history: History) -> History:
    enqueued = index_of(history[0], JobEnqueued, "c") + 1
    return _at(history, enqueued, lambda s: with_job(s, "a", error="changed"))


def _state_lags_its_event(history: History) -> History:
    events, states = history
    paused = _after_pause(history)
    return events, [*states[:paused], states[paused - 1], *states[paused:-1]]


StateBreak = Callable[[History], History]

STATE_BREAKS: list[tuple[str, str, StateBreak]] = [
    ("no_job_vanishes", "a job drops out", _job_drops_out),
    ("no_job_vanishes", "a job appears unenqueued", _job_appears),
    ("finished_states_absorbing", "a completed job reopens", _completed_job_reopens),
    (
        "finished_states_absorbing",
        "a dead job revives unrequeued",
        _dead_job_revives_without_requeue,
    ),
    ("moves_follow_the_lifecycle", "pending straight to completed", _lease_completes_at_once),
    ("events_touch_only_their_job", "an enqueue changes another job", _enqueue_changes_another_job),
    ("states_at_event_lsns", "a state one event behind", _state_lags_its_event),
]


@pytest.mark.parametrize(("name", "what", "breaks"), STATE_BREAKS, ids=[b[1] for b in STATE_BREAKS])
def test_state_property_catches_a_broken_history(name: str, what: str, breaks: StateBreak) -> None:
    history = scenario()
    assert name not in history_violations(*history), f"{name} must hold before the break"
    events, states = breaks(history)
    assert len(states) == len(events) + 1
    assert name in history_violations(events, states), f"{name} misses: {what}"
    with pytest.raises(BrokenInvariant, match=name):
        check_history(events, states)


def test_every_property_has_a_break() -> None:
    broken = {name for name, _, _ in EVENT_BREAKS} | {name for name, _, _ in STATE_BREAKS}
    assert broken == {prop.__name__ for prop in _ALL_PROPERTIES}


def test_state_properties_need_states() -> None:
    """Without states only event properties run: a state break is invisible then,
    which is why helpers that have the states should pass them."""
    events, states = _job_drops_out(scenario())
    assert "no_job_vanishes" in history_violations(events, states)
    assert history_violations(events) == {}


def test_states_of_the_wrong_length_are_a_caller_error() -> None:
    events, states = scenario()
    with pytest.raises(BrokenInvariant, match="need"):
        check_history(events, states[1:])
