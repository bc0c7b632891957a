"""The controller: turns what happens into model commands, and carries out their effects.

It decides nothing about a job's life itself: a request, a worker's result or a
clock tick becomes a command, ``decide`` says what happens, the events go to the
log, ``evolve`` folds them in, and only then does the controller act (answer the
producer, hand a job to a worker).  docs/runtime.md tells the whole story; the
rules this file upholds are named where they are upheld:

**R1, one lock, one order.**  ``_lock`` protects the state and the log's framing
side.  Under it, and only under it: ``decide`` -> ``committer.append`` (frames the
events in LSN order) -> publish the evolved state.  Then the lock is released, and
*outside* it: ``wait_durable`` -> effects.  Nothing that can block on another
thread is called under the lock, except the snapshot's pause (R4).

**R2, durable before visible.**  No effect of an event happens before the event is
durable: a producer's ``enqueue`` returns only then, a job reaches a worker only
after its ``LeaseGranted`` is durable (so every attempt a handler ever starts is in
the log, and a job that kills the process every time still reaches DEAD), and every
answer (``status``, ``show``, a rejection) waits for the LSN of the state it read.

**R3, bounded everywhere.**  The controller leases only into free *slots*, one per
task the pool can hold (running or waiting), and only as many as the dispatch window
allows (dispatch_window.py: a few fsyncs ahead of the workers, never more than they
will start soon), so the pool's queue never fills and the result queue, one place per
slot, can hold every outstanding result: neither put blocks.

**R4, snapshots see exactly the durable log.**  A snapshot pauses appends by
holding ``_lock``, closes the group commit (which flushes and stops its flusher
thread, so no batch is being written), snapshots the state (now exactly the
durable log), and opens a fresh group commit.

**R5, Recover first.**  ``Recover(now)`` is decided and made durable in the
constructor (``_recover``), before any lease: every lease a previous process left live is
abandoned, and counted, before new ones are granted.

Two ways to drive it, sharing all of the above: ``step()``, one round of the four
loops on the calling thread (deterministic with a ``FakeClock``, a fake pool and
:class:`InlineCommit`), or ``start()``/``stop(grace_s)``, four threads, one per loop.
The loops are in loops.py, the stopping in shutdown.py, what a read answers in
read_models.py: this file is the command path, and reads top to bottom as R1-R5.
"""

from __future__ import annotations

import contextlib
import os
import queue
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs

from beaverq.impl.storage.fs import FileSystem, RealFileSystem
from beaverq.impl.storage.storage import RecoveryReport, Storage, StorageOptions
from beaverq.impl.storage.wal import WalFailed
from beaverq.model import (
    Cancel,
    Command,
    Enqueue,
    Event,
    JobStatus,
    Lease,
    PauseQueue,
    Recover,
    Rejected,
    Requeue,
    ResumeQueue,
    State,
    decide,
    enqueued_job_id,
    evolve,
    limits,
    next_ready_job,
    worker_id_of,
)
from beaverq.model.errors import BrokenInvariant

from . import loops, shutdown
from .clock import Clock, SystemClock
from .committers import Committer, CommitterFactory, LogStore, group_commit_factory
from .dispatch_window import DispatchWindow
from .errors import ControllerStopped, OutcomeUnknown, nothing_done
from .job_request import JobRequest
from .observers import ControllerObserver, Observers
from .options import ControllerOptions
from .read_models import RecoveryFigures, Stats, is_idle, job_detail, jobs_of, status_of
from .workers import PoolClosed, PoolFull, Task, TaskResult, WorkerPool, task_of


