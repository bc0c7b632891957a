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

In a cluster a node dies alone: the others' workers still run their leases, and
their results will arrive.  ``abandon_node_leases`` ends only the leases held by
the dead node's workers (model/nodes.py says which workers are a node's), by the
same path and the same rule as ``abandon_leases``: the two differ only in which
leases they select.

The other half of recovery, rebuilding the state, is ``evolve.replay`` over the
snapshot and the log tail; it needs no decisions, only the LSN guard.
"""

from __future__ import annotations

from collections.abc import Callable

from .endings import attempt_ending
from .errors import BrokenInvariant
from .events import Event, LeaseAbandoned
from .evolve import evolve
from .jobs import Job
from .nodes import node_of_worker
from .state import State


def abandon_leases(state: State, now_ms: int) -> tuple[Event, ...]:
    """The events that end every live lease in ``state`` (ordered by expiry, then id)."""
    return _abandon_matching(state, now_ms, "every lease", _every_lease)


def abandon_node_leases(state: State, now_ms: int, node: str) -> tuple[Event, ...]:
    """The events that end the live leases held by ``node``'s workers, in the order
    ``abandon_leases`` would end them; none when the node holds no lease."""

    def held_by_node(job: Job) -> bool:
        worker_id = job.lease_worker_id
        return worker_id is not None and node_of_worker(worker_id) == node

    return _abandon_matching(state, now_ms, f"the leases of node {node!r}", held_by_node)


def _every_lease(job: Job) -> bool:
    return True


def _abandon_matching(
    state: State, now_ms: int, which: str, selected: Callable[[Job], bool]
) -> tuple[Event, ...]:
    """End each live lease whose job ``selected`` accepts, by (expiry, job id).

    The one path of both recoveries: the order, the event and the retry rule are
    decided here and only here, so a node's abandonment is a Recover restricted to
    the node's leases, never a second copy that could drift from it.
    """
    leases = sorted(
        (expires_at_ms, job_id)
        for job_id, expires_at_ms in state.in_flight.items()
        if selected(state.jobs[job_id])
    )
    events: list[Event] = []
    for _expires_at_ms, job_id in leases:
        job = state.jobs[job_id]
        # No backoff: the lease was lost with its worker, it is not the job's failure.
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
    # Each event ends one selected lease and starts none, so none may be left.
    left = sum(1 for job_id in state.in_flight if selected(state.jobs[job_id]))
    if left:
        raise BrokenInvariant(f"recovery of {which} left {left} of them live")
    return tuple(events)
