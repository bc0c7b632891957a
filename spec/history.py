"""Properties of histories: facts about a sequence of events, and of the states between.

Theory of operation.  ``spec/invariants.py`` judges one state at a time.  Some
promises of the queue are about time instead: a job is completed at most once, a
finished job stays finished, a job never silently disappears, a result is accepted
only from the lease that is live.  No single state can show those; a history can.

A history is what a log holds, optionally with the states it passes through:

``events``
    a sequence of events with consecutive LSNs (it may start after LSN 1, as the
    tail of a log after a snapshot does);
``states``
    optional; ``len(states) == len(events) + 1``, ``states[0]`` is the state
    before the first event and ``states[i + 1]`` the state after ``events[i]``.

Properties that need only the events (``EVENT_PROPERTIES``) take ``events``.
Properties that compare job statuses across events (``STATE_PROPERTIES``) need the
states as well, and take ``(events, states)``.  Each returns its violations as
messages, empty when the history is fine; ``check_history`` runs every property
that the given data allows and raises ``BrokenInvariant`` naming each broken one.

A history that starts mid-way knows nothing of the jobs' earlier lives, so the
event properties judge a job only from what they have seen: its attempts are
checked from the first ``LeaseGranted`` or ``JobEnqueued`` on.

Pure by rule: no clock, no I/O, no randomness (``tests/test_purity.py``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

from beaverq.model.errors import BrokenInvariant
from beaverq.model.events import (
    Event,
    JobCompleted,
    JobEnqueued,
    JobFailed,
    JobForgotten,
    JobRequeued,
    LeaseAbandoned,
    LeaseExpired,
    LeaseGranted,
    LeaseReleased,
    QueuePaused,
    QueueResumed,
)
from beaverq.model.lifecycle import JobStatus
from beaverq.model.state import State

from .lifecycle import spec_edges

EventProperty = Callable[[Sequence[Event]], list[str]]
StateProperty = Callable[[Sequence[Event], Sequence[State]], list[str]]

#: At most this many messages per property (see spec/invariants.py, same reason).
MESSAGES_PER_PROPERTY_MAX = 10

# The events that end an attempt; each must carry the attempt of the live lease.
_ATTEMPT_ENDINGS = (JobCompleted, JobFailed, LeaseExpired, LeaseAbandoned, LeaseReleased)


def job_id_of(event: Event) -> str | None:
    """The job an event moves, or None for a queue event."""
    if isinstance(event, (QueuePaused, QueueResumed)):
        return None
    return event.job_id


def _describe(event: Event) -> str:
    job_id = job_id_of(event)
    subject = "" if job_id is None else f" of job {job_id!r}"
    return f"{type(event).__name__}{subject} at LSN {event.lsn}"


# -- Properties of the events alone. ----------------------------------------------------


def lsns_consecutive(events: Sequence[Event]) -> list[str]:
    """LSNs start at 1 or later and each is the previous + 1: the log has no gap,
    no repeat and no reordering, so replay can tell applied events from new ones."""
    found: list[str] = []
    if events and events[0].lsn < 1:
        found.append(f"the first event has LSN {events[0].lsn}; LSNs start at 1")
    for before, after in itertools.pairwise(events):
        if after.lsn != before.lsn + 1:
            found.append(f"{_describe(after)} follows LSN {before.lsn}")
    return found


def completion_recorded_at_most_once_per_job(events: Sequence[Event]) -> list[str]:
    """Per incarnation of a job (from its ``JobEnqueued`` to its ``JobForgotten``),
    at most one ``JobCompleted``: work is reported done once, whatever retries,
    expiries and late results happened.  A job id reused after it was forgotten
    is a new job and may complete again."""
    found: list[str] = []
    completed: dict[str, int] = {}  # job id -> LSN of its JobCompleted
    for event in events:
        if isinstance(event, (JobEnqueued, JobForgotten)):
            completed.pop(event.job_id, None)  # a new incarnation starts
        elif isinstance(event, JobCompleted):
            earlier = completed.get(event.job_id)
            if earlier is not None:
                found.append(f"{_describe(event)}: already completed at LSN {earlier}")
            completed[event.job_id] = event.lsn
    return found


def fenced_results(events: Sequence[Event]) -> list[str]:
    """Every ``JobCompleted``, ``JobFailed``, ``LeaseExpired``, ``LeaseAbandoned`` and
    ``LeaseReleased`` carries the attempt of the job's preceding ``LeaseGranted``, and
    ends that lease: one ending per lease.  And each lease's attempt is the previous
    one + 1 (1 for a job enqueued in this history).  This is the fence: a late result
    of an earlier lease can never be taken for the current one."""
    found: list[str] = []
    # Per job: the attempt of its last lease, and whether that lease is still open.
    # A job absent from ``leases`` has no lease seen yet in this history.
    leases: dict[str, tuple[int, bool]] = {}
    for event in events:
        if isinstance(event, JobEnqueued):
            leases[event.job_id] = (0, False)  # a new job: no lease yet
        elif isinstance(event, LeaseGranted):
            found.extend(_lease_problems(event, leases.get(event.job_id)))
            leases[event.job_id] = (event.attempt, True)
        elif isinstance(event, _ATTEMPT_ENDINGS):
            found.extend(_ending_problems(event, leases.get(event.job_id)))
            leases[event.job_id] = (event.attempt, False)
        elif isinstance(event, JobForgotten):
            leases.pop(event.job_id, None)
    return found


def _lease_problems(event: LeaseGranted, lease: tuple[int, bool] | None) -> list[str]:
    if lease is None:
        return []  # the job's earlier leases are before this history
    attempt, is_open = lease
    if is_open:
        return [f"{_describe(event)}: attempt {attempt} is still live"]
    if event.attempt != attempt + 1:
        return [f"{_describe(event)} is attempt {event.attempt}, the last was {attempt}"]
    return []


def _ending_problems(
    event: JobCompleted | JobFailed | LeaseExpired | LeaseAbandoned | LeaseReleased,
    lease: tuple[int, bool] | None,
) -> list[str]:
    if lease is None:
        return []  # leased before this history began
    attempt, is_open = lease
    if not is_open:
        return [f"{_describe(event)} ends attempt {event.attempt}, but no lease is live"]
    if event.attempt != attempt:
        return [f"{_describe(event)} carries attempt {event.attempt}, the live lease is {attempt}"]
    return []


# -- Properties of events together with the states between them. ------------------------
#
# These scan every job of every state: O(jobs) per event, fine for tests and
# simulations, not meant for production-size logs.


def states_at_event_lsns(events: Sequence[Event], states: Sequence[State]) -> list[str]:
    """``states[0]`` is just before the first event and each later state is at its
    event's LSN: the states really are the ones this log passes through."""
    found: list[str] = []
    if events and states[0].last_lsn != events[0].lsn - 1:
        found.append(f"states[0] is at LSN {states[0].last_lsn}, before {_describe(events[0])}")
    for index, event in enumerate(events):
        if states[index + 1].last_lsn != event.lsn:
            lsn = states[index + 1].last_lsn
            found.append(f"the state after {_describe(event)} is at LSN {lsn}")
    return found


