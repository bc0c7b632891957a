"""The process pool: each worker thread drives one worker process (``--pool processes``).

Everything but where a handler runs is shared with the thread pool (workers.py, whose
module doc tells the rules: bounds, the lock, shutdown).  This module is also the
worker process's program: ``python -m beaverq.impl.runtime.process_pool``.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import select
import subprocess
import sys
import threading
import time
from typing import IO, Any

import attrs

from beaverq.model.errors import BrokenInvariant

from .attempt_keeper import become_subreaper, kill_children, reap_exited
from .handlers import HandlerContext, HandlerRegistry, Outcome, kill_process_group
from .worker_isolation import isolated_worker_argv
from .workers import CANCEL_WAIT_S_DEFAULT, KILL_MARGIN_S_DEFAULT, PROCESS_POLL_S, Task, _PoolBase


@attrs.define
class _Child:
    process: subprocess.Popen[bytes]
    to_child: IO[bytes]
    from_child: IO[bytes]


class ProcessPool(_PoolBase):
    """Each worker thread drives one worker process; handlers run in the process.

    A timed-out handler is really stopped: at its deadline plus ``kill_margin_s`` (time
    for a cooperative handler to report its own timeout, and for ``shell`` to kill its
    process group) the worker process is killed, the attempt fails with an error that
    says so, and a fresh process takes the next task.  A process that dies while
    running a handler (``os._exit``, a crash in C code) fails that attempt the same
    way.  On shutdown, abandoned handlers are told to cancel, and their processes are
    killed if they have not answered within ``kill_margin_s``; every process is
    stopped and reaped before ``shutdown`` returns.

    A worker process runs this module's ``_worker_process_main`` (not ``multiprocessing``,
    which would re-import the caller's main module in every child) in an isolated
    interpreter (worker_isolation.py: the working directory is not on its path),
    started in its own session, and speaks JSON lines on its stdin/stdout (the
    handler's own stdout goes to stderr).  It dies with the runner: at end-of-file on
    its stdin it kills every process it started and exits at once.  It rebuilds the
    registry from ``allow_shell`` and the imported modules, so every handler must come
    from an import (``HandlerRegistry.added_directly`` must be empty).
    """

    def __init__(
        self,
        registry: HandlerRegistry,
        workers: int = 4,
        *,
        queue_max: int | None = None,
        cancel_wait_s: float = CANCEL_WAIT_S_DEFAULT,
        kill_margin_s: float = KILL_MARGIN_S_DEFAULT,
        name: str = "beaverq-process",
    ) -> None:
        if registry.added_directly:
            raise ValueError(
                "a process pool rebuilds its handlers from imports; these were added "
                f"directly and cannot be: {', '.join(registry.added_directly)}"
            )
        super().__init__(
            registry, workers, queue_max=queue_max, cancel_wait_s=cancel_wait_s, name=name
        )
        self._kill_margin_s = kill_margin_s
        self._children: list[_Child | None] = [None] * workers
        self.processes_started = 0
        self.processes_killed = 0

    def child_pids(self) -> list[int]:
        return [child.process.pid for child in self._children if child is not None]

    def _argv(self) -> list[str]:
        argv = []
        if self._registry.allow_shell:
            argv.append("--allow-shell")
        for module in self._registry.imported:
            argv += ["--import", module]
        return isolated_worker_argv(argv, self._registry.imported)

    def _child(self, index: int) -> _Child:
        child = self._children[index]
        if child is not None and child.process.poll() is None:
            return child
        self._reap(index)
        process = subprocess.Popen(
            self._argv(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            # Its own session: a Ctrl-C to the runner's terminal does not reach the
            # workers; the runner decides what a signal means and stops them itself.
            start_new_session=True,
        )
        if not (process.stdin is not None and process.stdout is not None):
            raise BrokenInvariant(
                "broken invariant: process.stdin is not None and process.stdout is not None"
            )
        child = _Child(process, process.stdin, process.stdout)
        self._children[index] = child
        self.processes_started += 1
        return child

    def _reap(self, index: int, *, kill: bool = False) -> None:
        child = self._children[index]
        if child is None:
            return
        self._children[index] = None
        if kill and child.process.poll() is None:
            # The worker leads its own process group: kill everything in it.
            kill_process_group(child.process.pid)
            self.processes_killed += 1
        for stream in (child.to_child, child.from_child):
            with contextlib.suppress(OSError):
                stream.close()
        child.process.wait()

    def _send(self, child: _Child, message: object) -> None:
        child.to_child.write(json.dumps(message).encode() + b"\n")
        child.to_child.flush()

    def _execute(self, index: int, task: Task, context: HandlerContext) -> Outcome:
        request = [
            "run",
            task.handler,
            task.args_json,
            task.job_id,
            task.attempt,
            task.timeout_s,
            context.deadline,  # CLOCK_MONOTONIC is one clock for every process
        ]
        try:
            child = self._child(index)
            self._send(child, request)
        except OSError:
            # The process died between tasks: one fresh process, one more try.
            self._reap(index, kill=True)
            child = self._child(index)
            self._send(child, request)
        kill_at = context.deadline + self._kill_margin_s
        cancel_sent = False
        while True:
            if context.cancelled.is_set() and not cancel_sent:
                with contextlib.suppress(OSError):
                    self._send(child, ["cancel"])
                cancel_sent = True
                kill_at = min(kill_at, time.monotonic() + self._kill_margin_s)
            remaining = kill_at - time.monotonic()
            if remaining <= 0:
                self._reap(index, kill=True)
                why = "cancellation" if cancel_sent else "deadline"
                return Outcome.failure(
                    f"{task.handler}: still running {self._kill_margin_s:g} s after its "
                    f"{why}; its worker process was killed and replaced"
                )
            # One task, one answer line: nothing is ever left in the reader's buffer
            # when select says the pipe is empty.
            # poll, not select: select fails on descriptors numbered 1024 or more,
            # which a long-lived runner (or a test session) can reach.
            poller = select.poll()
            poller.register(child.from_child, select.POLLIN | select.POLLHUP)
            if not poller.poll(min(remaining, PROCESS_POLL_S) * 1000):
                continue
            line = child.from_child.readline()
            if line:
                ok, result_json, error = json.loads(line)
                return Outcome(ok, result_json, error)
            code = child.process.wait()
            self._reap(index)
            return Outcome.failure(
                f"{task.handler}: its worker process died (exit status {code}) while "
                "running it; a fresh process takes the next task"
            )

    def _after_threads(self) -> None:
        for index, child in enumerate(self._children):
            if child is None:
                continue
            with contextlib.suppress(OSError):
                self._send(child, ["stop"])
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(self._kill_margin_s)
            self._reap(index, kill=True)


def _worker_process_main(argv: list[str]) -> None:
    """A worker process: run the tasks the parent sends, one at a time, on the main
    thread; a reader thread takes the parent's messages, so a cancel reaches the
    running handler's context at once."""
    become_subreaper()  # a handler's orphaned processes come to us, and die with us
    allow_shell = "--allow-shell" in argv
    imports = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--import"]
    # The protocol gets its own descriptors; a handler's print() goes to stderr and
    # its input() reads nothing, so neither can corrupt the conversation.
    to_parent = os.fdopen(os.dup(1), "wb")
    from_parent = os.fdopen(os.dup(0), "rb")
    os.dup2(2, 1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    registry = HandlerRegistry(allow_shell=allow_shell)
    for module in imports:
        registry.import_module(module)
    tasks: queue.SimpleQueue[list[Any] | None] = queue.SimpleQueue()
    current: list[HandlerContext] = []
    lock = threading.Lock()
    dying = threading.Lock()

    def parent_gone() -> None:
        # The runner is gone (killed, even by SIGKILL): its leases will be recovered
        # and run again, so this attempt must not go on beside the next one.  Kill
        # what it started, and die now; one thread does it (the other waits here for
        # the end), so that no thread's exit ends the process before the sweep does.
        with dying:
            kill_children()
            os._exit(1)

    def read() -> None:
        for line in from_parent:
            message = json.loads(line)
            if message[0] == "cancel":
                with lock:
                    for context in current:
                        context.cancelled.set()
            elif message[0] == "run":
                tasks.put(message[1:])
            else:
                tasks.put(None)  # "stop": finish the task in hand, then exit
                return
        parent_gone()  # end of file without "stop"

    threading.Thread(target=read, name="beaverq-child-reader", daemon=True).start()
    while True:
        message = tasks.get()
        if message is None:
            kill_children()  # a stop: what the handlers left running goes with us
            return
        handler, args_json, job_id, attempt, timeout_s, deadline = message
        context = HandlerContext(
            job_id=job_id, attempt=attempt, timeout_s=timeout_s, deadline=deadline
        )
        with lock:
            current[:] = [context]
        outcome = registry.run(handler, args_json, context)
        with lock:
            current.clear()
        # The handler's orphans that have ended came to us (the subreaper): reap them,
        # or a long-lived worker would collect a zombie, a pid, for each.  (A process
        # the handler started and left unwaited is reaped too: it has returned.)
        reap_exited()
        try:
            to_parent.write(
                json.dumps([outcome.ok, outcome.result_json, outcome.error]).encode() + b"\n"
            )
            to_parent.flush()
        except OSError:
            parent_gone()


if __name__ == "__main__":
    _worker_process_main(sys.argv[1:])
