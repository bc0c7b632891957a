"""The worker pool: N threads that run handlers and report how each attempt ended.

The controller hands the pool a :class:`Task` (a leased attempt: job id, attempt,
handler, args, timeout) and gets back, through the ``on_result`` callback it gave
``start``, a :class:`TaskResult` ``(job_id, attempt, outcome)``.  The pool knows
nothing of the model: whether a result still counts is the attempt fence's question
(model/decide.py), answered by the controller.

Bounded by construction (the original design's pitfall: "use bounded buffers, or
non-blocking puts with a clear policy when full"):

* at most ``workers`` handlers run at once (one per thread);
* at most ``workers + queue_max`` tasks are held (running or waiting to start);
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
   thread does not keep the process alive.

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

from .handlers import HandlerContext, HandlerRegistry, Outcome

#: How long ``shutdown`` waits for abandoned handlers to notice ``cancelled``.
CANCEL_WAIT_S_DEFAULT = 5.0


@attrs.frozen
class Task:
    """One leased attempt to run."""

    job_id: str
    attempt: int
    handler: str
    args_json: str
    timeout_s: float
    worker_id: str = ""


@attrs.frozen
class TaskResult:
    job_id: str
    attempt: int
    outcome: Outcome
    worker_id: str = ""
    duration_s: float = 0.0


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


@attrs.define
class _Running:
    task: Task
    context: HandlerContext
    started: float  # time.monotonic()


class ThreadPool:
    def __init__(
        self,
        registry: HandlerRegistry,
        workers: int = 4,
        *,
        queue_max: int | None = None,
        cancel_wait_s: float = CANCEL_WAIT_S_DEFAULT,
        name: str = "beaverq-worker",
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self._registry = registry
        self._workers = workers
        self._queue_max = workers if queue_max is None else queue_max
        if self._queue_max < 1:
            raise ValueError(f"queue_max must be >= 1, got {self._queue_max}")
        self._cancel_wait_s = cancel_wait_s
        self._name = name
        self._lock = threading.Lock()
        self._work_ready = threading.Condition(self._lock)
        self._queue: deque[Task] = deque()
        self._running: dict[tuple[str, int], _Running] = {}
        self._abandoned: set[tuple[str, int]] = set()
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
        assert self._on_result is None, "start() twice"
        self._on_result = on_result
        for index in range(self._workers):
            thread = threading.Thread(target=self._work, name=f"{self._name}-{index}", daemon=True)
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
            self._queue.append(task)
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
        deadline = time.monotonic() + max(0.0, grace_s)
        with self._lock:
            self._closed = True
            unfinished = [task.job_id for task in self._queue]
            self._queue.clear()
            self._work_ready.notify_all()
        self._join_until(deadline)
        with self._lock:
            for key, run in self._running.items():
                # Upholds: a job listed as unfinished never reports a result.
                self._abandoned.add(key)
                run.context.cancelled.set()
                unfinished.append(run.task.job_id)
        self._join_until(time.monotonic() + self._cancel_wait_s)
        self.stuck_threads = [thread.name for thread in self._threads if thread.is_alive()]
        return unfinished

    def _join_until(self, deadline: float) -> None:
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    # -- a worker thread ----------------------------------------------------------------

    def _work(self) -> None:
        on_result = self._on_result
        assert on_result is not None
        while True:
            with self._lock:
                while not self._queue and not self._closed:
                    self._work_ready.wait()
                if self._closed:
                    return
                task = self._queue.popleft()
                started = time.monotonic()
                context = HandlerContext(
                    job_id=task.job_id,
                    attempt=task.attempt,
                    timeout_s=task.timeout_s,
                    deadline=started + task.timeout_s,
                )
                key = (task.job_id, task.attempt)
                self._running[key] = _Running(task, context, started)
            outcome = self._registry.run(task.handler, task.args_json, context)
            duration = time.monotonic() - started
            with self._lock:
                del self._running[key]
                report = key not in self._abandoned
                self._abandoned.discard(key)
            if report:
                # Outside the lock: the callback belongs to the controller.
                on_result(TaskResult(task.job_id, task.attempt, outcome, task.worker_id, duration))
