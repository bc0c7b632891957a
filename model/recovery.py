"""Recovery: the fate of the jobs that were in flight when the process died.

After a crash, the state rebuilt from snapshot + log still shows some jobs
IN_FLIGHT, but the workers that held those leases died with the process; no
result will ever arrive for them.  ``abandon_leases`` decides their fate:

* each such lease ends with ``LeaseAbandoned``;
* the lost attempt counts (it was counted when the lease was granted), so a job
  that crashes the process every time it runs still reaches DEAD after
  ``max_attempts`` restarts, instead of crashing the queue forever;
* with attempts left the job returns to PENDING at once (no backoff: the crash
  was not the job's failure to report); a job whose cancellation was requested
  becomes CANCELLED.

The other half of recovery, rebuilding the state, is ``evolve.replay`` over the
snapshot and the log tail; it needs no decisions, only the LSN guard.
"""

from __future__ import annotations

from .endings import attempt_ending
from .errors import BrokenInvariant
from .events import Event, LeaseAbandoned
from .evolve import evolve
from .state import State


def abandon_leases(state: State, now_ms: int) -> tuple[Event, ...]:
    """The events that end every live lease in ``state`` (ordered by expiry, then id)."""
    leases = sorted((expires_at_ms, job_id) for job_id, expires_at_ms in state.in_flight.items())
    events: list[Event] = []
    for _expires_at_ms, job_id in leases:
        job = state.jobs[job_id]
        ending = attempt_ending(job, now_ms, now_ms)
        event = LeaseAbandoned(
            lsn=state.last_lsn + 1,
            at_ms=now_ms,
            job_id=job_id,
            attempt=job.attempt,
            target=ending.target,
            retry_at_ms=ending.retry_at_ms,
        )
        state = evolve(state, event)
        events.append(event)
    if state.in_flight:
        raise BrokenInvariant(f"recovery left {len(state.in_flight)} leases live")
    return tuple(events)