class Controller:
    """The runtime's one owner of the state and the log (see the module doc)."""

    def __init__(
        self,
        storage: LogStore,
        state: State,
        clock: Clock,
        pool: WorkerPool,
        *,
        options: ControllerOptions | None = None,
        report: RecoveryReport | None = None,
        committer_factory: CommitterFactory | None = None,
        opened_at: float | None = None,
    ) -> None:
        self._storage = storage
        self._clock = clock
        self._pool = pool
        self._options = options or ControllerOptions()
        runner_id = self._options.runner_id or f"p{os.getpid()}"
        self._committer_factory = committer_factory or group_commit_factory()
        self._rng = random.Random(self._options.jitter_seed)

        self._lock = threading.Lock()
        # Three conditions on the one lock, so a change wakes only who cares.
        self._lease_possible = threading.Condition(self._lock)  # the dispatcher
        self._state_changed = threading.Condition(self._lock)  # until_idle callers
        self._snapshot_due = threading.Condition(self._lock)  # the snapshot loop
        if not 1 <= pool.capacity <= limits.IN_FLIGHT_MAX:
            # More slots than the model allows leases would make Lease refuse
            # (in_flight_max_reached) while the dispatcher sees an idle slot.
            raise ValueError(f"pool capacity must be in 1..IN_FLIGHT_MAX, got {pool.capacity}")
        # Of the slots, how many may be busy at once: one per worker, plus as many
        # leased ahead as the workers will start soon (R2 makes every lease cost a
        # durable append; leasing ahead shares one fsync among many).  Built, and so
        # checked, before anything that needs closing (the group commit's thread).
        self._window = DispatchWindow(
            workers=pool.workers,
            capacity=pool.capacity,
            horizon_s=self._options.dispatch_horizon_s,
        )
        # A slot per task the pool holds (leases go durable while workers run), named by
        # model/nodes.py's rule; made before the committer's thread: a bad runner_id raises.
        self._free_slots = [worker_id_of(runner_id, i) for i in reversed(range(pool.capacity))]
        self._state = state
        self.stats = Stats()
        self._observers = Observers(self.stats)
        self._committer: Committer = self._new_committer()
        self._busy_slots: set[str] = set()
        # R3: one result per outstanding task, at most one task per slot (+1: the
        # result loop's stop sentinel).
        self._results: queue.Queue[object] = queue.Queue(maxsize=pool.capacity + 1)
        self._events_since_snapshot = 0
        self._last_snapshot_at = clock.monotonic()
        self._snapshot_retry = loops.SnapshotRetry(clock.monotonic())  # after failures
        self._next_tick_at = clock.monotonic()
        self._stopping = False
        self._closed = False
        self._failure: BaseException | None = None
        self._pool_started = False
        self._threads: list[threading.Thread] = []
        self._stop_timers = threading.Event()

        self.recovery = self._recover(report, opened_at)  # R5
        self.recovery_report = report

    @classmethod
    def open(
        cls,
        directory: str,
        pool: WorkerPool,
        *,
        fs: FileSystem | None = None,
        clock: Clock | None = None,
        options: ControllerOptions | None = None,
        storage_options: StorageOptions | None = None,
        committer_factory: CommitterFactory | None = None,
    ) -> Controller:
        """Open (and recover) a data directory; the recovery time is measured here."""
        opened_at = time.monotonic()
        storage, state, report = Storage.open(fs or RealFileSystem(), directory, storage_options)
        try:
            return cls(
                storage,
                state,
                clock or SystemClock(),
                pool,
                options=options,
                report=report,
                committer_factory=committer_factory,
                opened_at=opened_at,
            )
        except BaseException:
            storage.close()
            raise

    # -- R1: one lock, one order: decide, frame, publish. ----------------------------------

    def _apply(
        self,
        make_commands: Callable[[int], Sequence[Command]],
        *,
        atomic: bool = False,
        fallback: Callable[[Command, Rejected], Command | None] | None = None,
        on_published: Callable[[Sequence[object], State], None] | None = None,
    ) -> tuple[list[tuple[Event, ...] | Rejected | str], int, Committer]:
        """Decide, append, publish; all under the lock.  Returns, per command, its
        events (an ``Enqueue``: the job id) or its rejection; the LSN to wait for; and
        the committer to wait on.  ``atomic``: one rejection refuses them all.
        ``fallback``: a command to decide instead of a rejected one.  ``on_published``
        runs under the lock once the state is published (it must not block)."""
        with self._lock:
            self._raise_if_unusable()
            now = self._clock.now_ms()  # under the lock: times grow with LSNs
            state = self._state
            outcomes: list[tuple[Event, ...] | Rejected | str] = []
            appended: list[Event] = []
            for original in make_commands(now):
                command: Command | None = original
                while command is not None:
                    try:
                        events = decide(state, command)
                    except Rejected as rejected:
                        if atomic:
                            raise
                        replacement = None if fallback is None else fallback(command, rejected)
                        if replacement is None:
                            outcomes.append(rejected)
                        command = replacement
                        continue
                    before = state
                    for event in events:
                        state = evolve(state, event)
                    appended.extend(events)
                    if isinstance(command, Enqueue):
                        outcomes.append(enqueued_job_id(before, command, events))
                    else:
                        outcomes.append(events)
                    command = None
            if appended:
                # R1: frame first; if the WAL refuses, nothing is published.
                try:
                    self._committer.append(appended)
                except WalFailed as error:
                    # The log takes nothing more: the controller has failed, and says so
                    # (``failure``) before it answers, not at the next durable wait.
                    self._fail_locked(error)
                    raise nothing_done(error) from error
                self._state = state
                for event in appended:
                    self.stats.count(event)
                self.stats.events_appended += len(appended)
                self._events_since_snapshot += len(appended)
                if self._events_since_snapshot >= self._options.snapshot_every_events:
                    self._snapshot_due.notify()
                self._lease_possible.notify()
                self._state_changed.notify_all()
            if on_published is not None:
                on_published(outcomes, self._state)
            # R2: whatever the caller answers reflects this state, so it waits for it.
            return outcomes, self._state.last_lsn, self._committer

    def _raise_if_unusable(self) -> None:
        if self._failure is not None:
            raise nothing_done(self._failure) from self._failure
        if self._closed:
            raise ControllerStopped("the controller is closed")

    def _fail(self, error: BaseException) -> None:
        with self._lock:
            self._fail_locked(error)

    def _fail_locked(self, error: BaseException) -> None:
        if self._failure is None:
            self._failure = error
        self._stopping = True
        self._lease_possible.notify_all()
        self._state_changed.notify_all()
        self._snapshot_due.notify_all()
        self._stop_timers.set()

    # -- R2: durable before visible: every answer waits for the LSN it reflects. -----------

    def _wait_durable(self, committer: Committer, lsn: int) -> None:
        """Wait outside the lock (R1); a failed WAL fails the whole controller."""
        try:
            committer.wait_durable(lsn)
        except WalFailed as error:
            self._fail(error)
            raise OutcomeUnknown.after(error) from error

    def _run_one(self, make_command: Callable[[int], Command]) -> tuple[Event, ...] | str:
        outcomes, lsn, committer = self._apply(lambda now: [make_command(now)])
        self._wait_durable(committer, lsn)
        outcome = outcomes[0]
        if isinstance(outcome, Rejected):
            raise outcome
        return outcome

    # The producers' and operators' commands.

    def enqueue(self, handler: str, args: Any = None, **fields: Any) -> str:
        """Enqueue one job; return its id once its ``JobEnqueued`` is durable.

        ``fields`` are ``JobRequest``'s (``queue``, ``priority``, ``job_id``, ...).
        A refused enqueue raises ``Rejected`` and changes nothing; an enqueue whose
        idempotency key is known returns the existing job's id."""
        return self.enqueue_request(JobRequest.of(handler, args, **fields))

    def enqueue_request(self, request: JobRequest) -> str:
        self._refuse_if_stopping()
        job_id = self._run_one(request.command)
        if not (isinstance(job_id, str)):
            raise BrokenInvariant("broken invariant: isinstance(job_id, str)")
        return job_id

    def enqueue_batch(self, requests: Iterable[JobRequest | Mapping[str, Any]]) -> list[str]:
        """Enqueue jobs with one durable commit; their ids, in order.  All or nothing:
        if one is refused, ``Rejected`` names it and none is enqueued."""
        self._refuse_if_stopping()
        batch = [
            request if isinstance(request, JobRequest) else JobRequest.from_mapping(request)
            for request in requests
        ]
        try:
            outcomes, lsn, committer = self._apply(
                lambda now: [request.command(now) for request in batch], atomic=True
            )
        except Rejected:
            # R2: even a refusal is an answer about the state, so it waits as well.
            with self._lock:
                lsn, committer = self._state.last_lsn, self._committer
            self._wait_durable(committer, lsn)
            raise
        self._wait_durable(committer, lsn)
        return [job_id for job_id in outcomes if isinstance(job_id, str)]

    def cancel(self, job_id: str) -> str:
        """Cancel a job; return its status now ("cancelled", or "in_flight" with the
        cancellation taking effect at its result)."""
        self._run_one(lambda now: Cancel(now_ms=now, job_id=job_id))
        return self._status_of(job_id)

    def requeue(self, job_id: str) -> str:
        self._run_one(lambda now: Requeue(now_ms=now, job_id=job_id))
        return self._status_of(job_id)

    def pause(self, queue_name: str) -> None:
        self._run_one(lambda now: PauseQueue(now_ms=now, queue=queue_name))

    def resume(self, queue_name: str) -> None:
        self._run_one(lambda now: ResumeQueue(now_ms=now, queue=queue_name))

    def _status_of(self, job_id: str) -> str:
        job = self._state.jobs.get(job_id)
        return JobStatus.ABSENT.value if job is None else job.status.value

    def _refuse_if_stopping(self) -> None:
        self._raise_if_unusable()  # a failure names itself, not just "stopping"
        if self._stopping:
            raise ControllerStopped("the controller is stopping: it takes no new jobs")

    # The reads (what they answer is in read_models.py).

    def _durable_state(self) -> State:
        with self._lock:
            state, committer = self._state, self._committer
        self._wait_durable(committer, state.last_lsn)
        return state

    @property
    def state(self) -> State:
        """The current state (may include events not yet durable; for tests)."""
        return self._state

    @property
    def failure(self) -> BaseException | None:
        return self._failure

    def status(self) -> dict[str, Any]:
        state = self._durable_state()
        with self._lock:
            stats = attrs.asdict(self.stats)
            held = len(self._busy_slots)
        return status_of(state) | {
            "durable_lsn": state.last_lsn,
            "recovery": self.recovery.as_dict(),
            # Tasks the pool holds for this runner: running, or leased ahead and
            # waiting to start (the dispatch window), so it may exceed the workers.
            "runtime": stats | {"workers": self._pool.workers, "tasks_held": held},
        }

    def jobs(
        self, status: str | None = None, queue: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        return jobs_of(self._durable_state(), status, queue, limit)

    def show(self, job_id: str) -> dict[str, Any] | None:
        job = self._durable_state().jobs.get(job_id)
        return None if job is None else job_detail(job)

    def is_idle(self) -> bool:
        with self._lock:
            return is_idle(self._state)

    def until_idle(self, timeout_s: float | None = None) -> bool:
        """Wait until no job is pending, delayed or in flight (paused queues aside)
        and that state is durable.  False on timeout."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._lock:
            while not is_idle(self._state):
                self._raise_if_unusable()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._state_changed.wait(remaining)
            lsn, committer = self._state.last_lsn, self._committer
        self._wait_durable(committer, lsn)
        return True

    # -- R3: bounded everywhere: slots, the dispatch window, one result place per slot. ----

    def _on_result(self, result: TaskResult) -> None:
        """The pool's callback, on a worker thread: never blocks (R3)."""
        self._results.put_nowait(result)

    def _free_slot(self, worker_id: str) -> None:
        """A task left the pool (its result came, or it was withdrawn or refused):
        its slot is free again.  Under the lock."""
        if worker_id in self._busy_slots:
            self._busy_slots.discard(worker_id)
            self._free_slots.append(worker_id)

    def _dispatch_once(self) -> int:
        """Lease a job for each free slot inside the dispatch window; hand the tasks to
        the pool once the leases are durable (R2)."""
        with self._lock:
            allowed = self._leases_allowed()
            if self._stopping or allowed <= 0:
                return 0
            # Only this thread takes slots; the most recently freed first.
            slots = self._free_slots[-allowed:]
        tasks: list[Task] = []

        def take_slots(outcomes: Sequence[object], state: State) -> None:
            # Under the lock, with the leases published: the slots turn busy at once.
            # The pool's clock (not the controller's, which may be a fake one).
            leased_at = time.monotonic()
            for worker_id, granted in zip(slots, outcomes, strict=True):
                if isinstance(granted, tuple) and granted:  # else nothing was ready
                    tasks.append(task_of(state, granted, worker_id, leased_at))
                    self._free_slots.remove(worker_id)
                    self._busy_slots.add(worker_id)

        _outcomes, lsn, committer = self._apply(
            lambda now: [Lease(now_ms=now, worker_id=worker_id) for worker_id in slots],
            on_published=take_slots,
        )
        if not tasks:
            return 0
        # R2: the worker starts only once the lease is in the log.
        self._wait_durable(committer, lsn)
        for task in tasks:
            try:
                self._pool.submit(task)
            except (PoolFull, PoolClosed):
                # Cannot happen while R3 holds; if it does, the lease simply expires
                # and the timeout loop returns the job: safe, only slower.
                with self._lock:
                    self.stats.submits_refused += 1
                    self._free_slot(task.worker_id)
        return len(tasks)

    def _leases_allowed(self) -> int:
        """Free slots inside the dispatch window (under the lock); none in a cluster,
        where every node's workers pull their leases (remote_leases.py)."""
        if self._options.cluster_member:
            return 0
        return min(len(self._free_slots), self._window.size() - len(self._busy_slots))

    def _can_lease(self) -> bool:
        return self._leases_allowed() > 0 and next_ready_job(self._state) is not None

    # -- R4: snapshots see exactly the durable log. -----------------------------------------

    def snapshot(self) -> str:
        """R4: take a snapshot of exactly the durable log; return its path."""
        with self._lock:
            self._raise_if_unusable()
            return self._snapshot_locked()

    def _snapshot_locked(self) -> str:
        started = time.perf_counter()
        # Holding the lock pauses every append; closing the group commit flushes
        # what is framed and stops its flusher, so no batch is being written while
        # the snapshot rotates the WAL.
        self._committer.close()
        try:
            path = self._storage.take_snapshot(self._state)
        finally:
            self._committer = self._new_committer()
        self._events_since_snapshot = 0
        self._last_snapshot_at = self._clock.monotonic()
        self._snapshot_retry.succeeded()
        self.stats.snapshots += 1
        self.stats.snapshot_seconds_last = time.perf_counter() - started
        return path

    def _snapshot_is_due(self) -> bool:
        """Every N events (the design's bound on the WAL tail a recovery replays), or
        every interval if the tail is worth it.

        The interval keeps recoveries short.  But a recovery loads every job of the
        snapshot anyway, and replaying an event costs about ten times loading a job
        (docs/performance.md): a tail below a tenth of the jobs adds at most about
        that load again.  Writing every job to save so little is wasted CPU (a
        trickle of jobs over 100,000 retained ones would rewrite all of them every
        2 s).  So: recovery stays within about twice its unavoidable load time, and
        the tail never exceeds N events."""
        options = self._options
        since = self._events_since_snapshot
        if self._snapshot_retry.waiting(self._clock.monotonic()):
            return False  # backing off after a failed snapshot (loops.SnapshotRetry)
        if since >= options.snapshot_every_events:
            return True
        if since == 0 or self._clock.monotonic() - self._last_snapshot_at < (
            options.snapshot_interval_s
        ):
            return False
        return since >= options.snapshot_tail_per_job * len(self._state.jobs)

    def _new_committer(self) -> Committer:
        committer = self._committer_factory(self._storage)
        committer.on_batch = self._observers.batch_durable
        return committer

    # -- R5: Recover first. -----------------------------------------------------------------

    def _recover(self, report: RecoveryReport | None, opened_at: float | None) -> RecoveryFigures:
        """``Recover(now)``, durable, before anything else: every lease a previous process
        left live is abandoned, and counted, before a new one is granted."""
        try:
            # In a cluster the node abandons the dead nodes' leases (AbandonNode).
            member = self._options.cluster_member
            outcomes, lsn, committer = self._apply(
                lambda now: [] if member else [Recover(now_ms=now)]
            )
            self._wait_durable(committer, lsn)
        except BaseException:
            with contextlib.suppress(Exception):
                self._committer.close()  # no flusher thread outlives a failed start
            raise
        abandoned = outcomes[0] if outcomes else ()
        if not (isinstance(abandoned, tuple)):
            raise BrokenInvariant("broken invariant: isinstance(abandoned, tuple)")
        seconds = 0.0 if opened_at is None else time.monotonic() - opened_at
        return RecoveryFigures(
            seconds=seconds,
            snapshot_lsn=0 if report is None else report.snapshot_lsn,
            records_replayed=0 if report is None else report.records_replayed,
            bytes_truncated=0 if report is None else report.bytes_truncated,
            last_lsn=self._state.last_lsn,
            leases_abandoned=len(abandoned),
        )

    # -- Driving it: the loops (loops.py), stopping (shutdown.py), observers. ---------------

    def step(self) -> bool:
        """One round of the four loops, in a fixed order, on this thread: results,
        timeout (when a tick is due on the clock), dispatch, snapshot (when due).
        True if anything happened.  Not to be mixed with ``start()``."""
        return loops.step(self)

    def start(self) -> None:
        """Run the four loops in threads until ``stop``."""
        loops.start(self)

    def stop(self, grace_s: float = 10.0) -> list[str]:
        """Graceful stop: no more leases; running jobs get ``grace_s`` to finish (their
        results are recorded); every lease still live is released (``Release``: back
        to the queue, the attempt not counted); a final snapshot; storage closed.
        Returns the ids of the jobs released, sorted (docs/runtime.md, "Shutdown")."""
        return shutdown.stop(self, grace_s)

    def end_grace(self) -> None:
        """During ``stop``: end the grace at once (a second signal; ``pool.end_grace``)."""
        self._pool.end_grace()

    def halt(self) -> None:
        """Stop at once, as close to a crash as one process can come: no grace, no
        result processed, no snapshot.  The group commit's flusher is closed (it has no
        abort: what was framed is flushed, as if the crash came a moment later); the
        storage is *not* closed: the caller drops its file system (``fs.close()``)."""
        shutdown.halt(self)

    def __enter__(self) -> Controller:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def add_observer(self, observer: ControllerObserver) -> None:
        """Tell ``observer`` of every later result and durable batch."""
        with self._lock:
            self._observers.add(observer)
