"""Group commit: many producers, one fsync per batch.

The original design's optimisation: flush after ``events_max`` events or
``delay_s`` seconds, whichever comes first.  Producers frame their events under
the lock (cheap CPU work, in LSN order) and then wait, without the lock, until
the durable LSN reaches theirs.  One flusher thread takes the pending batch under
the lock, writes and fsyncs it *without* the lock (so the next batch keeps
filling), and publishes the new durable LSN under the lock again.

Lock order (the original design's deadlock rule): a caller may hold its own lock
when it calls ``append``; this module never calls out while holding ``_lock``
except into the WAL's framing side, which calls nothing else.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Generic, Protocol, TypeVar

from beaverq.model import Event
from beaverq.model.errors import BrokenInvariant

from .wal import WalFailed


class BatchOfEvents(Protocol):
    @property
    def events(self) -> int: ...


BatchT = TypeVar("BatchT", bound=BatchOfEvents)


class BatchLog(Protocol[BatchT]):
    """What group commit needs of a log: ``Storage`` (the local WAL) is one, and the
    cluster's etcd log writer (impl/cluster/log_writer.py) another.  Framing
    (``append``, ``take_batch``, ``complete_batch``) happens under group commit's lock;
    ``write_batch`` (the slow, durable part) outside it, and raises ``WalFailed``."""

    def append(self, events: Iterable[Event]) -> None: ...

    def take_batch(self) -> BatchT | None: ...

    def write_batch(self, batch: BatchT, /) -> None: ...

    def complete_batch(self, batch: BatchT, /) -> None: ...

    @property
    def pending_events(self) -> int: ...

    @property
    def durable_lsn(self) -> int: ...

    @property
    def appended_lsn(self) -> int: ...


class GroupCommit(Generic[BatchT]):
    def __init__(
        self,
        storage: BatchLog[BatchT],
        *,
        events_max: int = 1_000,
        delay_s: float = 0.002,
        clock: Callable[[], float] = time.monotonic,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if not (events_max >= 1):
            raise BrokenInvariant("broken invariant: events_max >= 1")
        if not (delay_s >= 0):
            raise BrokenInvariant("broken invariant: delay_s >= 0")
        self._storage = storage
        self._events_max = events_max
        self._delay_s = delay_s
        self._clock = clock
        # (events in the batch, seconds to write and fsync it), on the flusher thread
        # once the batch is durable.  Public: the controller sets it (Committer).
        self.on_batch = on_batch
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._first_pending_at: float | None = None
        self._closing = False
        self._failure: WalFailed | None = None
        self._thread = threading.Thread(target=self._run, name="beaverq-group-commit", daemon=True)
        self._thread.start()

    # -- producers ----------------------------------------------------------------------

    def append(self, events: Iterable[Event]) -> int:
        """Frame ``events``; return the LSN to wait for (not durable yet)."""
        with self._lock:
            self._raise_if_failed()
            if self._closing:
                raise BrokenInvariant("append after close")
            self._storage.append(events)
            pending = self._storage.pending_events
            if self._first_pending_at is None and pending:
                # The first event of a batch starts the flusher's delay timer.
                self._first_pending_at = self._clock()
                self._changed.notify_all()
            elif pending >= self._events_max:
                self._changed.notify_all()
            return self._storage.appended_lsn

    def wait_durable(self, lsn: int, timeout_s: float | None = None) -> None:
        """Block until ``lsn`` is durable.  Raises ``WalFailed`` or ``TimeoutError``."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._lock:
            while self._storage.durable_lsn < lsn:
                self._raise_if_failed()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"LSN {lsn} not durable within {timeout_s} s")
                self._changed.wait(remaining)

    def append_and_wait(self, events: Iterable[Event], timeout_s: float | None = None) -> int:
        lsn = self.append(events)
        self.wait_durable(lsn, timeout_s)
        return lsn

    @property
    def durable_lsn(self) -> int:
        with self._lock:
            return self._storage.durable_lsn

    def close(self) -> None:
        """Flush what is pending, stop the flusher thread, and wait for it."""
        with self._lock:
            self._closing = True
            self._changed.notify_all()
        self._thread.join()
        self._raise_if_failed()

    # -- the flusher ----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                batch = self._next_batch()
                if batch is None:
                    return
            started = time.perf_counter()
            try:
                self._storage.write_batch(batch)
            except WalFailed as failure:
                with self._lock:
                    self._failure = failure
                    self._changed.notify_all()
                return
            seconds = time.perf_counter() - started
            with self._lock:
                self._storage.complete_batch(batch)
                self._changed.notify_all()
            on_batch = self.on_batch
            if on_batch is not None:
                on_batch(batch.events, seconds)

    def _next_batch(self) -> BatchT | None:
        """Wait (holding the lock) until a batch is due; None when closing with nothing left."""
        while True:
            pending = self._storage.pending_events
            if pending:
                if self._first_pending_at is None:
                    raise BrokenInvariant("broken invariant: self._first_pending_at is not None")
                due_at = self._first_pending_at + self._delay_s
                if pending >= self._events_max or self._closing or self._clock() >= due_at:
                    self._first_pending_at = None
                    return self._storage.take_batch()
                self._changed.wait(max(0.0, due_at - self._clock()))
            elif self._closing:
                return None
            else:
                self._changed.wait()

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise WalFailed(f"the write-ahead log failed: {self._failure}")
