"""The controller's four loops: results, timeout, dispatch, snapshot.

Each loop has a body that does one round of its work: ``process_results`` and
``tick_once`` here, ``Controller._dispatch_once`` (R3) and ``Controller._snapshot_locked``
(R4) in controller.py, because they *are* those rules.  Two drivers run the bodies:

* ``step``: one round of all four, in a fixed order, on the calling thread.  With a
  ``FakeClock``, a fake pool and ``InlineCommit``, a run is deterministic
  (tests/test_controller.py).
* ``start``: four threads, one per loop, until ``Controller.stop`` (shutdown.py).

These functions are the controller's own code, kept in their own file so that
controller.py reads as its rules: they use its private fields, and nothing else calls
them but the controller.  Every command they make goes through ``Controller._apply``
(R1); none of them waits for durability except where a rule says so.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from beaverq.impl.storage.fs import StorageError
from beaverq.impl.storage.wal import WalFailed
from beaverq.model import Command, Complete, Fail, JobFailed, Rejected, Release, Tick
from beaverq.model.errors import STALE_RESULT_RULES, BrokenInvariant

from .dispatch_window import WITHDRAW_AFTER
from .workers import TaskResult

if TYPE_CHECKING:
    from .controller import Controller


STOP = object()  # the result loop's sentinel (shutdown.py puts it)
#: After a failed snapshot the next try waits, doubling from the interval (at least
#: SNAPSHOT_RETRY_S_MIN) up to SNAPSHOT_RETRY_S_MAX: on a full disk, retrying at
#: every due moment would only burn CPU and disk bandwidth the WAL needs.
SNAPSHOT_RETRY_S_MIN = 1.0
SNAPSHOT_RETRY_S_MAX = 60.0
#: The snapshot loop never waits less than this, so that --snapshot-interval 0
#: ("as often as there is something new") does not make an idle runner spin.
SNAPSHOT_WAIT_S_MIN = 0.05


# -- The loops' bodies. ----------------------------------------------------------------------


def process_results(controller: Controller, results: Sequence[TaskResult]) -> int:
    """The result loop's body: Complete/Fail for each; stale ones are counted."""
    controller._observers.results(results)  # outside the lock
    with controller._lock:
        for result in results:
            controller._free_slot(result.worker_id)
            controller._window.observe(result.duration_s)
        seeds = [controller._rng.getrandbits(64) for _ in results]  # in result order

    def commands(now: int) -> list[Command]:
        made: list[Command] = []
        for result, seed in zip(results, seeds, strict=True):
            outcome = result.outcome
            if not result.started:
                # The handler never ran: the lease goes back uncounted (or, if it
                # has expired meanwhile, the fence finds this stale).
                made.append(Release(now_ms=now, job_id=result.job_id, attempt=result.attempt))
            elif outcome.ok:
                if outcome.result_json is None:
                    raise BrokenInvariant("broken invariant: outcome.result_json is not None")
                made.append(
                    Complete(
                        now_ms=now,
                        job_id=result.job_id,
                        attempt=result.attempt,
                        result_json=outcome.result_json,
                        jitter_seed=seed,  # used if the model refuses the result
                    )
                )
            else:
                made.append(
                    Fail(
                        now_ms=now,
                        job_id=result.job_id,
                        attempt=result.attempt,
                        error=outcome.error or "failed",
                        jitter_seed=seed,
                    )
                )
        return made

    def fallback(command: Command, rejected: Rejected) -> Command | None:
        if rejected.rejection.rule in STALE_RESULT_RULES:
            # The fence at work: a result from a lease that is no longer live.
            controller.stats.stale_results += 1
            return None
        # A result the model cannot store already failed the attempt in decide
        # (Complete decides a JobFailed that says why); any other refusal is a
        # bug here: loud.
        raise rejected

    outcomes, _lsn, _committer = controller._apply(commands, fallback=fallback)
    # No wait: nobody is answered, and a later lease's durability covers these.
    with controller._lock:
        for result, outcome in zip(results, outcomes, strict=True):
            # A success whose Complete was decided as a failure: the result was refused.
            if result.outcome.ok and isinstance(outcome, tuple):
                controller.stats.results_refused += sum(isinstance(e, JobFailed) for e in outcome)
        controller._lease_possible.notify()
    return len(results)


