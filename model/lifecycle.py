"""The job lifecycle: its states and the one table of allowed moves.

Rule 1: a job changes state only through an event, and only along an edge of
``TRANSITIONS``.  ``evolve`` computes the target of each event and asserts that
``(source, event name, target)`` is an edge here; ``spec/lifecycle.py`` declares the
same relation independently with the ``transitions`` library, and a test proves the
two equal edge for edge.  The diagram in ``docs/lifecycle.md`` is generated from it.

NB: ``ABSENT`` is a pseudo-state.  No job in a state is ever ABSENT; it stands for
"not in the state", both before ``JobEnqueued`` and after ``JobForgotten``.

NB: most moves have one target.  Where an event has several, the job decides: an
attempt that ends without success goes to DEAD when its attempts are used up, to
CANCELLED when a cancellation was requested while it ran, and otherwise back to
PENDING, or to DELAYED when the retry waits for a backoff.
"""

from __future__ import annotations

import enum


class JobStatus(enum.Enum):
    ABSENT = "absent"
    PENDING = "pending"
    DELAYED = "delayed"
    IN_FLIGHT = "in_flight"
    COMPLETED = "completed"
    DEAD = "dead"
    CANCELLED = "cancelled"

    # Identity hashing: members are singletons, and Enum's own __hash__ is a
    # Python-level call on the hot path (every evolve checks the table).
    __hash__ = object.__hash__


ABSENT = JobStatus.ABSENT
PENDING = JobStatus.PENDING
DELAYED = JobStatus.DELAYED
IN_FLIGHT = JobStatus.IN_FLIGHT
COMPLETED = JobStatus.COMPLETED
DEAD = JobStatus.DEAD
CANCELLED = JobStatus.CANCELLED

#: Finished jobs: no worker holds them and nothing happens to them by itself.
FINISHED: frozenset[JobStatus] = frozenset({COMPLETED, DEAD, CANCELLED})
#: Jobs that still have work ahead of them.
UNFINISHED: frozenset[JobStatus] = frozenset({PENDING, DELAYED, IN_FLIGHT})

Edge = tuple[JobStatus, str, JobStatus]

_ATTEMPT_ENDED = frozenset({PENDING, DEAD, CANCELLED})

#: (source, event name) -> the targets that event may lead to.
TRANSITIONS: dict[tuple[JobStatus, str], frozenset[JobStatus]] = {
    (ABSENT, "JobEnqueued"): frozenset({PENDING, DELAYED}),
    (DELAYED, "DelayElapsed"): frozenset({PENDING}),
    (PENDING, "LeaseGranted"): frozenset({IN_FLIGHT}),
    (IN_FLIGHT, "JobCompleted"): frozenset({COMPLETED}),
    (IN_FLIGHT, "JobFailed"): _ATTEMPT_ENDED | {DELAYED},
    (IN_FLIGHT, "LeaseExpired"): _ATTEMPT_ENDED,
    (IN_FLIGHT, "LeaseAbandoned"): _ATTEMPT_ENDED,
    # NB: a released attempt does not count, so it never exhausts the budget: no DEAD.
    (IN_FLIGHT, "LeaseReleased"): frozenset({PENDING, CANCELLED}),
    (IN_FLIGHT, "CancelRequested"): frozenset({IN_FLIGHT}),
    (PENDING, "JobCancelled"): frozenset({CANCELLED}),
    (DELAYED, "JobCancelled"): frozenset({CANCELLED}),
    # NB: the one way out of a finished state: an operator gives a dead job a
    # fresh budget of attempts.  COMPLETED and CANCELLED are absorbing.
    (DEAD, "JobRequeued"): frozenset({PENDING}),
    (COMPLETED, "JobForgotten"): frozenset({ABSENT}),
    (DEAD, "JobForgotten"): frozenset({ABSENT}),
    (CANCELLED, "JobForgotten"): frozenset({ABSENT}),
}


def edges() -> frozenset[Edge]:
    """The transition relation as a set of (source, event name, target) edges."""
    return frozenset(
        (source, event_name, target)
        for (source, event_name), targets in TRANSITIONS.items()
        for target in targets
    )


def is_allowed(source: JobStatus, event_name: str, target: JobStatus) -> bool:
    return target in TRANSITIONS.get((source, event_name), frozenset())
