"""How an attempt that did not succeed ends: the retry rule, in one place.

Four events end an attempt without success: ``JobFailed`` (the handler failed, or
its result was refused), ``LeaseExpired`` (it ran past its timeout),
``LeaseAbandoned`` (the process running it died) and ``LeaseReleased`` (the
runtime handed it back unfinished).  For each, ``decide`` (or recovery) calls
``attempt_ending`` and records the answer in the event, as ``target`` and
``retry_at_ms``.  ``evolve`` only applies what was recorded.  That split is what
makes this rule safe to change: a new rule decides new events, and the events
already in a log keep the fate they were given (docs/storage.md, "Schema
evolution").

The rule, in order (docs/semantics.md, "Ending an attempt"):

1. a cancellation was requested while the attempt ran: CANCELLED;
2. the attempts are used up: DEAD (a released attempt was given back first, so a
   release never gets here);
3. otherwise a retry, due at ``retry_at_ms``: DELAYED if that is later than now,
   else PENDING at once.
"""

from __future__ import annotations

import attrs

from .errors import BrokenInvariant
from .events import JobFailed, LeaseAbandoned, LeaseExpired, LeaseReleased
from .jobs import Job
from .lifecycle import CANCELLED, DEAD, DELAYED, PENDING, JobStatus


@attrs.frozen
class AttemptEnding:
    """The recorded fate of an attempt: where the job goes, and when it is retried."""

    target: JobStatus
    retry_at_ms: int | None  # None exactly when there is no retry


def attempt_ending(job: Job, now_ms: int, retry_at_ms: int) -> AttemptEnding:
    """The fate of ``job``'s live attempt, ending at ``now_ms`` without success.

    ``job`` is the job as the ending sees it: for a release, with the attempt
    already given back.  ``retry_at_ms`` is when a retry would be due (now, or
    after a backoff); it is dropped when there is no retry.
    """
    if retry_at_ms < now_ms:
        raise BrokenInvariant(f"{job.job_id}: a retry due at {retry_at_ms} is before {now_ms}")
    if job.cancel_requested:
        return AttemptEnding(CANCELLED, None)
    if job.attempts_used >= job.spec.max_attempts:
        return AttemptEnding(DEAD, None)
    return AttemptEnding(DELAYED if retry_at_ms > now_ms else PENDING, retry_at_ms)


#: The events that end an attempt without success; each records its ``target``.
EndingEvent = JobFailed | LeaseExpired | LeaseAbandoned | LeaseReleased
ENDING_EVENT_TYPES: tuple[type[EndingEvent], ...] = (
    JobFailed,
    LeaseExpired,
    LeaseAbandoned,
    LeaseReleased,
)
#: The targets of an ending that leave the job with work ahead: a retry.
RETRY_TARGETS: frozenset[JobStatus] = frozenset({PENDING, DELAYED})


def is_retry(event: EndingEvent) -> bool:
    """Whether ``event`` recorded a retry of a *counted* attempt (a release is not one:
    the attempt was handed back, not spent)."""
    return event.target in RETRY_TARGETS and not isinstance(event, LeaseReleased)