def tick_once(controller: Controller) -> int:
    withdraw_waiting(controller)
    options = controller._options
    outcomes, _lsn, _committer = controller._apply(
        lambda now: [
            Tick(
                now_ms=now,
                retention_ms=options.retention_ms,
                finished_jobs_retained_max=options.finished_jobs_retained_max,
            )
        ]
    )
    events = outcomes[0]
    return len(events) if isinstance(events, tuple) else 0


def withdraw_waiting(controller: Controller) -> None:
    """The dispatch window's safety net: a task that has waited in the pool for
    ``WITHDRAW_AFTER`` of its timeout without starting is taken back and its lease
    released (uncounted) before it can expire (counted).  Leasing ahead is sized
    from past running times; after quick jobs, slow ones could otherwise be leased
    far ahead of what the workers can start."""
    withdrawn = controller._pool.withdraw_waiting(WITHDRAW_AFTER)
    if not withdrawn:
        return
    with controller._lock:
        for task in withdrawn:
            controller._free_slot(task.worker_id)
        controller.stats.withdrawn += len(withdrawn)

    def stale(command: Command, rejected: Rejected) -> Command | None:
        # A lease that ended meanwhile (the job was forgotten, say) has nothing to
        # give back; the fence says so.  Anything else is a bug here: loud.
        if rejected.rejection.rule in STALE_RESULT_RULES:
            return None
        raise rejected

    controller._apply(
        lambda now: [
            Release(now_ms=now, job_id=task.job_id, attempt=task.attempt) for task in withdrawn
        ],
        fallback=stale,
    )


# -- Deterministic mode. ---------------------------------------------------------------------


def step(controller: Controller) -> bool:
    """One round of the four loops, in a fixed order, on this thread: results,
    timeout (when a tick is due on the clock), dispatch, snapshot (when due).
    True if anything happened.  Not to be mixed with ``start()``."""
    if controller._threads:
        raise BrokenInvariant("step() while the loops run in threads")
    start_pool(controller)
    did = False
    results = drain_results(controller)
    if results:
        process_results(controller, results)
        did = True
    if controller._clock.monotonic() >= controller._next_tick_at:
        controller._next_tick_at = (
            controller._clock.monotonic() + controller._options.tick_interval_s
        )
        did = tick_once(controller) > 0 or did
    did = controller._dispatch_once() > 0 or did
    with controller._lock:
        if controller._snapshot_is_due():
            controller._snapshot_locked()
            did = True
    return did


def drain_results(controller: Controller) -> list[TaskResult]:
    results: list[TaskResult] = []
    while len(results) < controller._options.result_batch_max:
        try:
            item = controller._results.get_nowait()
        except queue.Empty:
            break
        if not (isinstance(item, TaskResult)):
            raise BrokenInvariant("broken invariant: isinstance(item, TaskResult)")
        results.append(item)
    return results


def start_pool(controller: Controller) -> None:
    if not controller._pool_started:
        controller._pool_started = True
        controller._pool.start(controller._on_result)


# -- Threaded mode. --------------------------------------------------------------------------


def start(controller: Controller) -> None:
    """Run the four loops in threads until ``stop``."""
    if controller._threads:
        raise BrokenInvariant("start() twice")
    controller._raise_if_unusable()
    start_pool(controller)
    for name, target in (
        ("dispatch", _dispatch_loop),
        ("result", _result_loop),
        ("timeout", _timeout_loop),
        ("snapshot", _snapshot_loop),
    ):
        # Daemons: a program that forgets stop() can still exit, which for this
        # queue is just a crash, and crashes are safe by design.
        thread = threading.Thread(
            target=_guarded(controller, target), name=f"beaverq-{name}", daemon=True
        )
        controller._threads.append(thread)
    for thread in controller._threads:
        thread.start()


