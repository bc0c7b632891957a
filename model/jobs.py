"""A job: what was asked for (``JobSpec``) and what has happened to it (``Job``).

The split keeps the hot path cheap and the meaning clear: a ``JobSpec`` is fixed
at enqueue and shared, unchanged, by every later version of the job; only the
small ``Job`` record around it is rebuilt by each event.

The records rebuilt on every event or read in bulk from a snapshot (``JobSpec``,
``Job``, ``AttemptRecord``, and in state.py
``State``, ``Counts``, ``Fifo``) are frozen attrs classes *without* slots: attrs
builds a frozen slotted instance with one ``object.__setattr__`` call per field,
a frozen dict-backed one with plain dict stores, and the second measured about
twice as fast here (benchmarks/bench_model.py, docs/performance.md).
"""

from __future__ import annotations

import attrs

from .errors import BrokenInvariant
from .lifecycle import IN_FLIGHT, JobStatus


@attrs.frozen(kw_only=True, slots=False)
class JobSpec:
    job_id: str
    queue: str
    handler: str
    args_json: str  # canonical JSON text; the model never interprets it
    priority: int
    max_attempts: int
    timeout_ms: int  # per attempt: the lease lasts this long
    backoff_base_ms: int
    backoff_cap_ms: int
    idempotency_key: str | None


@attrs.frozen(kw_only=True, slots=False)
class AttemptRecord:
    """One lease of the job and how it ended (``outcome`` None while it runs)."""

    attempt: int
    worker_id: str
    leased_at_ms: int
    expires_at_ms: int
    ended_at_ms: int | None = None
    outcome: str | None = None  # "completed" | "failed" | "expired" | "abandoned" | "released"
    error: str | None = None


@attrs.frozen(kw_only=True, slots=False)
class Job:
    spec: JobSpec
    status: JobStatus
    enqueued_lsn: int
    enqueued_at_ms: int
    # The LSN of the last event applied to this job.  Like a page LSN in ARIES, it
    # makes re-applying an event idempotent by state: an event at or below it is
    # already reflected here.
    last_lsn: int
    # When the job may next be leased (DELAYED), or became ready (PENDING).
    ready_at_ms: int
    # Order of readiness: the LSN of the event that made the job PENDING (FIFO
    # among equal priorities) or, while DELAYED, that scheduled it.
    ready_lsn: int
    # The job's slot in the ready FIFO (PENDING) or the finished FIFO (finished);
    # -1 when it is in neither.
    slot: int
    # The fence: how many leases were ever granted.  Never reset, so a result
    # from an earlier lease can always be told apart from the current one.
    attempt: int
    # Attempts counted against ``spec.max_attempts``; an operator requeue resets it.
    attempts_used: int
    lease_expires_at_ms: int | None
    cancel_requested: bool
    result_json: str | None
    error: str | None
    finished_at_ms: int | None
    history: tuple[AttemptRecord, ...]

    @property
    def job_id(self) -> str:
        return self.spec.job_id

    @property
    def lease_worker_id(self) -> str | None:
        """The worker holding the live lease; None when the job is not in flight.

        A property, not a field: the open attempt record already says it, and a
        second copy could disagree with it.  A rule that reads it reads the record.
        """
        if self.status is not IN_FLIGHT:
            return None
        # The open record is the last one (invariant at_most_one_live_lease_per_job).
        record = self.history[-1] if self.history else None
        if record is None or record.outcome is not None or record.attempt != self.attempt:
            raise BrokenInvariant(f"{self.job_id} is in flight without an open attempt record")
        return record.worker_id
