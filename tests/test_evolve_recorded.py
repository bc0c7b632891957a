"""evolve refuses an ending event whose recorded decision cannot be applied.

Goal: schema 2 moved the retry rule out of ``evolve`` (model/endings.py); an ending
event now *records* its ``target`` and ``retry_at_ms``, and ``evolve`` applies them.
So ``evolve`` must refuse, as a ``BrokenInvariant``, a recorded decision that no
``decide`` could have made and that would leave a state the model cannot work
from: fields that contradict each other (target against retry time against
``at_ms``), and a target the job's own state forbids (a retry of a job with no
attempt left, any ending other than CANCELLED of a job whose cancellation was
requested: both states break an invariant, and the first makes the next lease
fail).  Method: one job, leased, and for each case the ending event ``decide``
makes with one recorded field changed; ``evolve`` must raise, and the event
``decide`` made must apply (so each case fails for its own reason).
"""

from __future__ import annotations

import attrs
import pytest
from strategies import step

from beaverq.model import (
    BrokenInvariant,
    Cancel,
    Enqueue,
    Fail,
    Lease,
    Release,
    State,
    Tick,
    evolve,
    initial_state,
)
from beaverq.model.lifecycle import DEAD, DELAYED, PENDING
from beaverq.spec.invariants import check_all


def _leased(max_attempts: int = 2, cancel: bool = False) -> State:
    state = initial_state()
    commands = [
        Enqueue(
            now_ms=0,
            handler="h",
            job_id="a",
            max_attempts=max_attempts,
            timeout_ms=10,
            backoff_base_ms=5,
            backoff_cap_ms=5,
        ),
        Lease(now_ms=0, worker_id="w"),
    ]
    if cancel:
        commands.append(Cancel(now_ms=1, job_id="a"))
    for command in commands:
        _events, state = step(state, command)
    return state


def _fail(state: State):
    (event,) = step(state, Fail(now_ms=2, job_id="a", attempt=1, error="e", jitter_seed=0))[0]
    return event


def _expire(state: State):
    (event,) = step(state, Tick(now_ms=50))[0]
    return event


def _release(state: State):
    (event,) = step(state, Release(now_ms=2, job_id="a", attempt=1))[0]
    return event


# (name, the state, how decide ends its attempt, the fields changed)
CASES = [
    # Fields that contradict each other.
    ("delayed retry recorded as pending", _leased(), _fail, {"target": PENDING}),
    ("pending retry recorded as delayed", _leased(), _expire, {"target": DELAYED}),
    ("retry without a retry time", _leased(), _fail, {"retry_at_ms": None}),
    ("retry due before the event", _leased(), _release, {"retry_at_ms": 1}),
    ("finished with a retry time", _leased(max_attempts=1), _fail, {"retry_at_ms": 7}),
    # Targets the job's state forbids.
    (
        "retry with no attempt left",
        _leased(max_attempts=1),
        _fail,
        {"target": DELAYED, "retry_at_ms": 7},
    ),
    (
        "expiry retried with no attempt left",
        _leased(max_attempts=1),
        _expire,
        {"target": PENDING, "retry_at_ms": 50},
    ),
    (
        "retry of a cancelled job",
        _leased(cancel=True),
        _fail,
        {"target": DELAYED, "retry_at_ms": 7},
    ),
    (
        "release retried after a cancel",
        _leased(cancel=True),
        _release,
        {"target": PENDING, "retry_at_ms": 2},
    ),
    (
        "dead with a cancellation requested",
        _leased(max_attempts=1, cancel=True),
        _fail,
        {"target": DEAD},
    ),
]


@pytest.mark.parametrize(
    ("state", "end", "changes"), [case[1:] for case in CASES], ids=[case[0] for case in CASES]
)
def test_evolve_refuses_an_ending_whose_recorded_decision_cannot_apply(state, end, changes) -> None:
    decided = end(state)
    check_all(evolve(state, decided))  # what decide recorded applies
    altered = attrs.evolve(decided, **changes)
    assert altered != decided
    with pytest.raises(BrokenInvariant):
        evolve(state, altered)


def test_an_enqueue_whose_target_disagrees_with_its_ready_time_is_refused() -> None:
    (enqueued,) = step(initial_state(), Enqueue(now_ms=0, handler="h", delay_ms=5))[0]
    assert enqueued.target is DELAYED
    with pytest.raises(BrokenInvariant):
        evolve(initial_state(), attrs.evolve(enqueued, target=PENDING))


def test_the_table_refuses_a_target_the_event_cannot_have() -> None:
    """A release never leads to DEAD, an expiry never waits: no edge in the table."""
    state = _leased()
    with pytest.raises(BrokenInvariant):
        evolve(state, attrs.evolve(_release(state), target=DEAD, retry_at_ms=None))
    assert _expire(state).target is PENDING
    with pytest.raises(BrokenInvariant):
        evolve(state, attrs.evolve(_expire(state), target=DELAYED, retry_at_ms=60))
