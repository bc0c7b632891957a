"""A node's workers: they pull leases from the leader for their free slots.

This is the cluster's load balancing (docs/cluster.md): no one pushes work at a
node; each node asks the leader for as many leases as it has free slots, and the
leader grants them in one committed batch (group commit packs the requests of every
node into one etcd txn).  A busy node asks for less, an idle one for more.

The leader is reached through a ``LeaderPort``: the local controller when this node
leads, an HTTP client otherwise (rpc.py).  Results wait in ``_results`` until the
leader confirms they are durable; if the leader dies first they go to the next one,
and the attempt fence drops any that a new leader has meanwhile abandoned.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import attrs

from beaverq.impl.runtime.dispatch_window import WITHDRAW_AFTER, DispatchWindow
from beaverq.impl.runtime.handlers import Outcome
from beaverq.impl.runtime.workers import Task, TaskResult, ThreadPool
from beaverq.model.nodes import worker_id_of

#: The dispatch window's horizon on a cluster node (see ``NodeWorkers``).
LEASE_AHEAD_S = 0.2
#: When there is nothing to do, how long to wait before asking the leader again.
IDLE_POLL_S = 0.02
#: After a failed call to the leader, how long to wait before the next.
RETRY_S = 0.1


class LeaderUnreachable(Exception):
    """No leader answered (none elected yet, or it just died)."""


class LeaderPort(Protocol):
    def lease(self, worker_ids: Sequence[str]) -> list[Task]: ...

    def results(self, results: Sequence[TaskResult]) -> None: ...

    def abandon_node(self, node: str) -> int: ...


class NoWorkers:
    """The leader controller's pool in a cluster: it has no slots of its own
    (``ControllerOptions.cluster_member``); every node's workers pull."""

    workers = 1
    capacity = 1

    def start(self, on_result: Callable[[TaskResult], None]) -> None:
        pass

    def submit(self, task: Task) -> None:
        raise RuntimeError("a cluster leader's controller hands no task to a local pool")

    def shutdown(self, grace_s: float) -> list[str]:
        return []

    def end_grace(self) -> None:
        pass

    def withdraw_waiting(self, fraction: float) -> list[Task]:
        return []


class NodeWorkers:
    def __init__(
        self,
        node: str,
        pool: ThreadPool,
        leader: Callable[[], LeaderPort | None],
        *,
        lease_ahead_s: float = LEASE_AHEAD_S,
    ) -> None:
        self._node = node
        self._pool = pool
        self._leader = leader
        # How far ahead of its workers a node leases: the single-node dispatch window
        # (impl/runtime/dispatch_window.py), with a horizon for the cluster's longer
        # round trip (an RPC and a quorum-fsynced etcd txn, twice per job).  Measured
        # with no-op jobs: 60 tasks ahead per node gave 1,600 jobs/s, 600 gave 3,170;
        # the window leases that far only for jobs that quick.
        self._window = DispatchWindow(
            workers=pool.workers, capacity=pool.capacity, horizon_s=lease_ahead_s
        )
        self._slots = [worker_id_of(node, index) for index in range(pool.capacity)]
        self._held: dict[str, Task] = {}  # slot -> its task, until the result is sent
        self._results: list[TaskResult] = []
        self._changed = threading.Condition()
        self._stopping = threading.Event()
        self._own_leases_abandoned = False
        self._halted = False
        self._thread = threading.Thread(target=self._run, name="beaverq-puller", daemon=True)
        self.completed = 0  # results the leader recorded

    def start(self) -> None:
        self._pool.start(self._on_result)
        self._thread.start()

    def _on_result(self, result: TaskResult) -> None:
        with self._changed:
            self._results.append(result)
            if result.started:
                self._window.observe(result.duration_s)
            self._changed.notify_all()

    def _withdraw_waiting(self) -> None:
        """The window's safety net, as on one node (loops.withdraw_waiting): a task that
        waited half its timeout unstarted goes back (``Release``, uncounted) before its
        lease can expire (counted)."""
        withdrawn = self._pool.withdraw_waiting(WITHDRAW_AFTER)
        if withdrawn:
            with self._changed:
                self._results.extend(_unstarted(task) for task in withdrawn)

    def stop(self, grace_s: float, deadline_s: float = 10.0) -> None:
        """Stop pulling; give running handlers ``grace_s``; hand every lease still
        held back (``Release`` through a never-started result); send what is left to
        the leader, trying until ``deadline_s`` (after that the leases expire)."""
        self._stopping.set()
        with self._changed:
            self._changed.notify_all()
        self._thread.join()
        self._pool.shutdown(grace_s)
        with self._changed:
            reported = {result.worker_id for result in self._results}
            for slot, task in self._held.items():
                if slot not in reported:
                    self._results.append(_unstarted(task))
        give_up_at = time.monotonic() + deadline_s
        while self._results and time.monotonic() < give_up_at:
            if not self._send_results():
                time.sleep(RETRY_S)  # stopping: nothing else to wait on

    def halt(self) -> None:
        """Stop at once, as a crash would: nothing more is pulled or sent."""
        self._stopping.set()
        self._halted = True
        with self._changed:
            self._changed.notify_all()
        if self._thread.is_alive():
            self._thread.join()
        self._pool.shutdown(0.0)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._withdraw_waiting()
                worked = self._send_results()
                worked = self._pull() or worked
            except Exception as error:  # never a silent death: this node would pull no more
                print(
                    f"beaverq: node {self._node}: pulling work failed ({error}); retrying",
                    file=sys.stderr,
                    flush=True,
                )
                self._stopping.wait(RETRY_S)
                continue
            if not worked:
                with self._changed:
                    if not self._results and not self._stopping.is_set():
                        self._changed.wait(IDLE_POLL_S)

    def _port(self) -> LeaderPort | None:
        port = self._leader()
        if port is not None and not self._own_leases_abandoned:
            # A node restarted under the same name: the leases its previous process
            # held died with it.  Before this one leases anything, end them.
            try:
                port.abandon_node(self._node)
            except LeaderUnreachable:
                return None
            self._own_leases_abandoned = True
        return port

    def _send_results(self) -> bool:
        with self._changed:
            batch = list(self._results)
        if not batch or self._halted:
            return False
        port = self._port()
        if port is None:
            return False
        try:
            port.results(batch)
        except LeaderUnreachable:
            self._stopping.wait(RETRY_S)
            return False
        with self._changed:
            del self._results[: len(batch)]
            for result in batch:
                self._held.pop(result.worker_id, None)
            self.completed += len(batch)
        return True

    def _pull(self) -> bool:
        with self._changed:
            allowed = self._window.size() - len(self._held)
            free = [slot for slot in self._slots if slot not in self._held][: max(0, allowed)]
        if not free or self._stopping.is_set():
            return False
        port = self._port()
        if port is None:
            self._stopping.wait(RETRY_S)
            return False
        try:
            tasks = port.lease(free)
        except LeaderUnreachable:
            self._stopping.wait(RETRY_S)
            return False
        now = time.monotonic()
        for task in tasks:
            task = attrs.evolve(task, leased_at=now)  # the lease's clock, here
            with self._changed:
                self._held[task.worker_id] = task
            self._pool.submit(task)
        return bool(tasks)


def _unstarted(task: Task) -> TaskResult:
    return TaskResult(
        job_id=task.job_id,
        attempt=task.attempt,
        outcome=Outcome.failure("stopped before it ran"),
        worker_id=task.worker_id,
        started=False,
    )
