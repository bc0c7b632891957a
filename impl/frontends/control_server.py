"""The runner's side of the control socket: ``ControlServer`` serves ``control.sock``.

A thread accepts connections; each connection gets a thread of its own, so that a slow
answer (an enqueue waiting for its fsync) holds up no other client.  The protocol and
its operations are in control.py; this module is about never ceasing to answer, for
whatever the clients do (docs/security.md, "Stuck and hostile clients"):

* a request is one line of at most ``REQUEST_BYTES_MAX`` bytes, and all the connections
  together buffer at most ``REQUESTS_BUFFERED_BYTES_MAX`` bytes of unanswered requests:
  a client that never sends its newline costs a bounded amount of memory;
* at most ``CONNECTIONS_MAX`` connections are served at once (and never more than a
  quarter of the process's open-file limit, so idle clients cannot take the
  descriptors the WAL and the snapshots need); the next one is told the runner is busy
  and closed at once, without a thread;
* a client has ``REQUEST_S_MAX`` from its connection to its request's newline, and
  ``ANSWER_S_MAX`` to take the answer; then the runner hangs up on it;
* an error from ``accept`` (EMFILE: no descriptor left; ECONNABORTED; ENOMEM) is
  transient: the accept thread waits ``ACCEPT_RETRY_S`` and accepts again.  It ends only
  when ``close`` asks it to, and then answers "busy" to the connections still waiting
  (in the backlog, or without a byte of their request sent), so that their clients ask
  again (a "busy" answer comes before a request is read: nothing was done, so asking
  again is safe); ``close`` lets the others be answered, so a stop cuts no client.
"""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import threading
import time
from typing import Any

from beaverq.model.errors import BrokenInvariant

from .control import BUSY, _encode, _one_line, answer, socket_path

#: The longest request line, newline included; a batch of some 400,000 small jobs fits.
REQUEST_BYTES_MAX = 32 * 1024 * 1024
#: The bytes of all the requests being read at once, so two large requests fit.
REQUESTS_BUFFERED_BYTES_MAX = 2 * REQUEST_BYTES_MAX
#: Connections served at once; the next is answered "busy" and closed.
CONNECTIONS_MAX = 64
#: From a connection's accept to its request's newline.
REQUEST_S_MAX = 5.0
#: For the client to take the whole answer once it is ready.
ANSWER_S_MAX = 10.0
#: After a failed accept (EMFILE ...), before the next one.
ACCEPT_RETRY_S = 0.05
#: How often the accept thread, and a connection still waiting for its request, look
#: whether ``close`` has asked them to end.
ACCEPT_POLL_S = 0.1
#: The listener's backlog: connections the kernel holds before the accept thread sees them.
BACKLOG = 64
#: How much one recv may take.
_CHUNK_BYTES = 64 * 1024


class RequestRefused(Exception):
    """The request cannot be read; the message is the answer's error."""


class _ByteBudget:
    """The bytes all connections may buffer at once (a counter under a lock)."""

    def __init__(self, bytes_max: int) -> None:
        self._free = bytes_max
        self._lock = threading.Lock()

    def take(self, size: int) -> bool:
        with self._lock:
            if size > self._free:
                return False
            self._free -= size
            return True

    def give(self, size: int) -> None:
        with self._lock:
            self._free += size


