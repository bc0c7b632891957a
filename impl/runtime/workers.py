"""The worker pools: N workers that run handlers and report how each attempt ended.

Two kinds share everything below but where a handler runs: :class:`ThreadPool` (the
default) runs it on the worker thread; ``ProcessPool`` (process_pool.py, ``--pool
processes``) has each worker thread drive one worker process, so that a handler past
its deadline is really stopped: its process is killed and replaced.

The controller hands the pool a :class:`Task` (a leased attempt: job id, attempt,
handler, args, timeout) and gets back, through the ``on_result`` callback it gave
``start``, a :class:`TaskResult` ``(job_id, attempt, outcome)``.  The pool knows
nothing of the model: whether a result still counts is the attempt fence's question
(model/decide.py), answered by the controller.

Bounded by construction (the original design's pitfall: "use bounded buffers, or
non-blocking puts with a clear policy when full"):

* at most ``workers`` handlers run at once (one per thread);
* at most ``workers + queue_max`` tasks are held (running or waiting to start;
  ``queue_max`` defaults to ``QUEUE_MAX_DEFAULT``, room for the controller's
  dispatch window, impl/runtime/dispatch_window.py);
  ``submit`` never blocks: a full pool raises :class:`PoolFull`, and the caller
  keeps the task (the controller never gets there: it holds one slot per task the
  pool can hold, and frees a slot only when that task's result arrives).

One lock (``_lock``) guards the queue and the table of running tasks; no callback
and no handler ever runs while it is held (the deadlock rule).

Shutdown (``shutdown(grace_s)``), in this order:

1. stop taking work: ``submit`` refuses, tasks still waiting are dropped (they never
   started) and reported as unfinished;
2. wait up to ``grace_s`` for running handlers to return (their results are
   reported as usual);
3. at the end of the grace, every handler still running is *abandoned*: its
   context's ``cancelled`` event is set (``sleep`` wakes, ``shell`` kills its
   process group) and whatever it returns later is dropped, not reported, so the
   caller's view "these were still running" stays true;
4. join every thread.  A thread stuck in a handler that ignores ``cancelled``
   cannot be killed (Python threads cannot be); the pool waits ``cancel_wait_s``
   for it and then lists it in ``stuck_threads``.  Threads are daemons, so such a
   thread does not keep the process alive.  (In a process pool no thread gets stuck:
   the handler's process is killed ``kill_margin_s`` after the cancel.)
5. a process pool then stops every worker process and reaps it.

The ids returned are the jobs that did not finish: dropped before starting, or
abandoned while running.  Their leases stay live in the log; see docs/runtime.md
("Shutdown") for what becomes of them.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

import attrs

from beaverq.model import Event, LeaseGranted, State
from beaverq.model.errors import BrokenInvariant

from .handlers import HandlerContext, HandlerRegistry, Outcome

#: How long ``shutdown`` waits for abandoned handlers to notice ``cancelled``.
CANCEL_WAIT_S_DEFAULT = 5.0
#: Process pool: how long past its deadline (or cancellation) a handler may run
#: before its process is killed.
KILL_MARGIN_S_DEFAULT = 1.0
#: Process pool: how often a waiting worker thread looks at the cancel flag.
PROCESS_POLL_S = 0.05
#: How often the wait for a grace period looks for a second signal.
_GRACE_POLL_S = 0.05
#: Tasks that may wait to start, beyond one per worker.  Room to lease a few fsyncs
#: ahead for short jobs; how much of it is used is the dispatch window's call.
QUEUE_MAX_DEFAULT = 256


@attrs.frozen
class Task:
    """One leased attempt to run."""

    job_id: str
    attempt: int
    handler: str
    args_json: str
    timeout_s: float
    worker_id: str = ""
    # ``time.monotonic()`` when the lease was granted (None: when handed over).  The
    # lease's clock starts there, before the fsync that makes it durable, so the
    # handler's deadline does too.
    leased_at: float | None = None


def task_of(
    state: State, granted: tuple[Event, ...], worker_id: str, leased_at: float | None
) -> Task:
    """The task a durable-to-be ``LeaseGranted`` (``granted``, as decided) hands to
    ``worker_id``: what the handler needs, read from the state the lease made."""
    (event,) = granted
    if not isinstance(event, LeaseGranted):
        raise BrokenInvariant(f"a lease decided {event!r}, not one LeaseGranted")
    spec = state.jobs[event.job_id].spec
    return Task(
        job_id=event.job_id,
        attempt=event.attempt,
        handler=spec.handler,
        args_json=spec.args_json,
        timeout_s=spec.timeout_ms / 1000.0,
        worker_id=worker_id,
        leased_at=leased_at,
    )


@attrs.frozen
class TaskResult:
    job_id: str
    attempt: int
    outcome: Outcome
    worker_id: str = ""
    duration_s: float = 0.0
    # False: the handler never ran (its lease ran out while the task waited in the
    # queue, or it was withdrawn): the controller gives the lease back uncounted.
    started: bool = True


class PoolFull(Exception):
    """``submit`` found the work queue full (backpressure: try again later)."""


class PoolClosed(Exception):
    """``submit`` after ``shutdown`` began."""


ResultCallback = Callable[[TaskResult], None]


class WorkerPool(Protocol):
    """What the controller needs of a pool (``ThreadPool``, or a test's fake)."""

    @property
    def workers(self) -> int: ...

    @property
    def capacity(self) -> int:
        """Tasks it holds at most: running plus waiting (``submit`` never refuses below)."""
        ...

    def start(self, on_result: ResultCallback) -> None: ...

    def submit(self, task: Task) -> None: ...

    def shutdown(self, grace_s: float) -> list[str]: ...

    def end_grace(self) -> None:
        """During ``shutdown``: end the grace now (a second signal), as if it ran out."""
        ...

    def withdraw_waiting(self, fraction: float) -> list[Task]:
        """Take back the tasks still waiting to start that have waited ``fraction`` of
        their timeout or more; they will never start."""
        ...


@attrs.define
class _Running:
    task: Task
    context: HandlerContext
    started: float  # time.monotonic()


class _PoolBase:
    """The queue, the running table and shutdown; subclasses say how a task runs."""

    def __init__(
        self,
        registry: HandlerRegistry,
        workers: int,
        *,
        queue_max: int | None,
        cancel_wait_s: float,
        name: str,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self._registry = registry
        self._workers = workers
        self._queue_max = QUEUE_MAX_DEFAULT if queue_max is None else queue_max
        if self._queue_max < 1:
            raise ValueError(f"queue_max must be >= 1, got {self._queue_max}")
        self._cancel_wait_s = cancel_wait_s
        self._name = name
        self._lock = threading.Lock()
        self._work_ready = threading.Condition(self._lock)
        # Each waiting task with the time it was handed over: its lease was granted
        # just before, so its timeout counts from then, not from when it starts.
        self._queue: deque[tuple[Task, float]] = deque()
        self._running: dict[tuple[str, int], _Running] = {}
        self._abandoned: set[tuple[str, int]] = set()
        # Abandoned by end_grace: unfinished, even if the handler returns (unreported)
        # before shutdown looks at what is still running.
        self._given_up: set[tuple[str, int]] = set()
        self._grace_over = False
        self._grace_ended = threading.Event()
        self._closed = False
        self._threads: list[threading.Thread] = []
        self._on_result: ResultCallback | None = None
        self.stuck_threads: list[str] = []

    @property
    def workers(self) -> int:
        return self._workers

    @property
    def capacity(self) -> int:
        return self._workers + self._queue_max

    def start(self, on_result: ResultCallback) -> None:
        if self._on_result is not None:
            raise BrokenInvariant("start() twice")
        self._on_result = on_result
        for index in range(self._workers):
            thread = threading.Thread(
                target=self._work, args=(index,), name=f"{self._name}-{index}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def submit(self, task: Task) -> None:
        with self._lock:
            if self._closed:
                raise PoolClosed("the pool is shutting down")
            # Counted as held: waiting plus running.  A worker leaves ``_running``
            # before it reports, so a caller that submits one task per result it
            # received (the controller's slots) never sees this refusal.
            if len(self._queue) + len(self._running) >= self.capacity:
                raise PoolFull(
                    f"the pool holds {self.capacity} tasks (workers + queue_max): "
                    f"{len(self._running)} running, {len(self._queue)} waiting"
                )
            self._queue.append((task, time.monotonic()))
            self._work_ready.notify()

    def running(self) -> list[tuple[str, int, float]]:
        """(job id, attempt, seconds running) of every running handler."""
        now = time.monotonic()
        with self._lock:
            return [
                (run.task.job_id, run.task.attempt, now - run.started)
                for run in self._running.values()
            ]

    @property
    def queued(self) -> int:
        with self._lock:
            return len(self._queue)

    def shutdown(self, grace_s: float) -> list[str]:
        """Stop; return the ids of the jobs that did not finish (see module doc)."""
        with self._lock:
            self._closed = True
            # A second signal may come before the stop reaches the pool.
            deadline = time.monotonic() + (0.0 if self._grace_over else max(0.0, grace_s))
            unfinished = [task.job_id for task, _submitted in self._queue]
            self._queue.clear()
            self._work_ready.notify_all()
        self._join_until(deadline, unless=self._grace_ended)
        with self._lock:
            for key, run in self._running.items():
                # Upholds: a job listed as unfinished never reports a result.
                self._abandoned.add(key)
                run.context.cancelled.set()
                if key not in self._given_up:
                    unfinished.append(run.task.job_id)
            for key in self._given_up:
                unfinished.append(key[0])
        self._join_until(time.monotonic() + self._cancel_wait_s)
        self.stuck_threads = [thread.name for thread in self._threads if thread.is_alive()]
        self._after_threads()
        return unfinished

    def end_grace(self) -> None:
        """End a shutdown's grace at once: every running handler is abandoned and told
        to cancel, exactly as when the grace runs out, so ``shutdown`` returns as soon
        as they stop.  Called before ``shutdown``, it makes that shutdown's grace zero."""
        with self._lock:
            self._grace_over = True
            self._grace_ended.set()  # cuts shutdown's wait for the grace short
            if not self._closed:
                return
            for key, run in self._running.items():
                # Upholds, as in shutdown: a job listed as unfinished never reports.
                self._abandoned.add(key)
                self._given_up.add(key)
                run.context.cancelled.set()
        # The worker threads return once their handlers do, which ends shutdown's join.

    def withdraw_waiting(self, fraction: float) -> list[Task]:
        """Take back every task that has waited, unstarted, ``fraction`` of its timeout
        or more (the dispatch window's safety net: the window is sized from *past*
        running times, and a run of slow jobs after quick ones would otherwise wait in
        the queue until their leases expire, each expiry a counted attempt)."""
        now = time.monotonic()
        with self._lock:
            kept: deque[tuple[Task, float]] = deque()
            withdrawn: list[Task] = []
            for task, submitted in self._queue:
                if now - submitted >= fraction * task.timeout_s:
                    withdrawn.append(task)
                else:
                    kept.append((task, submitted))
            self._queue = kept
        return withdrawn

    def _after_threads(self) -> None:
        """Called by ``shutdown`` once the worker threads are joined."""

    def _execute(self, index: int, task: Task, context: HandlerContext) -> Outcome:
        raise NotImplementedError

    def _join_until(self, deadline: float, unless: threading.Event | None = None) -> None:
        """Join every worker thread by ``deadline``; stop waiting early once ``unless``
        is set (a second signal must not wait out a handler that ignores cancel)."""
        for thread in self._threads:
            while thread.is_alive():
                left = deadline - time.monotonic()
                if left <= 0 or (unless is not None and unless.is_set()):
                    return
                thread.join(min(left, _GRACE_POLL_S))

    # -- a worker thread ----------------------------------------------------------------

    def _work(self, index: int) -> None:
        on_result = self._on_result
        if on_result is None:
            raise BrokenInvariant("broken invariant: on_result is not None")
        while True:
            with self._lock:
                while not self._queue and not self._closed:
                    self._work_ready.wait()
                if self._closed:
                    return
                task, submitted = self._queue.popleft()
                started = time.monotonic()
                context = HandlerContext(
                    job_id=task.job_id,
                    attempt=task.attempt,
                    timeout_s=task.timeout_s,
                    # From the lease, not from the start: a handler never gets more
                    # time than its lease, however long the task waited.
                    deadline=(submitted if task.leased_at is None else task.leased_at)
                    + task.timeout_s,
                )
                key = (task.job_id, task.attempt)
                self._running[key] = _Running(task, context, started)
            if started >= context.deadline:
                # Its lease has run out while it waited: running it now would race the
                # next attempt.  Reported unstarted; the controller releases the lease
                # if it is still live (uncounted) or finds the result stale.
                with self._lock:
                    del self._running[key]
                    report = key not in self._abandoned
                    self._abandoned.discard(key)
                if report:
                    on_result(
                        TaskResult(
                            task.job_id,
                            task.attempt,
                            Outcome.failure("not started: its lease ran out while it waited"),
                            task.worker_id,
                            0.0,
                            started=False,
                        )
                    )
                continue
            outcome = self._execute(index, task, context)
            duration = time.monotonic() - started
            with self._lock:
                del self._running[key]
                report = key not in self._abandoned
                self._abandoned.discard(key)
            if report:
                # Outside the lock: the callback belongs to the controller.
                on_result(TaskResult(task.job_id, task.attempt, outcome, task.worker_id, duration))


class ThreadPool(_PoolBase):
    """Handlers run on the worker threads themselves (the default)."""

    def __init__(
        self,
        registry: HandlerRegistry,
        workers: int = 4,
        *,
        queue_max: int | None = None,
        cancel_wait_s: float = CANCEL_WAIT_S_DEFAULT,
        name: str = "beaverq-worker",
    ) -> None:
        super().__init__(
            registry, workers, queue_max=queue_max, cancel_wait_s=cancel_wait_s, name=name
        )

    def _execute(self, index: int, task: Task, context: HandlerContext) -> Outcome:
        return self._registry.run(task.handler, task.args_json, context)
