"""The control channel: how a command reaches the queue, with or without a runner.

A ``beaverq run`` holds the data directory's lock for as long as it runs, so no other
process may open the log.  It therefore serves a Unix socket, ``control.sock`` in the
data directory (mode 0600: the local user only), and every other command talks to
it.  When no runner answers, the command opens the data directory itself, under the
lock, does its work durably, and closes it.  Both paths end in the same place:
``perform(target, op, params)``, which runs the operation's controller method from
one table, ``OPERATIONS`` (each operation: its method, its parameter names, the model
command it decides).

The protocol is one JSON line each way per connection::

    -> {"op": "cancel", "params": {"job_id": "j1"}}
    <- {"ok": true, "result": "cancelled"}      or      {"ok": false, "error": "..."}

An answer is sent only after what it reports is durable (the controller's R2), so a
client that reads ``"ok": true`` for an enqueue may tell its caller the job is safe.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import socket
import sys
import time
from collections.abc import Mapping
from typing import Any

import attrs

from beaverq.impl.runtime.clock import SystemClock
from beaverq.impl.runtime.controller import Controller
from beaverq.impl.runtime.errors import ControllerFailed, ControllerStopped
from beaverq.impl.runtime.handlers import HandlerRegistry
from beaverq.impl.runtime.read_models import job_detail, jobs_of, status_of
from beaverq.impl.runtime.workers import ThreadPool
from beaverq.impl.storage.fs import DataDirLocked, RealFileSystem, StorageError
from beaverq.impl.storage.storage import LOCK_NAME, Storage
from beaverq.impl.storage.verify import verify_data_dir
from beaverq.model import (
    Cancel,
    Command,
    Enqueue,
    PauseQueue,
    Recover,
    Rejected,
    Requeue,
    ResumeQueue,
    State,
    decide,
    evolve,
    initial_state,
)
from beaverq.model.errors import echo
from beaverq.model.limits import JSON_DEPTH_MAX

from .control_params import PARAMETERS, json_type
from .trust import Untrusted, check_data_dir, check_peer, check_socket_file

SOCKET_NAME = "control.sock"
LINE_BYTES_MAX = 256 * 1024 * 1024  # the longest answer a client reads (a long `jobs`)
#: How long a client waits for the answer once its request is sent: a runner answers
#: in milliseconds, or seconds when a large snapshot holds its lock.  The environment
#: variable ``BEAVERQ_ANSWER_WAIT_S`` may set another number of seconds.
ANSWER_WAIT_S_MAX = 60.0
ANSWER_WAIT_VARIABLE = "BEAVERQ_ANSWER_WAIT_S"
#: How long a command waits while the lock is held and no socket answers: a runner
#: still recovering its log, or another command holding the lock for its own short
#: turn.  After that it gives up and names the holder.
RUNNER_STARTING_WAIT_S = 10.0


class CommandFailed(Exception):
    """The command could not be done; the message is the one line the user sees."""


class RunnerBusy(CommandFailed):
    """The runner refused the connection before reading the request (too many at
    once): nothing was done, so the client may ask again."""


#: How a runner's refusal of an unread request begins (control_server.py).
BUSY = "busy: "


def socket_path(data_dir: str) -> str:
    return os.path.join(data_dir, SOCKET_NAME)


# -- Operations: one table, each to a controller method and a model command. ----------
# (Each parameter's check is declared in control_params.py, ``PARAMETERS``.)


@attrs.frozen
class Operation:
    """One operation of the protocol: the ``Controller`` method that does it (a read's
    is also ``StateView``'s), the names of its parameters in the method's order, and
    the model command it decides (None for a read).  A command other than ``Enqueue``
    is built from the parameters by name: they are its fields."""

    method: str
    params: tuple[str, ...]
    command: type[Command] | None
    optional: bool = False  # the parameters may be left out (None)


#: Every operation, once: what ``perform`` runs and what ``_check`` decides.
OPERATIONS: dict[str, Operation] = {
    "enqueue": Operation("enqueue_request", ("job",), Enqueue),
    "enqueue_batch": Operation("enqueue_batch", ("jobs",), Enqueue),
    "cancel": Operation("cancel", ("job_id",), Cancel),
    "requeue": Operation("requeue", ("job_id",), Requeue),
    "pause": Operation("pause", ("queue",), PauseQueue),
    "resume": Operation("resume", ("queue",), ResumeQueue),
    "status": Operation("status", (), None),
    "jobs": Operation("jobs", ("state", "queue", "limit"), None, optional=True),
    "show": Operation("show", ("job_id",), None),
}


def check_wiring(operations: Mapping[str, Operation]) -> None:
    """Refuse a half-wired table, naming the operation: a method the controller (or,
    for a read, ``StateView``) lacks, or a command whose fields are not the parameters.
    Run at import, so that such a table never serves a request."""
    for name, operation in operations.items():
        targets = [Controller] if operation.command is not None else [Controller, StateView]
        for target in targets:
            if not callable(getattr(target, operation.method, None)):
                raise TypeError(
                    f"operation {name!r} is half-wired: {target.__name__} has no "
                    f"method {operation.method!r}"
                )
        undeclared = [param for param in operation.params if param not in PARAMETERS]
        if undeclared:
            raise TypeError(
                f"operation {name!r} is half-wired: parameter {undeclared[0]!r} is not "
                "declared in PARAMETERS"
            )
        command = operation.command
        if command is not None and command is not Enqueue:
            fields = set(attrs.fields_dict(command)) - {"now_ms"}
            if fields != set(operation.params):
                raise TypeError(
                    f"operation {name!r} is half-wired: {command.__name__} takes "
                    f"{sorted(fields)}, the operation gives {sorted(operation.params)}"
                )


def operation_named(op: str) -> Operation:
    operation = OPERATIONS.get(op)
    if operation is None:
        raise ValueError(f"unknown operation {echo(op)}")
    return operation


def _arguments(op: str, operation: Operation, params: Mapping[str, Any]) -> list[Any]:
    """The method's arguments, from the request's parameters, in the table's order."""
    if not isinstance(params, Mapping):
        raise ValueError(f"{op}: params must be an object, got {json_type(params)}")
    unknown = sorted(str(name) for name in params if name not in operation.params)
    if unknown:
        takes = ", ".join(operation.params) or "no parameters"
        raise ValueError(f"{op}: unknown parameter {echo(unknown[0])} (it takes {takes})")
    arguments: list[Any] = []
    for name in operation.params:
        if name not in params and not operation.optional:
            raise ValueError(f"{op}: missing parameter {name!r}")
        value = params.get(name)
        if value is None and operation.optional:
            arguments.append(None)  # left out: the method's default
            continue
        try:
            arguments.append(PARAMETERS[name](value))
        except ValueError as error:
            raise ValueError(f"{op}: {name} {error}") from None
    return arguments


def perform(target: Any, op: str, params: Mapping[str, Any]) -> Any:
    """Run one operation on a ``Controller`` (or, for reads, a ``StateView``)."""
    operation = operation_named(op)
    return getattr(target, operation.method)(*_arguments(op, operation, params))


def _commands(op: str, params: Mapping[str, Any], now: int) -> list[Command]:
    """The model commands ``op`` decides, as the controller would make them at ``now``."""
    operation = operation_named(op)
    arguments = _arguments(op, operation, params)
    command = operation.command
    if command is None:
        return []
    if command is Enqueue:
        (requests,) = arguments
        batch = requests if isinstance(requests, list) else [requests]
        return [request.command(now) for request in batch]
    return [command(now_ms=now, **dict(zip(operation.params, arguments, strict=True)))]


def answer(target: Any, line: bytes) -> dict[str, Any]:
    """The runner's side: one request line in, one answer out; never raises for the
    request's content (a bad request is the client's error, not the runner's)."""
    try:
        try:
            request = json.loads(line)
        except RecursionError:  # the client's text, not a bug of ours: say what is wrong
            raise ValueError(
                "the request nests arrays and objects too deep to read (a job's args may "
                f"nest JSON_DEPTH_MAX={JSON_DEPTH_MAX} levels)"
            ) from None
        if (
            not isinstance(request, dict)
            or not isinstance(request.get("op"), str)
            or not set(request) <= {"op", "params"}
        ):
            raise ValueError('a request is {"op": ..., "params": {...}} and nothing else')
        result = perform(target, request["op"], request.get("params", {}))
    except (Rejected, ValueError, TypeError, ControllerStopped, ControllerFailed) as error:
        return {"ok": False, "error": str(error)}
    return {"ok": True, "result": result}


# -- The runner's side, serving the socket, is control_server.py. -----------------------


def _encode(message: Mapping[str, Any]) -> bytes:
    return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


# -- The client's side. ------------------------------------------------------------------


def request_runner(data_dir: str, op: str, params: Mapping[str, Any]) -> tuple[bool, Any]:
    """Ask the runner.  ``(False, None)`` when nothing listens on the socket;
    ``(True, result)`` when it answered; ``CommandFailed`` when it refused, or when
    the directory, the socket or the process answering is not the user's (trust.py:
    then nothing is sent)."""
    path = socket_path(data_dir)
    request = _encode({"op": op, "params": dict(params)})
    wait_s = answer_wait_s()
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with client:
        # With a timeout the socket does not block: a Unix socket's connect then fails
        # at once (EAGAIN) when the runner's backlog is full, where a blocking one
        # would wait for as long as the runner is stuck.
        client.settimeout(wait_s)
        try:
            check_data_dir(data_dir)
            if not check_socket_file(path):
                return False, None
            client.connect(path)
            check_peer(client, path)
        except Untrusted as untrusted:
            raise CommandFailed(str(untrusted)) from None
        except (FileNotFoundError, ConnectionRefusedError):
            return False, None
        except BlockingIOError:
            raise RunnerBusy(
                f"{BUSY}the runner's backlog of connections is full; the {op} was not sent"
            ) from None
        except OSError as error:
            raise CommandFailed(f"{path}: {error.strerror or error}") from None
        line = _exchange(client, op, request, wait_s)
    reply = _reply(line)
    if reply is None:
        # Sent, not answered: the runner stopped or crashed meanwhile.
        raise CommandFailed(unanswered(op, "the runner closed the connection without answering"))
    if not reply.get("ok"):
        refusal = str(reply.get("error"))
        raise (RunnerBusy if refusal.startswith(BUSY) else CommandFailed)(refusal)
    return True, reply.get("result")


def _exchange(client: socket.socket, op: str, request: bytes, wait_s: float) -> bytes:
    """Send the request, read the answer's line; a broken or silent runner is a
    ``CommandFailed`` that says what may have happened, never a traceback."""
    try:
        client.sendall(request)
    except TimeoutError:
        raise CommandFailed(
            unanswered(op, f"the runner did not take the request within {wait_s:g} s")
        ) from None
    except OSError:
        pass  # it hung up: perhaps after saying why ("busy"), which is read below
    try:
        with client.makefile("rb") as stream:
            return stream.readline(LINE_BYTES_MAX + 1)
    except TimeoutError:
        raise CommandFailed(
            unanswered(op, f"the runner did not answer within {wait_s:g} s")
        ) from None
    except OSError as error:  # ConnectionResetError: it died meanwhile
        why = f"the connection to the runner broke ({error.strerror or error})"
        raise CommandFailed(unanswered(op, why)) from None


def _reply(line: bytes) -> dict[str, Any] | None:
    """The runner's answer, or None for no (complete, well-formed) answer."""
    if not line.endswith(b"\n"):
        return None
    try:
        reply = json.loads(line)
    except ValueError:
        return None
    return reply if isinstance(reply, dict) and "ok" in reply else None


def unanswered(op: str, why: str) -> str:
    """What a client can say when its request went out and no answer came back: the
    runner may have done it before it died (or while it is stuck), so say how to look."""
    operation = OPERATIONS.get(op)
    if operation is not None and operation.command is None:
        return f"{why}; the {op} changed nothing: try again"
    if operation is not None and operation.command is Enqueue:
        what = "the job" if op == "enqueue" else "the batch (all or nothing)"
        return (
            f"{why}; {what} may or may not have been stored; check with the id or the "
            "idempotency key ('beaverq show ID', 'beaverq jobs')"
        )
    # A queue's pause shows in ``status``; a job's cancel or requeue in ``show ID``.
    check = "beaverq status" if op in ("pause", "resume") else "beaverq show ID"
    return f"{why}; the {op} may or may not have taken effect (check with '{check}')"


def answer_wait_s() -> float:
    """``ANSWER_WAIT_S_MAX``, or the seconds ``$BEAVERQ_ANSWER_WAIT_S`` names."""
    text = os.environ.get(ANSWER_WAIT_VARIABLE)
    if text is None or text == "":
        return ANSWER_WAIT_S_MAX
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise CommandFailed(f"{ANSWER_WAIT_VARIABLE}={text!r}: expected a number of seconds > 0")
    return value


def execute(data_dir: str, op: str, params: Mapping[str, Any]) -> Any:
    """Do ``op`` through the runner if one answers, else on the data directory itself."""
    deadline = time.monotonic() + RUNNER_STARTING_WAIT_S
    while True:
        try:
            answered, result = request_runner(data_dir, op, params)
        except RunnerBusy:  # refused before it was read: nothing was done, so ask again
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)
            continue
        if answered:
            return result
        try:
            return execute_locally(data_dir, op, params)
        except DataDirLocked as locked:
            # Someone holds the lock but no socket answers: a runner still starting
            # (recovering), or stopping, or a process that is not a runner at all.
            if time.monotonic() >= deadline:
                raise CommandFailed(
                    f"{locked}, which does not answer on {socket_path(data_dir)}"
                ) from None
        time.sleep(0.05)  # a runner that is recovering its log: look again shortly