def _status(state: State, job_id: str) -> JobStatus:
    job = state.jobs.get(job_id)
    return JobStatus.ABSENT if job is None else job.status


def moves_follow_the_lifecycle(events: Sequence[Event], states: Sequence[State]) -> list[str]:
    """Every job event moves its job along an edge of the *spec* machine
    (spec/lifecycle.py), not only of the model's own table."""
    edges = spec_edges()
    found: list[str] = []
    for index, event in enumerate(events):
        job_id = job_id_of(event)
        if job_id is None:
            continue
        source = _status(states[index], job_id).value
        target = _status(states[index + 1], job_id).value
        if (source, type(event).__name__, target) not in edges:
            found.append(f"{_describe(event)} moved it {source} -> {target}, not an edge")
    return found


def events_touch_only_their_job(events: Sequence[Event], states: Sequence[State]) -> list[str]:
    """An event changes its own job and no other (a queue event changes no job).

    This is what makes the per-event properties below sound: only the event's job
    needs looking at."""
    found: list[str] = []
    for index, event in enumerate(events):
        before, after = states[index].jobs, states[index + 1].jobs
        own = job_id_of(event)
        for job_id in set(before.keys()) | set(after.keys()):
            if job_id != own and before.get(job_id) != after.get(job_id):
                found.append(f"{_describe(event)} changed job {job_id!r}")
    return found


