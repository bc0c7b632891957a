"""The read models: what ``status``, ``show`` and ``jobs`` answer, and the statistics.

The functions read a ``State`` and return plain JSON-able dicts: the controller serves
them from its durable state (R2), and the control path serves them from a read-only
load of a data directory when no runner holds it (impl/frontends/control.py).
``Stats`` counts what the controller appended since it started; ``RecoveryFigures``
says what its start found.  The metrics (impl/frontends/metrics.py) read both.
"""

from __future__ import annotations

from typing import Any

import attrs

from beaverq.model import (
    Event,
    Job,
    JobCancelled,
    JobCompleted,
    JobStatus,
    LeaseExpired,
    LeaseGranted,
    LeaseReleased,
    State,
    next_ready_job,
)
from beaverq.model.endings import ENDING_EVENT_TYPES, is_retry

# -- Statistics. -----------------------------------------------------------------------------


@attrs.define
class Stats:
    """Counters since this controller started (the metrics read these)."""

    dispatched: int = 0  # LeaseGranted
    completed: int = 0  # JobCompleted
    retried: int = 0  # attempts that ended in a retry (failed, expired, abandoned)
    dead: int = 0  # jobs that reached DEAD
    cancelled: int = 0  # jobs that reached CANCELLED
    expired: int = 0  # LeaseExpired
    released: int = 0  # LeaseReleased: given back unstarted or at a stop, not counted
    withdrawn: int = 0  # tasks taken back from the pool's queue before they started
    observer_errors: int = 0  # observers dropped because they raised
    observer_error_last: str | None = None
    stale_results: int = 0  # results refused by the attempt fence
    results_refused: int = 0  # a success whose result the model could not store (JobFailed)
    submits_refused: int = 0  # leases the pool would not take (their lease expires)
    snapshots: int = 0
    snapshot_seconds_last: float = 0.0
    snapshot_failures: int = 0  # the WAL kept everything; retried after an interval
    snapshot_error_last: str | None = None
    events_appended: int = 0

    def count(self, event: Event) -> None:
        """Count one event the controller appended, from what the event recorded: an
        ending carries its outcome (model/events.py), so no state is consulted."""
        stats = self
        if isinstance(event, LeaseGranted):
            stats.dispatched += 1
        elif isinstance(event, JobCompleted):
            stats.completed += 1
        elif isinstance(event, JobCancelled):
            stats.cancelled += 1
        elif isinstance(event, ENDING_EVENT_TYPES):
            stats.expired += isinstance(event, LeaseExpired)
            stats.released += isinstance(event, LeaseReleased)
            stats.retried += is_retry(event)
            stats.dead += event.target is JobStatus.DEAD
            stats.cancelled += event.target is JobStatus.CANCELLED


@attrs.frozen(kw_only=True)
class RecoveryFigures:
    """What the last start found: the storage's report, plus the Recover decision."""

    seconds: float  # Storage.open + Recover durable (0.0 when not measured here)
    snapshot_lsn: int
    records_replayed: int
    bytes_truncated: int
    last_lsn: int
    leases_abandoned: int

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


# -- Reading a state. ------------------------------------------------------------------------


def is_idle(state: State) -> bool:
    """No job pending, delayed or in flight, paused queues aside."""
    counts = state.counts
    if counts.in_flight or next_ready_job(state) is not None:
        return False
    if counts.delayed == 0:
        return True
    if not state.paused:
        return False
    # Rare (paused queues and delayed jobs): a scan is fine.
    return not any(
        job.status is JobStatus.DELAYED and job.spec.queue not in state.paused
        for job in state.jobs.values()
    )


_COUNTED = ("pending", "delayed", "in_flight", "completed", "dead", "cancelled")


def status_of(state: State) -> dict[str, Any]:
    counts = state.counts
    queues: dict[str, dict[str, int]] = {}
    for job in state.jobs.values():
        per = queues.get(job.spec.queue)
        if per is None:
            per = queues[job.spec.queue] = dict.fromkeys(_COUNTED, 0)
        per[job.status.value] += 1
    return {
        **{name: getattr(counts, name) for name in _COUNTED},
        "total": counts.total,
        "queues": dict(sorted(queues.items())),
        "paused": sorted(state.paused),
        "last_lsn": state.last_lsn,
    }


def job_summary(job: Job) -> dict[str, Any]:
    spec = job.spec
    return {
        "job_id": spec.job_id,
        "queue": spec.queue,
        "handler": spec.handler,
        "status": job.status.value,
        "priority": spec.priority,
        "attempt": job.attempt,
        "attempts_used": job.attempts_used,
        "max_attempts": spec.max_attempts,
        "error": job.error,
    }


def job_detail(job: Job) -> dict[str, Any]:
    spec = job.spec
    return job_summary(job) | {
        "args_json": spec.args_json,
        "timeout_ms": spec.timeout_ms,
        "backoff_base_ms": spec.backoff_base_ms,
        "backoff_cap_ms": spec.backoff_cap_ms,
        "idempotency_key": spec.idempotency_key,
        "enqueued_at_ms": job.enqueued_at_ms,
        "ready_at_ms": job.ready_at_ms,
        "lease_expires_at_ms": job.lease_expires_at_ms,
        "cancel_requested": job.cancel_requested,
        "result_json": job.result_json,
        "finished_at_ms": job.finished_at_ms,
        "attempts": [attrs.asdict(record) for record in job.history],
    }


def jobs_of(
    state: State, status: str | None = None, queue: str | None = None, limit: int | None = None
) -> list[dict[str, Any]]:
    if status is not None and status not in _COUNTED:
        raise ValueError(f"unknown state {status!r}: one of {', '.join(_COUNTED)}")
    found = [
        job
        for job in state.jobs.values()
        if (status is None or job.status.value == status)
        and (queue is None or job.spec.queue == queue)
    ]
    found.sort(key=lambda job: job.enqueued_lsn)
    if limit is not None:
        found = found[:limit]
    return [job_summary(job) for job in found]