class StateView:
    """The reads of a ``Controller``, on a state loaded without a runner."""

    def __init__(self, state: Any, recovery: dict[str, Any]) -> None:
        self._state = state
        self._recovery = recovery

    def status(self) -> dict[str, Any]:
        return status_of(self._state) | {
            "durable_lsn": self._state.last_lsn,
            "recovery": self._recovery,
            "runtime": None,  # no runner
        }

    def jobs(
        self, status: str | None = None, queue: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        return jobs_of(self._state, status, queue, limit)

    def show(self, job_id: str) -> dict[str, Any] | None:
        job = self._state.jobs.get(job_id)
        return None if job is None else job_detail(job)


def execute_locally(data_dir: str, op: str, params: Mapping[str, Any]) -> Any:
    """Without a runner: check ``op`` on a read-only load of the state; a read is
    answered from it, and a change that the model accepts is then done durably by a
    controller that holds the lock.  So a refused command (unknown job, bad number)
    changes no byte of the data directory, not even the lock file's pid."""
    operation = OPERATIONS.get(op)
    if operation is None:
        raise CommandFailed(f"unknown operation {echo(op)}")
    try:
        check_data_dir(data_dir)  # another user's directory: not even read
    except Untrusted as untrusted:
        raise CommandFailed(str(untrusted)) from None
    creating = operation.command is Enqueue
    if not os.path.isdir(data_dir) and not (creating and not os.path.exists(data_dir)):
        # Only an enqueue creates a data directory: anything else would leave an
        # empty one behind for a typo.
        raise CommandFailed(f"{data_dir}: no such data directory")
    started = time.monotonic()
    state = _read_state(data_dir) if os.path.isdir(data_dir) else initial_state()
    if operation.command is None:  # a read: no controller, so no Recover
        figures = {"seconds": time.monotonic() - started, "last_lsn": state.last_lsn}
        return _perform_or_fail(StateView(state, figures), op, params)
    if _check(state, op, params) == 0 and op in _DONE_WHEN_NOTHING_CHANGES:
        # Pausing a paused queue: opening the directory would still write (a new WAL
        # segment, every time) for a command that changes nothing.
        return None
    fs = RealFileSystem()
    try:  # fs.close() last: the API calls this in long-lived processes, so no fd leaks
        try:
            storage, state, report = Storage.open(fs, data_dir)
        except DataDirLocked:
            raise
        except (OSError, StorageError) as error:
            raise CommandFailed(f"{op} not done: {_located(error, data_dir)}") from None
        try:  # again: another user may have made the directory since the first check
            check_data_dir(data_dir)
        except Untrusted as untrusted:
            with contextlib.suppress(OSError, StorageError):
                storage.close()
            raise CommandFailed(f"{op} not done: {untrusted}") from None
        # A controller with a pool that is never started: no job runs here.  Recover
        # is decided first, as for any opener (a crashed runner's leases are abandoned).
        pool = ThreadPool(HandlerRegistry(), workers=1)
        try:
            controller = Controller(storage, state, SystemClock(), pool, report=report)
        except (OSError, StorageError, ControllerFailed) as error:
            with contextlib.suppress(OSError, StorageError):
                storage.close()
            raise CommandFailed(f"{op} not done: {_one_line(error)}") from None
        except BaseException:
            storage.close()
            raise
        try:
            result = _perform_or_fail(controller, op, params)
        except BaseException:
            # The command's own failure is the one to report, not an echo of it here.
            with contextlib.suppress(OSError, StorageError, ControllerFailed):
                controller.stop(grace_s=0.0)
            raise
        _close_after_success(controller, op)
        return result
    finally:
        fs.close()


def _close_after_success(controller: Controller, op: str) -> None:
    """Close the directory after ``op`` is durable.  Nothing that fails now (the final
    snapshot, the log's rotation after it) can undo ``op``: it is a warning, never
    the command's failure, or a producer told "failed" would retry and enqueue twice
    (docs/security.md, "Full disks")."""
    try:
        controller.stop(grace_s=0.0)
    except (OSError, StorageError, ControllerFailed) as error:
        _warn(f"the {op} is durable, but closing the data directory failed: {_one_line(error)}")
        return
    snapshot_error = controller.stats.snapshot_error_last
    if snapshot_error is not None:
        _warn(
            f"the {op} is durable, but the snapshot after it failed ({snapshot_error}); "
            "nothing is lost: the next opening replays the log"
        )


def _warn(message: str) -> None:
    """A warning on stderr: the command succeeded, and something the operator should
    know about did not (stdout stays the command's answer alone)."""
    print(f"beaverq: warning: {message}", file=sys.stderr, flush=True)


def _read_state(data_dir: str) -> State:
    """The state, read without writing anything, under the data directory's lock
    (taken without recording our pid, and released before returning)."""
    lock_path = os.path.join(data_dir, LOCK_NAME)
    try:
        descriptor = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        descriptor = None  # never opened by beaverq: nothing to race with
    except OSError as error:
        raise CommandFailed(f"{lock_path}: {error.strerror or error}") from None
    try:
        if descriptor is not None:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(descriptor, 32, 0).decode("ascii", "replace").strip()
                raise DataDirLocked(
                    f"{lock_path}: the data directory is in use by process {holder or 'unknown'}"
                ) from None
        fs = RealFileSystem()
        try:
            report = verify_data_dir(fs, data_dir)
        except (OSError, StorageError) as error:
            raise CommandFailed(f"{data_dir}: {_one_line(error)}") from None
        finally:
            fs.close()
    finally:
        if descriptor is not None:
            os.close(descriptor)
    if report.state is None:
        raise CommandFailed(f"{data_dir}: {report.errors[0] if report.errors else 'unreadable'}")
    return report.state


#: Operations whose answer, when they decide no event, is None: nothing to do, and so
#: nothing to write (``execute_locally`` does not open the directory for them).
_DONE_WHEN_NOTHING_CHANGES = frozenset({"pause", "resume"})


def _check(state: State, op: str, params: Mapping[str, Any]) -> int:
    """Decide the command(s) on ``state`` (pure): raise ``CommandFailed`` on refusal;
    return how many events opening and doing them would write."""
    events = 0
    try:
        now = SystemClock().now_ms()
        # Opening decides Recover first (the controller's R5: a dead runner's leases
        # are abandoned, and counted), so the check does too: it must refuse exactly
        # what the opened directory would, or a refusal would come after the writes
        # of opening (LOCK, a WAL segment, a snapshot).
        for command in [Recover(now_ms=now), *_commands(op, params, now)]:
            for event in decide(state, command):
                state = evolve(state, event)
                events += 1
    except (Rejected, ValueError, TypeError) as error:
        raise CommandFailed(_one_line(error)) from None
    return events


def _perform_or_fail(target: Any, op: str, params: Mapping[str, Any]) -> Any:
    try:
        return perform(target, op, params)
    except (Rejected, ValueError, TypeError, ControllerStopped, ControllerFailed) as error:
        raise CommandFailed(_one_line(error)) from None


def _located(error: BaseException, data_dir: str) -> str:
    """The error in one line, naming where: a bare ``OSError`` (a failed write to the
    lock file, say) names no file, so the data directory is named instead."""
    unnamed = isinstance(error, OSError) and error.filename is None
    if unnamed and not isinstance(error, StorageError):
        return f"{data_dir}: {getattr(error, 'strerror', None) or _one_line(error)}"
    return _one_line(error)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


check_wiring(OPERATIONS)
