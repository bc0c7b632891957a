"""The simulation's output: its event log lines, its summary, and the report.

``teaching/simulate.py`` fills these in; they only format.  Everything is
integer arithmetic and fixed-width text, so the same run prints the same bytes.
"""

from __future__ import annotations

import json

import attrs

from beaverq.model import (
    CancelRequested,
    DelayElapsed,
    Event,
    JobCancelled,
    JobCompleted,
    JobEnqueued,
    JobFailed,
    JobForgotten,
    JobRequeued,
    JobStatus,
    LeaseAbandoned,
    LeaseExpired,
    LeaseGranted,
    LeaseReleased,
    QueuePaused,
    QueueResumed,
    State,
)
from beaverq.model.endings import EndingEvent
from beaverq.model.errors import BrokenInvariant


@attrs.frozen(kw_only=True)
class Summary:
    enqueued: int
    duplicates: int  # enqueues absorbed by an idempotency key (no event)
    completed: int
    dead: int
    cancelled: int
    retried: int  # JobFailed / LeaseExpired / LeaseAbandoned that led to a retry
    leases: int
    expiries: int
    abandoned: int
    crashes: int
    late_results: int  # results refused by the attempt fence
    cancels: int  # Cancel commands issued
    final_lsn: int
    simulated_ms: int
    steps: int
    invariants: str  # "hold" once the spec invariants were checked

    def rows(self) -> list[tuple[str, str]]:
        return [
            ("enqueued", str(self.enqueued)),
            ("duplicate enqueues", str(self.duplicates)),
            ("completed", str(self.completed)),
            ("dead", str(self.dead)),
            ("cancelled", str(self.cancelled)),
            ("retried", str(self.retried)),
            ("leases", str(self.leases)),
            ("expiries", str(self.expiries)),
            ("abandoned leases", str(self.abandoned)),
            ("crashes", str(self.crashes)),
            ("late results refused", str(self.late_results)),
            ("cancels issued", str(self.cancels)),
            ("final LSN", str(self.final_lsn)),
            ("simulated time", seconds(self.simulated_ms)),
            ("steps", str(self.steps)),
            ("replay of the log", "matches"),
            ("spec invariants", self.invariants),
        ]


@attrs.frozen(kw_only=True)
class SimulationReport:
    seed: int
    jobs: int
    workers: int
    log: tuple[str, ...]  # one line per event, plus notes (lines marked "--")
    summary: Summary
    events: tuple[Event, ...]
    final_state: State

    def header(self) -> str:
        return f"beaverq simulation: seed {self.seed}, {self.jobs} jobs, {self.workers} workers"

    def summary_lines(self) -> list[str]:
        lines = ["summary"]
        lines += [f"  {label:<22}{value:>12}" for label, value in self.summary.rows()]
        return lines

    def render(self, quiet: bool = False) -> str:
        """The whole output, ending in a newline; ``quiet`` leaves out the event log."""
        lines = [self.header(), ""]
        if not quiet:
            lines += [*self.log, ""]
        lines += self.summary_lines()
        return "\n".join(lines) + "\n"


def seconds(ms: int) -> str:
    """``1250`` -> ``"1.250s"``, in integer arithmetic (no float rounding surprises)."""
    return f"{ms // 1000}.{ms % 1000:03d}s"


def log_line(at_ms: int, lsn: str, what: str, details: str) -> str:
    return f"[{seconds(at_ms):>9}] {lsn:<6} {what:<15} {details}".rstrip()


def event_details(event: Event) -> str:
    """What a log line says about ``event``: its job and, for an ending, the fate it
    recorded (read from the event, never from the state: events record decisions)."""
    match event:
        case JobEnqueued(spec=spec):
            text = (
                f"{spec.job_id} queue={spec.queue} handler={spec.handler} "
                f"priority={spec.priority} attempts={spec.max_attempts} "
                f"timeout={seconds(spec.timeout_ms)}"
            )
            if event.ready_at_ms > event.at_ms:
                text += f" ready_at={seconds(event.ready_at_ms)}"
            if spec.idempotency_key is not None:
                text += f" key={spec.idempotency_key}"
            return text
        case LeaseGranted():
            return (
                f"{event.job_id} attempt={event.attempt} worker={event.worker_id} "
                f"expires={seconds(event.expires_at_ms)}"
            )
        case JobCompleted():
            return f"{event.job_id} attempt={event.attempt}"
        case JobFailed():
            return (
                f"{event.job_id} attempt={event.attempt} error={json.dumps(event.error)} "
                f"{_fate(event)}"
            )
        case LeaseExpired() | LeaseAbandoned():
            return f"{event.job_id} attempt={event.attempt} {_fate(event)}"
        case LeaseReleased():
            # Not issued by the simulator today (no graceful stop in its story), but
            # every event a log can hold has a description.
            return f"{event.job_id} attempt={event.attempt} released, not counted {_fate(event)}"
        case DelayElapsed() | CancelRequested() | JobCancelled() | JobRequeued() | JobForgotten():
            return event.job_id
        case QueuePaused() | QueueResumed():
            return f"queue={event.queue}"
    raise BrokenInvariant(f"no description for {event!r}")


def _fate(event: EndingEvent) -> str:
    """Where an attempt that did not succeed led its job, as the event recorded it."""
    if event.target is JobStatus.DELAYED and event.retry_at_ms is not None:
        return f"-> retry at {seconds(event.retry_at_ms)}"
    if event.target is JobStatus.PENDING:
        return "-> retry now"
    return f"-> {event.target.value}"
