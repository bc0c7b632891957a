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
allows (impl/runtime/dispatch_window.py: a few fsyncs ahead of the workers, never more than
they will start soon), so the pool's queue never fills and the result queue, one
place per slot, can hold every outstanding result: neither put blocks.

**R4, snapshots see exactly the durable log.**  A snapshot pauses appends by
holding ``_lock``, closes the group commit (which flushes and stops its flusher
thread, so no batch is being written), snapshots the state (now exactly the
durable log), and opens a fresh group commit.

**R5, Recover first.**  ``Recover(now)`` is decided and made durable in the
constructor, before any lease: every lease a previous process left live is
abandoned, and counted, before new ones are granted.

Two ways to drive it, sharing all of the above:

* ``step()``: one round of the four loops (results, timeout, dispatch, snapshot)
  on the calling thread.  With a ``FakeClock``, a fake pool and
  :class:`InlineCommit`, a run is deterministic (tests/test_controller.py).
* ``start()``/``stop(grace_s)``: four threads, one per loop.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import attrs

from beaverq.impl.storage.fs import FileSystem, RealFileSystem, StorageError
from beaverq.impl.storage.group_commit import GroupCommit
from beaverq.impl.storage.storage import (
    SNAPSHOT_EVERY_EVENTS_DEFAULT,
    RecoveryReport,
    Storage,
    StorageOptions,
)
from beaverq.impl.storage.wal import WalFailed
from beaverq.model import (
    Cancel,
    Command,
    Complete,
    Enqueue,
    Event,
    Fail,
    Job,
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobStatus,
    Lease,
    LeaseAbandoned,
    LeaseExpired,
    LeaseGranted,
    LeaseReleased,
    PauseQueue,
    Recover,
    Rejected,
    Release,
    Requeue,
    ResumeQueue,
    State,
    Tick,
    decide,
    enqueued_job_id,
    evolve,
    limits,
    next_ready_job,
)

from .clock import Clock, SystemClock
from .dispatch_window import HORIZON_S_DEFAULT, WITHDRAW_AFTER, DispatchWindow
from .workers import PoolClosed, PoolFull, Task, TaskResult, WorkerPool

# Result rules that mean "this result is no longer wanted": the attempt fence.
_STALE_RULES = frozenset({"stale_attempt", "job_not_found"})
_RETRY_STATUSES = (JobStatus.PENDING, JobStatus.DELAYED)

_STOP = object()  # the result loop's sentinel


class ControllerObserver(Protocol):
    """What happens, told as it happens (the metrics are one observer).

    Both calls come from the controller's threads, and a durable batch may be told
    while a snapshot holds the controller's lock: an observer must not block, call
    the controller or take its lock.  An observer that raises is dropped (and counted
    in ``stats.observer_errors``): the queue does not stop for its onlookers."""

    def result_received(self, result: TaskResult) -> None:
        """A worker reported how an attempt ended (before the fence judges it)."""

    def batch_durable(self, events: int, seconds: float) -> None:
        """One group-commit batch is durable: its size, and its write + fsync time."""


class ControllerStopped(Exception):
    """The controller is stopping or stopped: it takes no more commands."""


class ControllerFailed(Exception):
    """A loop failed (e.g. the WAL failed); the runner must stop and recover from disk."""


# -- Committers: how appended events become durable. -------------------------------------


BatchCallback = Callable[[int, float], None]


class Committer(Protocol):
    #: Told of each durable batch: (events in it, seconds to write and fsync it).  The
    #: controller sets it, to tell its observers; it must not take the controller's
    #: lock (a snapshot holds that lock while it waits for the batch in progress).
    on_batch: BatchCallback | None

    def append(self, events: Iterable[Event]) -> int: ...

    def wait_durable(self, lsn: int, timeout_s: float | None = None) -> None: ...

    def close(self) -> None: ...


