"""The Python API: the CLI's power in a few calls.

    from beaverq.impl.frontends.api import open_queue

    queue = open_queue("beaverq-data")

    @queue.handler("add")
    def add(args, context):
        return args["a"] + args["b"]

    queue.enqueue("add", {"a": 1, "b": 2})
    with queue.running(workers=4) as runner:
        runner.until_idle()
    print(queue.status()["completed"])

Every call is durable when it returns, exactly as the CLI's commands: ``enqueue``
returns once the job is fsynced.  When no runner holds the data directory, a call
opens it under its lock and closes it again; while a runner runs (this one, or a
``beaverq run`` in another process) the call goes to it.  ``Runner`` is also what
``beaverq run`` runs.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from beaverq.impl.runtime.controller import Controller
from beaverq.impl.runtime.dispatch_window import HORIZON_S_DEFAULT
from beaverq.impl.runtime.gc_policy import release_tuning, tune_for_long_lived_state
from beaverq.impl.runtime.handlers import HandlerFunction, HandlerRegistry
from beaverq.impl.runtime.options import ControllerOptions
from beaverq.impl.runtime.process_pool import ProcessPool
from beaverq.impl.runtime.workers import ThreadPool, WorkerPool
from beaverq.impl.storage.fs import DataDirLocked, RealFileSystem, StorageError
from beaverq.model.errors import BrokenInvariant

from .control import _perform_or_fail, execute, socket_path
from .control_params import job_request
from .control_server import ControlServer
from .trust import Untrusted, check_data_dir

#: How long a starting runner waits for the data directory's lock while no runner
#: listens on its socket: a command without a runner holds the lock for its own short
#: turn (a read, or an enqueue and its fsync), and producers in a loop take turns.
RUNNER_LOCK_WAIT_S = 10.0
#: Between two tries for the lock.
LOCK_RETRY_S = 0.01


class RunFailed(Exception):
    """A runner could not start (e.g. another runner holds the data directory)."""


def _a_runner_answers(data_dir: str) -> bool:
    """Whether a process listens on the data directory's socket: only a runner does
    (the directory is the user's: checked).  A connection is enough, so nothing is
    asked: a stuck runner is named at once, not after the client's answer wait, and
    ``$BEAVERQ_ANSWER_WAIT_S`` (a client's setting) cannot make a producer a runner."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.setblocking(False)  # a full backlog refuses at once (EAGAIN)
        try:
            probe.connect(socket_path(data_dir))
        except BlockingIOError:
            return True  # so many clients waiting that the backlog is full: a runner
        except OSError:
            return False  # no socket, or a crashed runner's with no one listening
    return True


class Runner:
    """A controller, its worker pool and its control socket, for one data directory."""

    def __init__(
        self,
        data_dir: str,
        registry: HandlerRegistry,
        *,
        workers: int = 4,
        pool: str = "threads",
        snapshot_interval_s: float = 2.0,
        lease_ahead_s: float = HORIZON_S_DEFAULT,
        tune_gc: bool = True,
    ) -> None:
        self.data_dir = data_dir
        self._registry = registry
        self._workers = workers
        self._pool_kind = pool
        self._options = ControllerOptions(
            snapshot_interval_s=snapshot_interval_s, dispatch_horizon_s=lease_ahead_s
        )
        # A process-wide setting, so the runner's (impl/runtime/gc_policy.py); off for a program
        # that tunes its own collector.
        self._tune_gc = tune_gc
        self._gc_tuned = False
        self.pool: WorkerPool | None = None
        self.controller: Controller | None = None
        self._server: ControlServer | None = None
        # Ours, so that stop() can close its files: a process may run many runners.
        self._fs = RealFileSystem()

    def start(self) -> Runner:
        """Recover the data directory, start the loops, then serve the socket."""
        try:
            check_data_dir(self.data_dir)  # never run jobs into another user's directory
        except Untrusted as untrusted:
            self._fs.close()
            raise RunFailed(str(untrusted)) from None
        except OSError as error:  # cannot even look (ENOTDIR, ELOOP, EACCES on a parent)
            self._fs.close()
            raise RunFailed(f"{self.data_dir}: cannot open: {error.strerror or error}") from None
        try:
            self.pool = (
                ProcessPool(self._registry, self._workers)
                if self._pool_kind == "processes"
                else ThreadPool(self._registry, self._workers)
            )
            self.controller = self._open_when_free(self.pool)
        except RunFailed:
            self._fs.close()
            raise
        except (OSError, StorageError, ValueError) as error:
            self._fs.close()
            raise RunFailed(f"{self.data_dir}: cannot open: {error}") from None
        try:  # again: another user may have made the directory since the first check
            check_data_dir(self.data_dir)
        except Untrusted as untrusted:
            self.controller.stop(0.0)  # its loops never started: no job of theirs ran
            self._fs.close()
            raise RunFailed(str(untrusted)) from None
        if self._tune_gc:
            tune_for_long_lived_state()  # the recovered state is what it freezes
            self._gc_tuned = True
        self.controller.start()
        # Last: a client that finds the socket finds a controller that is running.
        self._server = ControlServer(self.controller, self.data_dir)
        try:
            self._server.start()
        except OSError as error:
            self.controller.stop(0.0)
            self._fs.close()
            raise RunFailed(f"cannot serve {self._server.path}: {error}") from None
        return self

    def _open_when_free(self, pool: WorkerPool) -> Controller:
        """Open the data directory once no other process holds its lock.  A runner
        that holds it is named at once (it listens on the socket); a command without a
        runner holds it only for its short turn, so wait, up to ``RUNNER_LOCK_WAIT_S``."""
        deadline = time.monotonic() + RUNNER_LOCK_WAIT_S
        while True:
            try:
                return Controller.open(self.data_dir, pool, fs=self._fs, options=self._options)
            except DataDirLocked as locked:
                if _a_runner_answers(self.data_dir):
                    raise RunFailed(f"another runner holds the data directory: {locked}") from None
                if time.monotonic() >= deadline:
                    raise RunFailed(
                        f"{locked}, which kept it {RUNNER_LOCK_WAIT_S:g} s without serving "
                        f"{socket_path(self.data_dir)}: not a runner, or one still recovering"
                    ) from None
            # The lock tells no one when it is free: look again shortly (bounded above).
            time.sleep(LOCK_RETRY_S)

    def until_idle(self, timeout_s: float | None = None) -> bool:
        if self.controller is None:
            raise BrokenInvariant("start() first")
        return self.controller.until_idle(timeout_s)

    def stop(self, grace_s: float = 10.0) -> list[str]:
        """Graceful stop; returns the ids of the jobs returned to the queue.  The socket
        is served during the grace (``status`` still answers; enqueues are refused)."""
        if self.controller is None:
            return []
        try:
            return self.controller.stop(grace_s)
        finally:
            if self._server is not None:
                self._server.close()
            self._fs.close()
            if self._gc_tuned:
                # The process may go on without a runner (a program, a test session).
                release_tuning()
                self._gc_tuned = False

    def end_grace_now(self) -> None:
        """Make a stop in progress end its grace at once (a second signal): the
        running handlers are abandoned and told to cancel, as at the grace's end, so
        the pool's join returns as soon as they do."""
        if self.controller is not None:
            self.controller.end_grace()

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class Queue:
    """A data directory, and the handlers a runner started from here will run."""

    def __init__(self, data_dir: str, *, allow_shell: bool = False, imports: Iterable[str] = ()):
        self.data_dir = data_dir
        self.registry = HandlerRegistry(allow_shell=allow_shell)
        for module in imports:
            self.registry.import_module(module)
        self._runner: Runner | None = None
        self._runner_lock = threading.Lock()

    def handler(self, name: str) -> Callable[[HandlerFunction], HandlerFunction]:
        """Register ``function(args, context)`` as handler ``name`` (a decorator)."""

        def register(function: HandlerFunction) -> HandlerFunction:
            self.registry.add(name, function)
            return function

        return register

    def enqueue(self, handler: str, args: Any = None, **fields: Any) -> str:
        """Enqueue one job; its id once durable.  ``fields`` use the CLI's names:
        queue, id, priority, max_attempts, timeout (s), delay (s), idempotency_key."""
        job = {"handler": handler, "args": args, **fields}
        job_request(job)  # refuse a malformed job here, with the caller's traceback
        job_id: str = self._call("enqueue", {"job": job})
        return job_id

    def enqueue_batch(self, jobs: Iterable[Mapping[str, Any]]) -> list[str]:
        """Enqueue jobs (mappings with the CLI's names) with one fsync; all or nothing."""
        ids: list[str] = self._call("enqueue_batch", {"jobs": [dict(job) for job in jobs]})
        return ids

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = self._call("status", {})
        return status

    def run(self, *, workers: int = 4, pool: str = "threads", until_idle: bool = True) -> None:
        """Run on this thread: until idle, or (``until_idle=False``) until interrupted."""
        with self.running(workers=workers, pool=pool) as runner:
            if until_idle:
                runner.until_idle()
            else:
                threading.Event().wait()  # until KeyboardInterrupt

    @contextlib.contextmanager
    def running(self, *, workers: int = 4, pool: str = "threads") -> Iterator[Runner]:
        """Run in background threads for the ``with`` block; stop gracefully after it."""
        runner = Runner(self.data_dir, self.registry, workers=workers, pool=pool).start()
        with self._runner_lock:
            self._runner = runner
        try:
            yield runner
        finally:
            with self._runner_lock:
                self._runner = None
            runner.stop()

    def _call(self, op: str, params: Mapping[str, Any]) -> Any:
        with self._runner_lock:
            runner = self._runner
        if runner is not None and runner.controller is not None:
            return _perform_or_fail(runner.controller, op, params)  # ours: no socket
        return execute(self.data_dir, op, params)


def open_queue(data_dir: str, *, allow_shell: bool = False, imports: Iterable[str] = ()) -> Queue:
    """A ``Queue`` on ``data_dir`` (created at the first enqueue)."""
    return Queue(data_dir, allow_shell=allow_shell, imports=imports)
