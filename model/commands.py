"""Commands: what a caller asks of the queue, named in the imperative.

Commands carry everything the model may not produce itself: the current time
(``now_ms``), identifiers, and the seed for retry jitter.  Defaults come from
limits.py so that a command built with only its required fields is valid.
"""

from __future__ import annotations

import attrs

from . import limits


@attrs.frozen(kw_only=True)
class Enqueue:
    now_ms: int
    handler: str
    args_json: str = "null"
    job_id: str | None = None  # None: derived from the LSN (see decide.derived_job_id)
    queue: str = "default"
    priority: int = limits.PRIORITY_DEFAULT
    max_attempts: int = limits.ATTEMPTS_DEFAULT
    timeout_ms: int = limits.TIMEOUT_MS_DEFAULT
    delay_ms: int = 0
    backoff_base_ms: int = limits.BACKOFF_BASE_MS_DEFAULT
    backoff_cap_ms: int = limits.BACKOFF_CAP_MS_DEFAULT
    idempotency_key: str | None = None


@attrs.frozen(kw_only=True)
class Lease:
    """Lease the next ready job to ``worker_id`` (no events when none is ready)."""

    now_ms: int
    worker_id: str


@attrs.frozen(kw_only=True)
class Complete:
    now_ms: int
    job_id: str
    attempt: int
    result_json: str = "null"
    # Used only when result_json cannot be stored: the attempt then fails, and this
    # seeds its retry delay exactly as Fail.jitter_seed does.  In [0, 2**64 - 1].
    jitter_seed: int = 0


@attrs.frozen(kw_only=True)
class Fail:
    now_ms: int
    job_id: str
    attempt: int
    error: str
    jitter_seed: int = 0  # in [0, 2**64 - 1]; the retry delay is a pure function of it


@attrs.frozen(kw_only=True)
class Release:
    """Give the live attempt back unfinished, e.g. when a graceful shutdown's grace
    period ends with its handler still running.  The attempt does not count."""

    now_ms: int
    job_id: str
    attempt: int


@attrs.frozen(kw_only=True)
class Tick:
    """Let time pass: expire leases, release due delayed jobs, forget old finished jobs."""

    now_ms: int
    retention_ms: int = limits.RETENTION_MS_DEFAULT
    finished_jobs_retained_max: int = limits.FINISHED_JOBS_RETAINED_MAX_DEFAULT


@attrs.frozen(kw_only=True)
class Cancel:
    now_ms: int
    job_id: str


@attrs.frozen(kw_only=True)
class Requeue:
    """Operator action: give a dead job a fresh budget of attempts."""

    now_ms: int
    job_id: str


@attrs.frozen(kw_only=True)
class PauseQueue:
    now_ms: int
    queue: str


@attrs.frozen(kw_only=True)
class ResumeQueue:
    now_ms: int
    queue: str


@attrs.frozen(kw_only=True)
class Recover:
    """Issued once after a restart, before anything else: see recovery.py."""

    now_ms: int


@attrs.frozen(kw_only=True)
class AbandonNode:
    """Issued by a cluster's leader when ``node`` has died: end the leases of that
    node's workers (model/nodes.py), and only those, as Recover ends every lease."""

    now_ms: int
    node: str


Command = (
    Enqueue
    | Lease
    | Complete
    | Fail
    | Release
    | Tick
    | Cancel
    | Requeue
    | PauseQueue
    | ResumeQueue
    | Recover
    | AbandonNode
)
COMMAND_TYPES: tuple[type[Command], ...] = (
    Enqueue,
    Lease,
    Complete,
    Fail,
    Release,
    Tick,
    Cancel,
    Requeue,
    PauseQueue,
    ResumeQueue,
    Recover,
    AbandonNode,
)
