"""The job lifecycle: its states and the one table of allowed moves.

Rule 1: a job changes state only through an event, and only along an edge of
``TRANSITIONS``.  ``evolve`` looks every move up here (``next_status``); a move that
is not in the table is a :class:`BrokenInvariant`.  ``spec/lifecycle.py`` declares
the same relation independently with the ``transitions`` library, and a test proves
the two equal edge for edge.  The diagram in ``docs/lifecycle.md`` is generated from it.

The table has one target per key, as h11's does: a key is the job's status, the
event's name and the status the event *recorded* (its ``target`` field), or None
for an event that records none because it has only one possible target.  Where an
event has several, ``decide`` chose among them and wrote the choice into the event
(events.py); the table does not choose, it says which choices are legal.  So the
retry rule lives in one place (model/endings.py), and changing it cannot change how
a log already written replays.

NB: ``ABSENT`` is a pseudo-state.  No job in a state is ever ABSENT; it stands for
"not in the state", both before ``JobEnqueued`` and after ``JobForgotten``.
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
#: (source, event name, the target the event recorded or None) -> target.
TransitionKey = tuple[JobStatus, str, JobStatus | None]

#: The targets an attempt that ended without success may record.
_RETRY_OR_FINISH = (PENDING, DEAD, CANCELLED)


def _recorded(
    source: JobStatus, event_name: str, *targets: JobStatus
) -> dict[TransitionKey, JobStatus]:
    """Entries for an event that records its target: each recorded target leads there."""
    return {(source, event_name, target): target for target in targets}


TRANSITIONS: dict[TransitionKey, JobStatus] = {
    **_recorded(ABSENT, "JobEnqueued", PENDING, DELAYED),
    (DELAYED, "DelayElapsed", None): PENDING,
    (PENDING, "LeaseGranted", None): IN_FLIGHT,
    (IN_FLIGHT, "JobCompleted", None): COMPLETED,
    # An attempt that fails may wait for a backoff before its retry: DELAYED.
    **_recorded(IN_FLIGHT, "JobFailed", *_RETRY_OR_FINISH, DELAYED),
    **_recorded(IN_FLIGHT, "LeaseExpired", *_RETRY_OR_FINISH),
    **_recorded(IN_FLIGHT, "LeaseAbandoned", *_RETRY_OR_FINISH),
    # NB: a released attempt does not count, so it never exhausts the budget: no DEAD.
    **_recorded(IN_FLIGHT, "LeaseReleased", PENDING, CANCELLED),
    (IN_FLIGHT, "CancelRequested", None): IN_FLIGHT,
    (PENDING, "JobCancelled", None): CANCELLED,
    (DELAYED, "JobCancelled", None): CANCELLED,
    # NB: the one way out of a finished state: an operator gives a dead job a
    # fresh budget of attempts.  COMPLETED and CANCELLED are absorbing.
    (DEAD, "JobRequeued", None): PENDING,
    (COMPLETED, "JobForgotten", None): ABSENT,
    (DEAD, "JobForgotten", None): ABSENT,
    (CANCELLED, "JobForgotten", None): ABSENT,
}


def edges() -> frozenset[Edge]:
    """The transition relation as a set of (source, event name, target) edges."""
    return frozenset((source, name, target) for (source, name, _), target in TRANSITIONS.items())


def triggers() -> frozenset[tuple[JobStatus, str]]:
    """The (source, event name) pairs that lead anywhere at all."""
    return frozenset((source, name) for source, name, _ in TRANSITIONS)


def next_status(source: JobStatus, event_name: str, recorded: JobStatus | None) -> JobStatus | None:
    """The status a job in ``source`` moves to on the event, or None if the table
    has no such move (which ``evolve`` reports as a broken invariant)."""
    return TRANSITIONS.get((source, event_name, recorded))
