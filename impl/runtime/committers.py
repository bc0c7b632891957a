"""Committers: how the events the controller appends become durable.

A committer frames events in LSN order (``append``, under the controller's lock, R1)
and makes them durable (``wait_durable``, outside it, R2).  Two kinds: the group
commit (impl/storage/group_commit.py, a flusher thread sharing one fsync among
many appends), and ``InlineCommit``, which flushes on the waiting thread, for
deterministic runs and tests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from beaverq.impl.storage.group_commit import BatchLog, GroupCommit
from beaverq.model import Event, State

BatchCallback = Callable[[int, float], None]


class LogStore(BatchLog[Any], Protocol):
    """What the controller writes its events to: the local ``Storage`` (WAL and
    snapshots), or in a cluster the etcd log (impl/cluster/log_writer.py)."""

    def flush(self) -> int: ...

    def take_snapshot(self, state: State) -> str: ...

    def close(self) -> None: ...


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

    def __init__(self, storage: LogStore) -> None:
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


CommitterFactory = Callable[[LogStore], Committer]


def group_commit_factory(events_max: int = 1_000, delay_s: float = 0.002) -> CommitterFactory:
    def make(storage: LogStore) -> Committer:
        return GroupCommit(storage, events_max=events_max, delay_s=delay_s)

    return make
