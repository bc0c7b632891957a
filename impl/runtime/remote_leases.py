"""Leases for workers the controller does not own: the cluster's pull path.

In a cluster (impl/cluster/node.py) the leader's controller has no slots of its own
(``ControllerOptions.cluster_member``): the workers of every node, the leader's
included, ask it for leases for their free slots and send their results back.  The
same rules hold as for local slots: a task is handed out only once its
``LeaseGranted`` is durable (R2), and a result is fenced by its attempt (a lease that
a node lost meanwhile makes its result stale, counted and dropped).  Like loops.py,
this is the controller's own code in its own file.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from beaverq.model import AbandonNode, Lease, State

from . import loops
from .workers import Task, TaskResult, task_of

if TYPE_CHECKING:
    from .controller import Controller


def lease_tasks(controller: Controller, worker_ids: Sequence[str]) -> list[Task]:
    """A lease for each of ``worker_ids`` while jobs are ready; the tasks, once
    durable.  Fewer tasks than workers when fewer jobs are ready."""
    controller._refuse_if_stopping()
    tasks: list[Task] = []

    def collect(outcomes: Sequence[object], state: State) -> None:
        for worker_id, granted in zip(worker_ids, outcomes, strict=True):
            if isinstance(granted, tuple) and granted:  # else nothing was ready
                # leased_at None: the remote pool starts the clock when it receives it.
                tasks.append(task_of(state, granted, worker_id, None))

    _outcomes, lsn, committer = controller._apply(
        lambda now: [Lease(now_ms=now, worker_id=worker_id) for worker_id in worker_ids],
        on_published=collect,
    )
    if tasks:
        controller._wait_durable(committer, lsn)  # R2: no handler before its lease
    return tasks


def record_results(controller: Controller, results: Sequence[TaskResult]) -> None:
    """Decide Complete/Fail/Release for each result and wait until they are durable,
    so the node that sent them may forget them (if the leader dies first, the node
    sends them again to the next one; the attempt fence drops a second copy)."""
    loops.process_results(controller, results)
    controller._durable_state()


def abandon_node(controller: Controller, node: str) -> int:
    """End every live lease held by ``node``'s workers (the node is gone); how many."""
    events = controller._run_one(lambda now: AbandonNode(now_ms=now, node=node))
    return len(events)
