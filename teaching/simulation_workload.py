"""The simulated workload: the mix of work and the scenario's knobs.

``teaching/simulate.py`` plays these out against the pure model.  They are values,
not code: the kinds of job (where they go, how often they fail or hang), and the
rates and durations of everything that happens from outside the queue (arrivals,
delays, duplicates, cancellations, a paused queue, crashes).  The checks at the
bottom relate them, so an edit that would blur the outcomes fails at import time.
"""

from __future__ import annotations

import attrs

from beaverq.model.errors import BrokenInvariant


@attrs.frozen
class JobKind:
    """A family of jobs: where they go, how they are configured, how they behave."""

    queue: str
    handler: str
    timeout_ms: int
    max_attempts: int
    fail_percent: int  # chance that an attempt reports a failure
    hang_percent: int  # chance that an attempt runs past its lease and reports late
    errors: tuple[str, ...]


# The mix of work.  Webhooks are flaky on purpose, so that some jobs use up their
# attempts and end dead; thumbnails hang most, so that expiries are common.
JOB_KINDS = (
    JobKind("default", "report.build", 8_000, 3, 10, 3, ("out of memory", "bad input")),
    JobKind("email", "email.send", 5_000, 4, 15, 5, ("SMTP 451", "connection reset")),
    JobKind("media", "thumbnail.render", 6_000, 2, 10, 12, ("corrupt image",)),
    JobKind("webhooks", "webhook.deliver", 4_000, 3, 40, 5, ("HTTP 503", "HTTP 429")),
)
KIND_BY_HANDLER = {kind.handler: kind for kind in JOB_KINDS}
# The queue the operator pauses for a while, then resumes.
PAUSED_QUEUE = "media"

PRIORITIES = (-5, 0, 0, 0, 5, 10)  # drawn uniformly: mostly the default priority
# Jobs arrive about as fast as the workers can take them: busy enough that a
# backlog forms and priorities matter, not so busy that it grows without end.
WORKER_MS_PER_JOB = 2_000  # measured: mean worker time per job, retries and hangs included
OFFERED_LOAD_PERCENT = 90
DELAYED_PERCENT = 20
DELAY_MS_MIN, DELAY_MS_MAX = 1_000, 10_000
KEYED_PERCENT = 15  # jobs enqueued with an idempotency key...
DUPLICATED_PERCENT = 50  # ...of which this many are sent a second time
DUPLICATE_AFTER_MS_MAX = 5_000
CANCELLED_PERCENT = 5
CANCEL_AFTER_MS_MAX = 6_000
PAUSE_MS_MIN, PAUSE_MS_MAX = 3_000, 15_000
WORK_MS_MIN, WORK_MS_MAX = 50, 2_500
HANG_OVERRUN_MS_MAX = 3_000  # a hung attempt reports this long after its lease ended
BACKOFF_BASE_MS, BACKOFF_CAP_MS = 500, 8_000
JOBS_PER_CRASH = 200
CRASHES_MAX = 5
DOWNTIME_MS_MIN, DOWNTIME_MS_MAX = 500, 3_000

# An attempt that neither fails nor hangs must finish within its lease, or the
# three outcomes would blur into each other.
if min(kind.timeout_ms for kind in JOB_KINDS) <= WORK_MS_MAX:
    raise BrokenInvariant("an attempt that neither fails nor hangs could outlive its lease")
# The operator pauses a queue that jobs actually go to.
if PAUSED_QUEUE not in {kind.queue for kind in JOB_KINDS}:
    raise BrokenInvariant(f"the paused queue {PAUSED_QUEUE!r} is no kind's queue")
