"""Handlers: the code a job names, and the registry a runner is started with.

A job's ``handler`` is a name.  A runner executes only the handlers it was started
with (the safety rule of issue 4): the built-ins ``noop``, ``sleep`` and ``fail``
always; ``shell`` only with ``allow_shell=True`` (``--allow-shell``); user handlers
only from modules imported on purpose (``--import MODULE``).  A name the registry
does not hold never reaches ``import``: the job fails with an error naming what
this runner has, and the runner carries on.

A handler is a function ``(args, context) -> result``:

``args``
    the job's arguments, parsed from its JSON text;
``context``
    a :class:`HandlerContext`: ``job_id``, ``attempt``, the attempt's deadline and
    a ``cancelled`` event set on shutdown.  Long handlers should wait on
    ``context.wait(seconds)`` instead of ``time.sleep`` so that they stop when asked;
``result``
    any JSON-able value (dict, list, str, int, float, bool, None); it becomes the
    job's ``result_json``.  A value JSON cannot encode, NaN included, fails the
    attempt with an error that says so.

Raising fails the attempt: :class:`JobFailure` with exactly its message, any other
exception as ``"<handler>: <Type>: <message>"``.

User handlers.  ``registry.import_module("myapp.tasks")`` imports the module and
registers its handlers, found in either (or both) of two ways:

* a function ``register(registry)`` in the module, which calls
  ``registry.add(name, function)`` for each handler, under any names it likes;
* functions marked with the :func:`handler` decorator, registered under
  ``"myapp.tasks:function_name"`` (or the name given to the decorator).

A module that provides neither is refused: importing it would register nothing,
which is almost certainly a typo in ``--import``.

``shell`` (``{"argv": [...]}``) runs a program without a shell in between.  Exit
status 0 is success (the result holds the status and the tail of stdout); anything
else fails the attempt with the status and the tail of stderr.  The program sees
``BEAVERQ_JOB_ID`` and ``BEAVERQ_ATTEMPT``.  It starts under an attempt keeper
(attempt_keeper.py), in its own process group, and when the attempt ends in any way
(at its deadline, on shutdown, after a normal exit, or because the runner or worker
process that started it died, SIGKILL included) the keeper kills that group and,
on Linux, every process the program started, even one that left the group with
``setsid``: no process a job started outlives its attempt (docs/security.md).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import IO, Any

import attrs

from beaverq.model import limits
from beaverq.model.validation import check_json

from . import attempt_keeper
from .handler_modules import import_named

#: How often a waiting ``shell`` handler looks at its deadline and the cancel flag.
SHELL_POLL_S = 0.02
#: How much of a program's stdout (result) or stderr (error) is kept, in bytes.
SHELL_OUTPUT_TAIL_BYTES = 2_000

HandlerFunction = Callable[[Any, "HandlerContext"], Any]

_MARK = "__beaverq_handler__"


class JobFailure(Exception):
    """Raise from a handler to fail the attempt with exactly this message."""


@attrs.frozen
class Outcome:
    """How an attempt ended, as the handler saw it: a result, or an error."""

    ok: bool
    result_json: str | None = None  # JSON text, when ok
    error: str | None = None  # one readable message, when not ok

    @classmethod
    def success(cls, result_json: str) -> Outcome:
        return cls(True, result_json, None)

    @classmethod
    def failure(cls, error: str) -> Outcome:
        return cls(False, None, error)


@attrs.define
class HandlerContext:
    """What a running handler may know about its attempt."""

    job_id: str
    attempt: int
    timeout_s: float
    # On ``time.monotonic()``: handlers run in real time even in tests, so the pool
    # measures them on the real clock.
    deadline: float
    cancelled: threading.Event = attrs.Factory(threading.Event)

    def remaining_s(self) -> float:
        return self.deadline - time.monotonic()

    def wait(self, seconds: float) -> bool:
        """Wait ``seconds``, or less if cancelled or the deadline comes first.
        True if the whole time passed."""
        end = time.monotonic() + seconds
        while True:
            if self.cancelled.is_set():
                return False
            now = time.monotonic()
            if now >= end:
                return True
            if now >= self.deadline:
                return False
            self.cancelled.wait(min(end, self.deadline) - now)


def handler(name: str | None = None) -> Callable[[HandlerFunction], HandlerFunction]:
    """Mark a module-level function as a handler, for ``HandlerRegistry.import_module``.

    Registered as ``"<module>:<function>"`` unless ``name`` is given.  The decorator
    only marks the function: nothing is registered until a runner imports the
    module on purpose.
    """

    def mark(function: HandlerFunction) -> HandlerFunction:
        setattr(function, _MARK, name or f"{function.__module__}:{function.__qualname__}")
        return function

    return mark


class HandlerRegistry:
    """The handlers one runner executes, by name."""

    def __init__(self, *, allow_shell: bool = False) -> None:
        self._handlers: dict[str, HandlerFunction] = {}
        self.allow_shell = allow_shell
        self.imported: list[str] = []  # modules, in import order (a process pool replays it)
        # Handlers added by ``add`` directly, not through an import: a worker process
        # cannot rebuild those from (allow_shell, imported).
        self.added_directly: list[str] = []
        self._importing = True  # the built-ins count as rebuilt by the constructor
        self.add("noop", _noop)
        self.add("sleep", _sleep)
        self.add("fail", _fail)
        if allow_shell:
            self.add("shell", _shell)
        self._importing = False

    def add(self, name: str, function: HandlerFunction) -> None:
        if not isinstance(name, str) or not name or any(c.isspace() for c in name):
            raise ValueError(f"handler name must be a non-empty token, got {name!r}")
        if len(name.encode("utf-8", "surrogatepass")) > limits.HANDLER_NAME_BYTES_MAX:
            raise ValueError(f"handler name {name!r} is longer than HANDLER_NAME_BYTES_MAX")
        if not callable(function):
            raise TypeError(f"handler {name!r} must be callable, got {function!r}")
        if name in self._handlers:
            raise ValueError(f"handler {name!r} is already registered")
        self._handlers[name] = function
        if not self._importing:
            self.added_directly.append(name)

    def names(self) -> list[str]:
        return sorted(self._handlers)

    def get(self, name: str) -> HandlerFunction | None:
        return self._handlers.get(name)

    def import_module(self, module_name: str) -> list[str]:
        """Import ``module_name`` (a module name, found as ``python -m`` would, or a
        ``.py`` file's path: handler_modules.py) and register its handlers; return
        their names."""
        module_name, module = import_named(module_name)
        before = set(self._handlers)
        self._importing = True
        try:
            register = getattr(module, "register", None)
            if callable(register) and getattr(register, _MARK, None) is None:
                register(self)
            for value in list(vars(module).values()):
                name = getattr(value, _MARK, None)
                # Only functions defined here: a marked function the module merely
                # imported belongs to its own module's --import.
                if isinstance(name, str) and getattr(value, "__module__", None) == module.__name__:
                    self.add(name, value)
        finally:
            self._importing = False
        added = sorted(set(self._handlers) - before)
        if not added:
            raise ValueError(
                f"module {module_name!r} registers no handlers: give it a function "
                "register(registry) or mark functions with @beaverq.impl.runtime.handlers.handler()"
            )
        self.imported.append(module_name)
        return added

    def run(self, name: str, args_json: str, context: HandlerContext) -> Outcome:
        """Run one attempt; never raises for anything the handler does."""
        function = self._handlers.get(name)
        if function is None:
            return Outcome.failure(self.unknown_handler_error(name))
        try:
            args = json.loads(args_json)
        except ValueError as error:  # the model checked it; kept for direct callers
            return Outcome.failure(f"{name}: args are not valid JSON: {error}")
        try:
            value = function(args, context)
        except JobFailure as failure:
            return Outcome.failure(str(failure) or f"{name}: failed")
        except (Exception, SystemExit) as error:
            # SystemExit too: a handler calling sys.exit() must not end a worker thread.
            return Outcome.failure(f"{name}: {type(error).__name__}: {error}")
        return _outcome_of_result(name, value)

    def unknown_handler_error(self, name: str) -> str:
        hints = []
        if name == "shell":
            hints.append("start the runner with --allow-shell to run shell jobs")
        elif ":" in name:
            module = name.split(":", 1)[0]
            hints.append(f"start the runner with --import {module} to register it")
        hint = f" ({'; '.join(hints)})" if hints else ""
        return f"unknown handler {name!r}: this runner has {', '.join(self.names())}{hint}"


def _outcome_of_result(name: str, value: Any) -> Outcome:
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    except Exception as error:
        # TypeError, ValueError (NaN), RecursionError (nested too deeply), and whatever
        # a container of the handler's own raises when the encoder reads it: all end
        # the attempt.  Escaping, it would end the worker thread and hang the lease.
        return Outcome.failure(
            f"{name}: the result is not JSON-able ({error}); return a dict, list, str, "
            "int, finite float, bool or None"
        )
    # The model's own check: a result the model would refuse fails here, clearly.
    problem = check_json("result_json", text, limits.RESULT_JSON_BYTES_MAX, "RESULT_JSON_BYTES_MAX")
    if problem is not None:
        return Outcome.failure(f"{name}: the result was refused: {problem[1]}")
    return Outcome.success(text)


# -- Built-ins. --------------------------------------------------------------------------


def _noop(args: Any, context: HandlerContext) -> None:
    return None


def _sleep(args: Any, context: HandlerContext) -> dict[str, float]:
    seconds = args.get("seconds") if isinstance(args, dict) else None
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, (int, float))
        or not math.isfinite(seconds)
        or seconds < 0
    ):
        raise JobFailure(f'sleep: args must be {{"seconds": number >= 0}}, got {args!r}')
    if context.wait(seconds):
        return {"slept": seconds}
    if context.cancelled.is_set():
        raise JobFailure("sleep: interrupted by shutdown")
    raise JobFailure(f"sleep: deadline of {context.timeout_s:g} s reached before {seconds:g} s")


def _fail(args: Any, context: HandlerContext) -> None:
    message = args.get("message") if isinstance(args, dict) else None
    raise JobFailure(message if isinstance(message, str) and message else "fail: failed")


def _shell(args: Any, context: HandlerContext) -> dict[str, Any]:
    argv = args.get("argv") if isinstance(args, dict) else None
    if (
        not isinstance(argv, list)
        or not argv
        or not all(isinstance(part, str) and "\0" not in part for part in argv)
    ):
        raise JobFailure(f'shell: args must be {{"argv": [program, arg, ...]}}, got {args!r}')
    env = dict(os.environ)
    env["BEAVERQ_JOB_ID"] = context.job_id
    env["BEAVERQ_ATTEMPT"] = str(context.attempt)
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        # Files, not pipes: a background process that keeps a pipe open would make
        # reading it block past the program's exit.
        keeper, status_pipe = _start_keeper(argv, stdout, stderr, env)
        try:
            ending = _wait_for(keeper, context)
        finally:
            # Whatever happened (exit, deadline, shutdown, an exception here), closing
            # the keeper's stdin ends the attempt: the keeper kills the program's
            # process group and every process re-parented to it, then exits.
            _stop_keeper(keeper)
        with status_pipe:
            report = _keeper_report(status_pipe.read())
        if "error" in report:
            raise JobFailure(f"shell: cannot start {argv[0]!r}: {report['error']}")
        if ending == "deadline":
            raise JobFailure(
                f"shell: {argv[0]} timed out after {context.timeout_s:g} s; "
                "its process group was killed"
            )
        if ending == "cancelled":
            raise JobFailure(f"shell: {argv[0]} interrupted by shutdown; process group killed")
        status = report.get("status")
        if not isinstance(status, int):
            raise JobFailure(f"shell: {argv[0]}: its keeper process died without reporting")
        if status != 0:
            how = f"killed by signal {-status}" if status < 0 else f"exited with status {status}"
            tail = _tail(stderr)
            raise JobFailure(f"shell: {argv[0]} {how}" + (f": {tail}" if tail else ""))
        return {"exit_status": 0, "stdout": _tail(stdout)}


#: The keeper's program (attempt_keeper.py): run as a file, with ``-I -S``, so that it
#: imports nothing from the working directory, the environment or site-packages.
_KEEPER = attempt_keeper.__file__
#: How long a keeper may take to kill its program's processes once told to.
KEEPER_STOP_S = 10.0


def _start_keeper(
    argv: list[str], stdout: IO[bytes], stderr: IO[bytes], env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
    """Start ``argv`` under an attempt keeper; its report comes on the returned pipe."""
    status_read, status_write = os.pipe()
    try:
        keeper = subprocess.Popen(
            [sys.executable, "-I", "-S", _KEEPER, str(status_write), *argv],
            stdin=subprocess.PIPE,
            stdout=stdout,
            stderr=stderr,
            env=env,
            start_new_session=True,  # no terminal signal reaches it: the handler decides
            close_fds=True,
            pass_fds=(status_write,),
        )
    except BaseException:
        os.close(status_read)
        raise
    finally:
        os.close(status_write)
    return keeper, os.fdopen(status_read, "rb")


def _stop_keeper(keeper: subprocess.Popen[bytes]) -> None:
    if keeper.stdin is not None:
        with contextlib.suppress(OSError):
            keeper.stdin.close()
    try:
        keeper.wait(KEEPER_STOP_S)
    except subprocess.TimeoutExpired:  # a keeper that does not stop: its group goes
        kill_process_group(keeper.pid)
        keeper.wait()


def _keeper_report(text: bytes) -> dict[str, Any]:
    try:
        report = json.loads(text)
    except ValueError:
        return {}
    return report if isinstance(report, dict) else {}


def _wait_for(process: subprocess.Popen[bytes], context: HandlerContext) -> str:
    """Wait for ``process`` to exit; "exited", or "deadline"/"cancelled" (still running)."""
    while True:
        if context.cancelled.is_set():
            return "cancelled"
        remaining = context.remaining_s()
        if remaining <= 0:
            return "deadline"
        try:
            process.wait(timeout=min(remaining, SHELL_POLL_S))
        except subprocess.TimeoutExpired:
            continue
        return "exited"


def kill_process_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone
        os.killpg(pgid, signal.SIGKILL)


def _tail(file: IO[bytes]) -> str:
    size = file.seek(0, os.SEEK_END)
    file.seek(max(0, size - SHELL_OUTPUT_TAIL_BYTES))
    return file.read().decode("utf-8", "replace").strip()