def connections_max() -> int:
    """``CONNECTIONS_MAX``, or a quarter of the open-file limit if that is fewer."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return CONNECTIONS_MAX
    return max(1, min(CONNECTIONS_MAX, soft // 4))


class ControlServer:
    """Serves ``control.sock`` for one controller (or, for reads, any target that has
    the reads' methods) until ``close``."""

    def __init__(self, target: Any, data_dir: str) -> None:
        self._target = target
        self._path = socket_path(data_dir)
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._inode: int | None = None
        self._closing = threading.Event()
        self._connections_max = connections_max()
        self._slots = threading.BoundedSemaphore(self._connections_max)
        self._budget = _ByteBudget(REQUESTS_BUFFERED_BYTES_MAX)
        #: Failed accepts so far (EMFILE and the like): each was waited out, none fatal.
        self.accept_errors = 0

    @property
    def path(self) -> str:
        return self._path

    def start(self) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Bound under a temporary name and chmod-ed before it is renamed into place,
        # so the socket is never reachable with the umask's looser mode.  A socket a
        # crashed runner left behind is replaced by the rename (we hold the lock).
        temporary = f"{self._path}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        try:
            listener.bind(temporary)
            os.chmod(temporary, 0o600)
            listener.listen(BACKLOG)
            os.rename(temporary, self._path)
        except BaseException:
            listener.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        self._inode = os.stat(self._path).st_ino
        self._listener = listener
        self._thread = threading.Thread(target=self._accept, name="beaverq-control", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop accepting and remove the socket (only if it is still ours)."""
        listener, self._listener = self._listener, None
        if listener is None:
            return
        # The name goes first: no client finds the socket after this, and those
        # already in the backlog are answered by the accept thread's drain.
        with contextlib.suppress(OSError):
            if os.stat(self._path).st_ino == self._inode:
                os.unlink(self._path)
        self._closing.set()
        if self._thread is not None:
            self._thread.join()
        listener.close()
        self._wait_for_connections()

    def _wait_for_connections(self) -> None:
        """Let the connections being served finish, so that none is cut (reset) by
        the process's exit: one that has sent nothing is told "busy" within
        ``ACCEPT_POLL_S``, the others are answered (the controller, stopped by now,
        refuses at once), each within its bounds, so this wait is bounded too."""
        deadline = time.monotonic() + REQUEST_S_MAX + ANSWER_S_MAX
        for _ in range(self._connections_max):  # every slot free: no one served
            if not self._slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
                return

    def _accept(self) -> None:
        listener = self._listener
        if listener is None:
            raise BrokenInvariant("broken invariant: listener is not None")
        listener.settimeout(ACCEPT_POLL_S)  # to see close()'s request in good time
        while not self._closing.is_set():
            try:
                connection, _address = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                # Out of descriptors (EMFILE), or a client gone before we took it:
                # nothing wrong with the listener.  Waiting lets a descriptor free up.
                self.accept_errors += 1
                self._closing.wait(ACCEPT_RETRY_S)
                continue
            self._dispatch(connection)
        self._drain(listener)

    def _drain(self, listener: socket.socket) -> None:
        """Answer "busy" to the connections left in the backlog once the socket's name
        is gone (closing would reset them, and an enqueue's client could not tell
        whether it was stored): their clients ask again, find no socket, and do their
        command on the data directory once this runner has let go of it."""
        listener.setblocking(False)
        for _ in range(2 * BACKLOG):  # the backlog holds about BACKLOG: bounded anyway
            try:
                connection, _address = listener.accept()
            except OSError:  # BlockingIOError: the backlog is empty
                return
            _refuse_busy(connection, "the runner is stopping")

    def _dispatch(self, connection: socket.socket) -> None:
        """A thread for ``connection`` if a slot is free, else "busy" and close it."""
        if not self._slots.acquire(blocking=False):
            _refuse_busy(
                connection,
                f"the runner serves {self._connections_max} connections at once (CONNECTIONS_MAX)",
            )
            return
        try:
            threading.Thread(
                target=self._serve, args=(connection,), name="beaverq-control-conn", daemon=True
            ).start()
        except RuntimeError:  # no thread can be started now: as busy as can be
            self._slots.release()
            _refuse_busy(connection, "the runner cannot start a thread for another connection")

    def _serve(self, connection: socket.socket) -> None:
        try:
            with connection:
                try:
                    line = self._read_request(connection)
                except RequestRefused as refused:
                    reply: dict[str, Any] | None = {"ok": False, "error": str(refused)}
                except OSError:  # the client left, or took too long: nothing to tell
                    reply = None
                else:
                    reply = None if line is None else self._answer(line)
                if reply is not None:
                    _send(connection, _encode(reply), ANSWER_S_MAX)
        finally:
            self._slots.release()

    def _read_request(self, connection: socket.socket) -> bytes | None:
        """The request line (None if the client sent nothing), read within
        ``REQUEST_S_MAX`` and the byte budgets; ``RequestRefused`` says why not."""
        deadline = time.monotonic() + REQUEST_S_MAX
        chunks: list[bytes] = []
        size = 0
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RequestRefused(f"request not received within {REQUEST_S_MAX:g} s")
                if size == 0 and self._closing.is_set():  # nothing read: safe to ask again
                    raise RequestRefused(f"{BUSY}the runner is stopping; nothing was done")
                # In slices, so that a client that has sent nothing yet sees a stop soon.
                connection.settimeout(min(remaining, ACCEPT_POLL_S))
                try:
                    chunk = connection.recv(_CHUNK_BYTES)
                except TimeoutError:
                    continue
                if not chunk:
                    return None if size == 0 else b"".join(chunks)  # EOF ends the line too
                if size + len(chunk) > REQUEST_BYTES_MAX:
                    raise RequestRefused(
                        f"request too large: over REQUEST_BYTES_MAX={REQUEST_BYTES_MAX} bytes"
                    )
                if not self._budget.take(len(chunk)):
                    raise RequestRefused(
                        f"{BUSY}the runner is reading REQUESTS_BUFFERED_BYTES_MAX="
                        f"{REQUESTS_BUFFERED_BYTES_MAX} bytes of requests; nothing was done"
                    )
                size += len(chunk)
                end = chunk.find(b"\n")
                if end >= 0:  # one line per connection: what follows it is ignored
                    chunks.append(chunk[:end])
                    return b"".join(chunks)
                chunks.append(chunk)
        finally:
            self._budget.give(size)

    def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            return answer(self._target, line)
        except Exception as error:  # a bug answering one request: say so, serve on
            return {"ok": False, "error": f"internal error: {_one_line(error)}"}


def _send(connection: socket.socket, data: bytes, timeout_s: float) -> None:
    with contextlib.suppress(OSError):  # the client left, or does not read: nothing to tell
        connection.settimeout(timeout_s)
        connection.sendall(data)


def _refuse_busy(connection: socket.socket, reason: str) -> None:
    """Tell a connection over the limit so, without blocking the accept thread: the
    short answer fits the socket's buffer, or is dropped."""
    with connection:
        refusal = f"{BUSY}{reason}; nothing was done"
        _send(connection, _encode({"ok": False, "error": refusal}), 0.0)
