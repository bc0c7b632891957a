"""Stopping the controller: gracefully (``stop``) or at once (``halt``).

docs/runtime.md, "Shutdown", tells the story: no more leases; the pool gets a grace to
finish what runs; the loops end; every lease still live is given back with ``Release``
(the attempt not counted); a final snapshot; the storage closed.  ``halt`` is as close
to a crash as one process can come.  Like loops.py, this is the controller's own code
in its own file: it uses the controller's private fields, and only the controller calls
it (``Controller.stop``, ``Controller.halt``).
"""

from __future__ import annotations

import contextlib
import queue
from typing import TYPE_CHECKING

from beaverq.impl.storage.fs import StorageError
from beaverq.impl.storage.wal import WalFailed
from beaverq.model import Command, Release
from beaverq.model.errors import BrokenInvariant

from . import loops
from .errors import ControllerFailed

if TYPE_CHECKING:
    from .controller import Controller


def stop(controller: Controller, grace_s: float = 10.0) -> list[str]:
    """Graceful stop: no more leases; running jobs get ``grace_s`` to finish (their
    results are recorded); every lease still live is released (``Release``: back
    to the queue, the attempt not counted); a final snapshot; storage closed.
    Returns the ids of the jobs released, sorted (docs/runtime.md, "Shutdown")."""
    if controller._closed:
        return []
    _begin_stop(controller)
    if controller._pool_started:
        controller._pool.shutdown(grace_s)
    _end_loops(controller, process_results=True)
    released: list[str] = []
    failure = controller._failure
    try:
        # In a cluster the live leases are other nodes' (options.cluster_member).
        if failure is None and not controller._options.cluster_member:
            released = _release_live_leases(controller)
        if failure is None and controller._options.final_snapshot:
            _final_snapshot(controller)
    finally:
        _close_storage(controller)
    if failure is not None:
        raise ControllerFailed(f"the controller failed: {failure}") from failure
    return released


def _final_snapshot(controller: Controller) -> None:
    """The stop's snapshot, if anything is new.  Its failure (a full disk, say) loses
    nothing: every event is durable in the WAL, and the next opening replays it.  So
    it is counted, as the snapshot loop counts one (``stats.snapshot_error_last``
    says why), not raised: a stop whose changes are all durable has not failed."""
    with controller._lock:
        if controller._events_since_snapshot == 0:
            return
        try:
            controller._snapshot_locked()
        except WalFailed as error:
            # The log itself failed (the rotation after the snapshot, say): every event
            # before it is durable, but this process can write no more.
            raise ControllerFailed(f"the log failed at the final snapshot: {error}") from error
        except (OSError, StorageError) as error:
            loops.snapshot_failed(controller, error)


def _release_live_leases(controller: Controller) -> list[str]:
    """Give back every lease still live, once no handler of ours can report.

    By now the pool has stopped: every handler finished (its result recorded),
    never started (dropped from the pool's queue), or was abandoned at the end of
    the grace (whatever it returns is dropped).  So every lease still live is
    one no result will ever end; each of this process's leases, since ``Recover``
    abandoned any older ones at the start (R5).  ``Release`` puts the job back
    without counting the attempt: an interrupted job is not a failed one."""
    released: list[str] = []

    def releases(now: int) -> list[Command]:
        # Under the lock (``_apply``): the leases read are the leases released.
        state = controller._state
        released.extend(sorted(state.in_flight))
        return [
            Release(now_ms=now, job_id=job_id, attempt=state.jobs[job_id].attempt)
            for job_id in released
        ]

    outcomes, lsn, committer = controller._apply(
        releases,
        atomic=True,  # nothing else runs now: a refusal here is a bug, loud
    )
    controller._wait_durable(committer, lsn)
    # Nothing else runs now, so every release was decided and produced its event.
    if not all(isinstance(outcome, tuple) and outcome for outcome in outcomes):
        raise BrokenInvariant(f"a release at shutdown was refused or empty: {outcomes!r}")
    return released


def halt(controller: Controller) -> None:
    """Stop at once, as close to a crash as one process can come: no grace, no
    result processed, no snapshot.  The group commit's flusher is closed (it has no
    abort: what was framed is flushed, as if the crash came a moment later); the
    storage is *not* closed: the caller drops its file system (``fs.close()``)."""
    if controller._closed:
        return
    _begin_stop(controller)
    if controller._pool_started:
        controller._pool.shutdown(0.0)
    _end_loops(controller, process_results=False)
    controller._closed = True
    with contextlib.suppress(Exception):  # a crash reports nothing either
        controller._committer.close()


def _begin_stop(controller: Controller) -> None:
    with controller._lock:
        controller._stopping = True
        controller._lease_possible.notify_all()
    for thread in controller._threads:
        if thread.name == "beaverq-dispatch":
            # Joined before the pool stops: every durable lease gets submitted.
            thread.join()


def _end_loops(controller: Controller, *, process_results: bool) -> None:
    if controller._threads:
        if process_results:
            controller._results.put(loops.STOP)
        else:
            _drop_results(controller)
            controller._results.put(loops.STOP)
        controller._stop_timers.set()
        with controller._lock:
            controller._snapshot_due.notify_all()
        for thread in controller._threads:
            thread.join()
    if process_results and controller._failure is None:
        # Step mode, or results reported after the result loop ended.
        while True:
            results = loops.drain_results(controller)
            if not results:
                break
            loops.process_results(controller, results)
    else:
        _drop_results(controller)


def _drop_results(controller: Controller) -> None:
    while True:
        try:
            controller._results.get_nowait()
        except queue.Empty:
            return


def _close_storage(controller: Controller) -> None:
    with controller._lock:
        controller._closed = True
        controller._state_changed.notify_all()
    try:
        controller._committer.close()
    except WalFailed as error:
        if controller._failure is None:  # the last flush failed: say so in one line
            raise ControllerFailed(f"the log failed at the stop: {error}") from error
        # Already failed: stop() reports that failure, not this echo of it.
    finally:
        controller._storage.close()