def no_job_vanishes(events: Sequence[Event], states: Sequence[State]) -> list[str]:
    """A job leaves the state only by its ``JobForgotten``, and enters it only by its
    ``JobEnqueued``: nothing is lost or invented between the log and the state."""
    found: list[str] = []
    for index, event in enumerate(events):
        before, after = set(states[index].jobs.keys()), set(states[index + 1].jobs.keys())
        own = job_id_of(event)
        for job_id in sorted(before - after):
            if not (isinstance(event, JobForgotten) and job_id == own):
                found.append(f"job {job_id!r} left the state at {_describe(event)}")
        for job_id in sorted(after - before):
            if not (isinstance(event, JobEnqueued) and job_id == own):
                found.append(f"job {job_id!r} entered the state at {_describe(event)}")
    return found


def finished_states_absorbing(events: Sequence[Event], states: Sequence[State]) -> list[str]:
    """COMPLETED and CANCELLED are left only by ``JobForgotten``; DEAD only by
    ``JobRequeued`` or ``JobForgotten``.  A finished job's result is final: no late
    result, expiry or cancel can change it."""
    found: list[str] = []
    for index, event in enumerate(events):
        for job_id, job in states[index].jobs.items():
            if job.status not in _EXITS:
                continue
            target = _status(states[index + 1], job_id)
            exit_allowed = job_id == job_id_of(event) and isinstance(event, _EXITS[job.status])
            if target is not job.status and not exit_allowed:
                found.append(
                    f"{job.status.value} job {job_id!r} became {target.value} at {_describe(event)}"
                )
    return found


# From each finished status: the events that may take a job out of it.
_EXITS: dict[JobStatus, tuple[type[Event], ...]] = {
    JobStatus.COMPLETED: (JobForgotten,),
    JobStatus.CANCELLED: (JobForgotten,),
    JobStatus.DEAD: (JobRequeued, JobForgotten),
}


EVENT_PROPERTIES: tuple[EventProperty, ...] = (
    lsns_consecutive,
    completion_recorded_at_most_once_per_job,
    fenced_results,
)
STATE_PROPERTIES: tuple[StateProperty, ...] = (
    states_at_event_lsns,
    moves_follow_the_lifecycle,
    events_touch_only_their_job,
    no_job_vanishes,
    finished_states_absorbing,
)


def history_violations(
    events: Sequence[Event], states: Sequence[State] | None = None
) -> dict[str, list[str]]:
    """Every broken property of the history, by name, with (a few of) its messages."""
    found: dict[str, list[str]] = {}
    for event_property in EVENT_PROPERTIES:
        _record(found, event_property.__name__, event_property(events))
    if states is not None:
        if len(states) != len(events) + 1:
            raise BrokenInvariant(
                f"{len(events)} events need {len(events) + 1} states (before and after each), "
                f"got {len(states)}"
            )
        for state_property in STATE_PROPERTIES:
            _record(found, state_property.__name__, state_property(events, states))
    return found


def check_history(events: Sequence[Event], states: Sequence[State] | None = None) -> None:
    """Raise ``BrokenInvariant`` naming every broken property of the history.

    Without ``states`` only the ``EVENT_PROPERTIES`` are checked."""
    found = history_violations(events, states)
    if found:
        lines = [f"{len(found)} history propert(y/ies) broken over {len(events)} events:"]
        for name, messages in found.items():
            lines.append(f"  {name}:")
            lines.extend(f"    - {message}" for message in messages)
        raise BrokenInvariant("\n".join(lines))


def _record(found: dict[str, list[str]], name: str, messages: list[str]) -> None:
    if not messages:
        return
    if len(messages) > MESSAGES_PER_PROPERTY_MAX:
        extra = len(messages) - MESSAGES_PER_PROPERTY_MAX
        messages = [*messages[:MESSAGES_PER_PROPERTY_MAX], f"... and {extra} more"]
    found[name] = messages