def _guarded(controller: Controller, loop: Callable[[Controller], None]) -> Callable[[], None]:
    def run() -> None:
        try:
            loop(controller)
        except BaseException as error:
            controller._fail(error)

    return run


def _dispatch_loop(controller: Controller) -> None:
    while True:
        with controller._lock:
            while not controller._stopping and not controller._can_lease():
                controller._lease_possible.wait()
            if controller._stopping:
                return
        controller._dispatch_once()


def _result_loop(controller: Controller) -> None:
    while True:
        first = controller._results.get()
        if first is STOP:
            return
        if not (isinstance(first, TaskResult)):
            raise BrokenInvariant("broken invariant: isinstance(first, TaskResult)")
        batch = [first]
        stop = False
        while len(batch) < controller._options.result_batch_max:
            try:
                item = controller._results.get_nowait()
            except queue.Empty:
                break
            if item is STOP:
                stop = True
                break
            if not (isinstance(item, TaskResult)):
                raise BrokenInvariant("broken invariant: isinstance(item, TaskResult)")
            batch.append(item)
        process_results(controller, batch)
        if stop:
            return


def _timeout_loop(controller: Controller) -> None:
    while not controller._stop_timers.wait(controller._options.tick_interval_s):
        tick_once(controller)


def _snapshot_loop(controller: Controller) -> None:
    interval = controller._options.snapshot_interval_s
    while True:
        with controller._lock:
            while not controller._stop_timers.is_set() and not controller._snapshot_is_due():
                now = controller._clock.monotonic()
                left = max(
                    interval - (now - controller._last_snapshot_at),
                    controller._snapshot_retry.retry_at - now,
                )
                # Nothing new since the last snapshot: a whole interval, not a spin.
                wait = left if left > 0 else interval
                controller._snapshot_due.wait(max(wait, SNAPSHOT_WAIT_S_MIN))
            if controller._stop_timers.is_set():
                return
            try:
                controller._snapshot_locked()
            except WalFailed:
                raise  # the log itself failed: the runner must stop
            except (OSError, StorageError) as error:
                # The WAL still holds everything: a failed snapshot only makes
                # the next recovery longer.  Count it and try again later.
                snapshot_failed(controller, error)


def snapshot_failed(controller: Controller, error: BaseException) -> None:
    """Count a failed snapshot and put the next try off (under the lock)."""
    controller.stats.snapshot_failures += 1
    controller.stats.snapshot_error_last = " ".join(str(error).split())
    now = controller._clock.monotonic()
    controller._last_snapshot_at = now
    controller._snapshot_retry.failed(now, controller._options.snapshot_interval_s)


class SnapshotRetry:
    """When the next snapshot may be tried, after failed ones: each failure in a row
    doubles the wait, from the interval (at least SNAPSHOT_RETRY_S_MIN) up to
    SNAPSHOT_RETRY_S_MAX; a success resets it (``Controller._snapshot_locked``)."""

    def __init__(self, now: float) -> None:
        self.failures_in_row = 0
        self.retry_at = now

    def failed(self, now: float, interval_s: float) -> None:
        self.failures_in_row += 1
        base = max(interval_s, SNAPSHOT_RETRY_S_MIN)
        doublings = min(self.failures_in_row - 1, 16)  # 2**16 s: far past the cap
        self.retry_at = now + min(SNAPSHOT_RETRY_S_MAX, base * 2**doublings)

    def succeeded(self) -> None:
        self.failures_in_row = 0

    def waiting(self, now: float) -> bool:
        return now < self.retry_at