class InlineCommit:
    """Flush on the waiting thread, no flusher thread: for deterministic runs and tests.

    Each ``wait_durable`` that finds its LSN not yet durable flushes everything
    framed so far (one fsync), holding its own lock so that framing and flushing
    never overlap (wal.py, "Threads")."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._lock = threading.Lock()
        self.on_batch: BatchCallback | None = None

    def append(self, events: Iterable[Event]) -> int:
        with self._lock:
            self._storage.append(events)
            return self._storage.appended_lsn

    def wait_durable(self, lsn: int, timeout_s: float | None = None) -> None:
        with self._lock:
            if self._storage.durable_lsn < lsn:
                self._flush()

    def close(self) -> None:
        with self._lock:
            self._flush()

    def _flush(self) -> None:
        durable_before = self._storage.durable_lsn
        started = time.perf_counter()
        self._storage.flush()
        events = self._storage.durable_lsn - durable_before
        if events and self.on_batch is not None:
            self.on_batch(events, time.perf_counter() - started)


CommitterFactory = Callable[[Storage], Committer]


def group_commit_factory(events_max: int = 1_000, delay_s: float = 0.002) -> CommitterFactory:
    def make(storage: Storage) -> Committer:
        return GroupCommit(storage, events_max=events_max, delay_s=delay_s)

    return make


# -- Requests, options, figures. ---------------------------------------------------------


@attrs.frozen(kw_only=True)
class JobRequest:
    """An ``Enqueue`` without its time: what a producer asks for."""

    handler: str
    args_json: str = "null"
    job_id: str | None = None
    queue: str = "default"
    priority: int = limits.PRIORITY_DEFAULT
    max_attempts: int = limits.ATTEMPTS_DEFAULT
    timeout_ms: int = limits.TIMEOUT_MS_DEFAULT
    delay_ms: int = 0
    backoff_base_ms: int = limits.BACKOFF_BASE_MS_DEFAULT
    backoff_cap_ms: int = limits.BACKOFF_CAP_MS_DEFAULT
    idempotency_key: str | None = None

    @classmethod
    def of(cls, handler: str, args: Any = None, **fields: Any) -> JobRequest:
        """A request from Python values: ``args`` is serialised to JSON here."""
        if "args_json" not in fields:
            fields["args_json"] = _json_text(args)
        elif args is not None:
            raise ValueError("give args or args_json, not both")
        return cls(handler=handler, **fields)

    @classmethod
    def from_mapping(cls, fields: Mapping[str, Any]) -> JobRequest:
        fields = dict(fields)
        unknown = set(fields) - set(attrs.fields_dict(cls)) - {"args"}
        if unknown:
            raise ValueError(f"unknown job fields: {', '.join(sorted(unknown))}")
        if "handler" not in fields:
            raise ValueError("a job needs a handler")
        handler = fields.pop("handler")
        args = fields.pop("args", None)
        return cls.of(handler, args, **fields)

    def command(self, now_ms: int) -> Enqueue:
        return Enqueue(now_ms=now_ms, **attrs.asdict(self))


def _json_text(value: Any) -> str:
    try:
        return json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError) as error:
        raise ValueError(f"args are not JSON-able: {error}") from None


@attrs.frozen(kw_only=True)
class ControllerOptions:
    runner_id: str | None = None  # worker ids are "<runner_id>-w<n>"; default p<pid>
    tick_interval_s: float = 0.05  # the timeout loop's period
    snapshot_interval_s: float = 2.0  # the original design: "e.g. every 2 s"
    snapshot_every_events: int = SNAPSHOT_EVERY_EVENTS_DEFAULT
    # An interval snapshot waits for at least this many new events per job in the
    # state (see _snapshot_is_due); the every-N-events one never waits.
    snapshot_tail_per_job: float = 0.1
    retention_ms: int = limits.RETENTION_MS_DEFAULT
    finished_jobs_retained_max: int = limits.FINISHED_JOBS_RETAINED_MAX_DEFAULT
    result_batch_max: int = 1_000  # results decided under one lock hold
    # How soon a task leased ahead of the workers should start (impl/runtime/dispatch_window.py).
    dispatch_horizon_s: float = HORIZON_S_DEFAULT
    final_snapshot: bool = True  # on stop()
    jitter_seed: int | None = None  # seeds the retry-jitter draws (None: from the OS)


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


# -- The controller. ---------------------------------------------------------------------


class Controller:
    def __init__(
        self,
        storage: Storage,
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
        self._state = state
        # Copied on write (add_observer), so readers iterate without the lock.
        self._observers: tuple[ControllerObserver, ...] = ()
        self._committer: Committer = self._new_committer()
        # A slot per task the pool can hold (running or waiting), so that a lease
        # can be made durable while the workers still run the previous ones.
        self._free_slots = [f"{runner_id}-w{index}" for index in reversed(range(pool.capacity))]
        self._busy_slots: set[str] = set()
        # R3: one result per outstanding task, at most one task per slot (+1: the
        # result loop's stop sentinel).
        self._results: queue.Queue[object] = queue.Queue(maxsize=pool.capacity + 1)
        self._events_since_snapshot = 0
        self._last_snapshot_at = clock.monotonic()
        self._next_tick_at = clock.monotonic()
        self._stopping = False
        self._closed = False
        self._failure: BaseException | None = None
        self._pool_started = False
        self._threads: list[threading.Thread] = []
        self._stop_timers = threading.Event()
        self.stats = Stats()

        # R5: Recover, durable, before anything else.
        try:
            outcomes, lsn, committer = self._apply(lambda now: [Recover(now_ms=now)])
            self._wait_durable(committer, lsn)
        except BaseException:
            with contextlib.suppress(Exception):
                self._committer.close()  # no flusher thread outlives a failed start
            raise
        abandoned = outcomes[0]
        assert isinstance(abandoned, tuple)
        seconds = 0.0 if opened_at is None else time.monotonic() - opened_at
        self.recovery = RecoveryFigures(
            seconds=seconds,
            snapshot_lsn=0 if report is None else report.snapshot_lsn,
            records_replayed=0 if report is None else report.records_replayed,
            bytes_truncated=0 if report is None else report.bytes_truncated,
            last_lsn=state.last_lsn,
            leases_abandoned=len(abandoned),
        )
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

    # -- R1: the one path from command to log. ---------------------------------------------

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
            counted: list[tuple[Event, State]] = []  # each event with the state after it
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
                        counted.append((event, state))
                    appended.extend(events)
                    if isinstance(command, Enqueue):
                        outcomes.append(enqueued_job_id(before, command, events))
                    else:
                        outcomes.append(events)
                    command = None
            if appended:
                # R1: frame first; if the WAL refuses, nothing is published.
                self._committer.append(appended)
                self._state = state
                for event, after in counted:
                    self._count(event, after)
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

    def _count(self, event: Event, after: State) -> None:
        stats = self.stats
        if isinstance(event, LeaseGranted):
            stats.dispatched += 1
            return
        if isinstance(event, JobCompleted):
            stats.completed += 1
            return
        if isinstance(event, LeaseExpired):
            stats.expired += 1
        if isinstance(event, (JobFailed, LeaseExpired, LeaseAbandoned)):
            status = after.jobs[event.job_id].status
            if status in _RETRY_STATUSES:
                stats.retried += 1
            elif status is JobStatus.DEAD:
                stats.dead += 1
            elif status is JobStatus.CANCELLED:
                stats.cancelled += 1
        elif isinstance(event, JobCancelled):
            stats.cancelled += 1
        elif isinstance(event, LeaseReleased):
            stats.released += 1
            if after.jobs[event.job_id].status is JobStatus.CANCELLED:
                stats.cancelled += 1

    def _wait_durable(self, committer: Committer, lsn: int) -> None:
        """Wait outside the lock (R1); a failed WAL fails the whole controller."""
        try:
            committer.wait_durable(lsn)
        except WalFailed as error:
            self._fail(error)
            raise

    def _raise_if_unusable(self) -> None:
        if self._failure is not None:
            raise ControllerFailed(f"the controller failed: {self._failure}") from self._failure
        if self._closed:
            raise ControllerStopped("the controller is closed")

    def _run_one(self, make_command: Callable[[int], Command]) -> tuple[Event, ...] | str:
        outcomes, lsn, committer = self._apply(lambda now: [make_command(now)])
        self._wait_durable(committer, lsn)
        outcome = outcomes[0]
        if isinstance(outcome, Rejected):
            raise outcome
        return outcome

    # -- The public API: producers and operators. ------------------------------------------

    def enqueue(self, handler: str, args: Any = None, **fields: Any) -> str:
        """Enqueue one job; return its id once its ``JobEnqueued`` is durable.

        ``fields`` are ``JobRequest``'s (``queue``, ``priority``, ``job_id``, ...).
        A refused enqueue raises ``Rejected`` and changes nothing; an enqueue whose
        idempotency key is known returns the existing job's id."""
        return self.enqueue_request(JobRequest.of(handler, args, **fields))

    def enqueue_request(self, request: JobRequest) -> str:
        self._refuse_if_stopping()
        job_id = self._run_one(request.command)
        assert isinstance(job_id, str)
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

    # -- Reads: each waits for the durability of the state it reads (R2). ---------------

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
            return _is_idle(self._state)

    def until_idle(self, timeout_s: float | None = None) -> bool:
        """Wait until no job is pending, delayed or in flight (paused queues aside)
        and that state is durable.  False on timeout."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._lock:
            while not _is_idle(self._state):
                self._raise_if_unusable()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._state_changed.wait(remaining)
            lsn, committer = self._state.last_lsn, self._committer
        self._wait_durable(committer, lsn)
        return True

    # -- The four loops' bodies (shared by step() and the threads). -------------------------

    # -- Observers. ---------------------------------------------------------------------------

    def add_observer(self, observer: ControllerObserver) -> None:
        """Tell ``observer`` of every later result and durable batch."""
        with self._lock:
            self._observers = (*self._observers, observer)  # copied on write

    def _new_committer(self) -> Committer:
        committer = self._committer_factory(self._storage)
        committer.on_batch = self._batch_durable
        return committer

    def _batch_durable(self, events: int, seconds: float) -> None:
        # On the flusher thread: an exception here would end it and leave every
        # producer waiting for durability forever.
        for observer in self._observers:
            try:
                observer.batch_durable(events, seconds)
            except Exception as error:
                self._drop_observer(observer, error)

    def _tell_results(self, results: Sequence[TaskResult]) -> None:
        for observer in self._observers:
            try:
                for result in results:
                    observer.result_received(result)
            except Exception as error:
                self._drop_observer(observer, error)

    def _drop_observer(self, observer: ControllerObserver, error: Exception) -> None:
        # Copy on write without the lock (a snapshot may hold it while this runs on
        # the flusher thread); a lost race only delays the drop to the next call.
        self._observers = tuple(kept for kept in self._observers if kept is not observer)
        self.stats.observer_errors += 1
        self.stats.observer_error_last = f"{type(error).__name__}: {error}"

    def _on_result(self, result: TaskResult) -> None:
        """The pool's callback, on a worker thread: never blocks (R3)."""
        self._results.put_nowait(result)

    def _process_results(self, results: Sequence[TaskResult]) -> int:
        """The result loop's body: Complete/Fail for each; stale ones are counted."""
        self._tell_results(results)  # outside the lock
        with self._lock:
            for result in results:
                if result.worker_id in self._busy_slots:
                    self._busy_slots.discard(result.worker_id)
                    self._free_slots.append(result.worker_id)
                self._window.observe(result.duration_s)
            seeds = [self._rng.getrandbits(64) for _ in results]  # in result order

        def commands(now: int) -> list[Command]:
            made: list[Command] = []
            for result, seed in zip(results, seeds, strict=True):
                outcome = result.outcome
                if not result.started:
                    # The handler never ran: the lease goes back uncounted (or, if it
                    # has expired meanwhile, the fence finds this stale).
                    made.append(Release(now_ms=now, job_id=result.job_id, attempt=result.attempt))
                elif outcome.ok:
                    assert outcome.result_json is not None
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
            if rejected.rejection.rule in _STALE_RULES:
                # The fence at work: a result from a lease that is no longer live.
                self.stats.stale_results += 1
                return None
            # A result the model cannot store already failed the attempt in decide
            # (Complete decides a JobFailed that says why); any other refusal is a
            # bug here: loud.
            raise rejected

        outcomes, _lsn, _committer = self._apply(commands, fallback=fallback)
        # No wait: nobody is answered, and a later lease's durability covers these.
        with self._lock:
            for result, outcome in zip(results, outcomes, strict=True):
                # A success whose Complete was decided as a failure: the result was refused.
                if result.outcome.ok and isinstance(outcome, tuple):
                    self.stats.results_refused += sum(isinstance(e, JobFailed) for e in outcome)
            self._lease_possible.notify()
        return len(results)

    def _tick_once(self) -> int:
        self._withdraw_waiting()
        options = self._options
        outcomes, _lsn, _committer = self._apply(
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

    def _withdraw_waiting(self) -> None:
        """The dispatch window's safety net: a task that has waited in the pool for
        ``WITHDRAW_AFTER`` of its timeout without starting is taken back and its lease
        released (uncounted) before it can expire (counted).  Leasing ahead is sized
        from past running times; after quick jobs, slow ones could otherwise be leased
        far ahead of what the workers can start."""
        withdrawn = self._pool.withdraw_waiting(WITHDRAW_AFTER)
        if not withdrawn:
            return
        with self._lock:
            for task in withdrawn:
                if task.worker_id in self._busy_slots:
                    self._busy_slots.discard(task.worker_id)
                    self._free_slots.append(task.worker_id)
            self.stats.withdrawn += len(withdrawn)

        def stale(command: Command, rejected: Rejected) -> Command | None:
            # A lease that ended meanwhile (the job was forgotten, say) has nothing to
            # give back; the fence says so.  Anything else is a bug here: loud.
            if rejected.rejection.rule in _STALE_RULES:
                return None
            raise rejected

        self._apply(
            lambda now: [
                Release(now_ms=now, job_id=task.job_id, attempt=task.attempt) for task in withdrawn
            ],
            fallback=stale,
        )

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
                if not isinstance(granted, tuple) or not granted:
                    continue  # nothing ready (or in_flight_max_reached): no lease
                (event,) = granted
                assert isinstance(event, LeaseGranted)
                spec = state.jobs[event.job_id].spec
                tasks.append(
                    Task(
                        job_id=event.job_id,
                        attempt=event.attempt,
                        handler=spec.handler,
                        args_json=spec.args_json,
                        timeout_s=spec.timeout_ms / 1000.0,
                        worker_id=worker_id,
                        leased_at=leased_at,
                    )
                )
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
                    self._busy_slots.discard(task.worker_id)
                    self._free_slots.append(task.worker_id)
        return len(tasks)

    def _leases_allowed(self) -> int:
        """Free slots inside the dispatch window (under the lock)."""
        return min(len(self._free_slots), self._window.size() - len(self._busy_slots))

    def _can_lease(self) -> bool:
        return self._leases_allowed() > 0 and next_ready_job(self._state) is not None

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
        if since >= options.snapshot_every_events:
            return True
        if since == 0 or self._clock.monotonic() - self._last_snapshot_at < (
            options.snapshot_interval_s
        ):
            return False
        return since >= options.snapshot_tail_per_job * len(self._state.jobs)

    # -- Deterministic mode. ----------------------------------------------------------------

    def step(self) -> bool:
        """One round of the four loops, in a fixed order, on this thread: results,
        timeout (when a tick is due on the clock), dispatch, snapshot (when due).
        True if anything happened.  Not to be mixed with ``start()``."""
        assert not self._threads, "step() while the loops run in threads"
        self._start_pool()
        did = False
        results = self._drain_results()
        if results:
            self._process_results(results)
            did = True
        if self._clock.monotonic() >= self._next_tick_at:
            self._next_tick_at = self._clock.monotonic() + self._options.tick_interval_s
            did = self._tick_once() > 0 or did
        did = self._dispatch_once() > 0 or did
        with self._lock:
            if self._snapshot_is_due():
                self._snapshot_locked()
                did = True
        return did

    def _drain_results(self) -> list[TaskResult]:
        results: list[TaskResult] = []
        while len(results) < self._options.result_batch_max:
            try:
                item = self._results.get_nowait()
            except queue.Empty:
                break
            assert isinstance(item, TaskResult)
            results.append(item)
        return results

    def _start_pool(self) -> None:
        if not self._pool_started:
            self._pool_started = True
            self._pool.start(self._on_result)

    # -- Threaded mode. ---------------------------------------------------------------------

    def start(self) -> None:
        """Run the four loops in threads until ``stop``."""
        assert not self._threads, "start() twice"
        self._raise_if_unusable()
        self._start_pool()
        for name, target in (
            ("dispatch", self._dispatch_loop),
            ("result", self._result_loop),
            ("timeout", self._timeout_loop),
            ("snapshot", self._snapshot_loop),
        ):
            # Daemons: a program that forgets stop() can still exit, which for this
            # queue is just a crash, and crashes are safe by design.
            thread = threading.Thread(
                target=self._guarded(target), name=f"beaverq-{name}", daemon=True
            )
            self._threads.append(thread)
        for thread in self._threads:
            thread.start()

    def _guarded(self, loop: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                loop()
            except BaseException as error:
                self._fail(error)

        return run

    def _fail(self, error: BaseException) -> None:
        with self._lock:
            if self._failure is None:
                self._failure = error
            self._stopping = True
            self._lease_possible.notify_all()
            self._state_changed.notify_all()
            self._snapshot_due.notify_all()
        self._stop_timers.set()

    def _dispatch_loop(self) -> None:
        while True:
            with self._lock:
                while not self._stopping and not self._can_lease():
                    self._lease_possible.wait()
                if self._stopping:
                    return
            self._dispatch_once()

    def _result_loop(self) -> None:
        while True:
            first = self._results.get()
            if first is _STOP:
                return
            assert isinstance(first, TaskResult)
            batch = [first]
            stop = False
            while len(batch) < self._options.result_batch_max:
                try:
                    item = self._results.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                assert isinstance(item, TaskResult)
                batch.append(item)
            self._process_results(batch)
            if stop:
                return

    def _timeout_loop(self) -> None:
        while not self._stop_timers.wait(self._options.tick_interval_s):
            self._tick_once()

    def _snapshot_loop(self) -> None:
        interval = self._options.snapshot_interval_s
        while True:
            with self._lock:
                while not self._stop_timers.is_set() and not self._snapshot_is_due():
                    left = interval - (self._clock.monotonic() - self._last_snapshot_at)
                    # Nothing new since the last snapshot: a whole interval, not a spin.
                    self._snapshot_due.wait(left if left > 0 else interval)
                if self._stop_timers.is_set():
                    return
                try:
                    self._snapshot_locked()
                except WalFailed:
                    raise  # the log itself failed: the runner must stop
                except (OSError, StorageError) as error:
                    # The WAL still holds everything: a failed snapshot only makes
                    # the next recovery longer.  Count it and try again later.
                    self.stats.snapshot_failures += 1
                    self.stats.snapshot_error_last = str(error)
                    self._last_snapshot_at = self._clock.monotonic()

    # -- Stopping. --------------------------------------------------------------------------

    def stop(self, grace_s: float = 10.0) -> list[str]:
        """Graceful stop: no more leases; running jobs get ``grace_s`` to finish (their
        results are recorded); every lease still live is released (``Release``: back
        to the queue, the attempt not counted); a final snapshot; storage closed.
        Returns the ids of the jobs released, sorted (docs/runtime.md, "Shutdown")."""
        if self._closed:
            return []
        self._begin_stop()
        if self._pool_started:
            self._pool.shutdown(grace_s)
        self._end_loops(process_results=True)
        released: list[str] = []
        failure = self._failure
        try:
            if failure is None:
                released = self._release_live_leases()
            if failure is None and self._options.final_snapshot:
                with self._lock:
                    if self._events_since_snapshot > 0:
                        self._snapshot_locked()
        finally:
            self._close_storage()
        if failure is not None:
            raise ControllerFailed(f"the controller failed: {failure}") from failure
        return released

    def end_grace(self) -> None:
        """During ``stop``: end the grace at once (a second signal; ``pool.end_grace``)."""
        self._pool.end_grace()

    def _release_live_leases(self) -> list[str]:
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
            state = self._state
            released.extend(sorted(state.in_flight))
            return [
                Release(now_ms=now, job_id=job_id, attempt=state.jobs[job_id].attempt)
                for job_id in released
            ]

        outcomes, lsn, committer = self._apply(
            releases,
            atomic=True,  # nothing else runs now: a refusal here is a bug, loud
        )
        self._wait_durable(committer, lsn)
        assert all(isinstance(outcome, tuple) and outcome for outcome in outcomes), outcomes
        return released

    def halt(self) -> None:
        """Stop at once, as close to a crash as one process can come: no grace, no
        result processed, no snapshot.  The group commit's flusher is closed (it has no
        abort: what was framed is flushed, as if the crash came a moment later); the
        storage is *not* closed: the caller drops its file system (``fs.close()``)."""
        if self._closed:
            return
        self._begin_stop()
        if self._pool_started:
            self._pool.shutdown(0.0)
        self._end_loops(process_results=False)
        self._closed = True
        with contextlib.suppress(Exception):  # a crash reports nothing either
            self._committer.close()

    def __enter__(self) -> Controller:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _begin_stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lease_possible.notify_all()
        for thread in self._threads:
            if thread.name == "beaverq-dispatch":
                # Joined before the pool stops: every durable lease gets submitted.
                thread.join()

    def _end_loops(self, *, process_results: bool) -> None:
        if self._threads:
            if process_results:
                self._results.put(_STOP)
            else:
                self._drop_results()
                self._results.put(_STOP)
            self._stop_timers.set()
            with self._lock:
                self._snapshot_due.notify_all()
            for thread in self._threads:
                thread.join()
        if process_results and self._failure is None:
            # Step mode, or results reported after the result loop ended.
            while True:
                results = self._drain_results()
                if not results:
                    break
                self._process_results(results)
        else:
            self._drop_results()

    def _drop_results(self) -> None:
        while True:
            try:
                self._results.get_nowait()
            except queue.Empty:
                return

    def _close_storage(self) -> None:
        with self._lock:
            self._closed = True
            self._state_changed.notify_all()
        try:
            self._committer.close()
        except WalFailed:
            if self._failure is None:
                raise
            # Already failed: stop() reports that failure, not this echo of it.
        finally:
            self._storage.close()


# -- Reading a state: shared with the CLI when no runner holds the data dir. ---------------


def _is_idle(state: State) -> bool:
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
