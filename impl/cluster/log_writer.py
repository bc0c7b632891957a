"""The leader's side of the etcd log, shaped as the controller's ``LogStore``.

The controller and group commit are the single-node ones, unchanged: they frame
events under the controller's lock (R1), and a flusher thread makes each batch
durable (R2).  Here "durable" is one fenced etcd txn per entry (etcd_log.py): etcd
acknowledges only once a quorum of members has fsynced it.  A refused or unanswered
txn is a ``WalFailed``, as a failed fsync is on one node: the controller fails and
publishes nothing more, and the node steps down and re-reads the log (node.py).
That matters because the controller publishes its state before the batch is
durable: a leader whose append was refused holds a state the log does not, and the
only safe thing to do with it is to throw it away.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import attrs

from beaverq.impl.storage.wal import WalFailed
from beaverq.model import Event, State
from beaverq.model.errors import BrokenInvariant

from .etcd_client import EtcdError, EtcdNoSpace, EtcdUnavailable, LeaderKey
from .etcd_log import EtcdLog, LogRefused, split

#: How long one append txn may take before its outcome counts as unknown.
APPEND_TIMEOUT_S = 5.0


class ClusterLogFailed(WalFailed):
    """The etcd log took no more of this leader's events (see the message)."""


@attrs.frozen
class PendingBatch:
    items: tuple[Event, ...]

    @property
    def events(self) -> int:
        return len(self.items)

    @property
    def last_lsn(self) -> int:
        return self.items[-1].lsn


class EtcdLogWriter:
    def __init__(
        self,
        log: EtcdLog,
        leader: LeaderKey,
        last_lsn: int,
        *,
        snapshot: Callable[[State], str] | None = None,
        timeout_s: float = APPEND_TIMEOUT_S,
        last_at_ms: int = 0,
    ) -> None:
        self._log = log
        self._leader = leader
        self._pending: list[Event] = []
        self._appended_lsn = last_lsn
        self._durable_lsn = last_lsn
        self._snapshot = snapshot
        self._timeout_s = timeout_s
        self._failure: ClusterLogFailed | None = None
        # The time of the last event framed: a checkpoint records it, so that a node
        # restored from it starts its clock no earlier (node.py's FloorClock).
        self.last_at_ms = last_at_ms

    # -- framing (under group commit's lock) --------------------------------------------

    def append(self, events: Iterable[Event]) -> None:
        for event in events:
            if event.lsn != self._appended_lsn + 1:
                raise BrokenInvariant(
                    f"framing LSN {event.lsn} after {self._appended_lsn}: events out of order"
                )
            self._pending.append(event)
            self._appended_lsn = event.lsn
            self.last_at_ms = max(self.last_at_ms, event.at_ms)

    def take_batch(self) -> PendingBatch | None:
        if not self._pending:
            return None
        batch = PendingBatch(tuple(self._pending))
        self._pending.clear()
        return batch

    def complete_batch(self, batch: PendingBatch, /) -> None:
        self._durable_lsn = batch.last_lsn

    @property
    def pending_events(self) -> int:
        return len(self._pending)

    @property
    def durable_lsn(self) -> int:
        return self._durable_lsn

    @property
    def appended_lsn(self) -> int:
        return self._appended_lsn

    # -- the durable part (outside the lock) ----------------------------------------------

    def write_batch(self, batch: PendingBatch, /) -> None:
        if self._failure is not None:
            raise self._failure
        try:
            for run in split(batch.items):
                self._log.append(run, leader=self._leader, timeout_s=self._timeout_s)
        except LogRefused as refused:
            self._failure = ClusterLogFailed(f"the cluster log refused an append: {refused}")
        except EtcdNoSpace as full:
            self._failure = ClusterLogFailed(f"{full}; nothing more can be appended")
        except EtcdUnavailable as unavailable:
            self._failure = ClusterLogFailed(
                f"the outcome of an append is unknown ({unavailable}); the node re-reads "
                "the log to learn it"
            )
        except EtcdError as error:
            self._failure = ClusterLogFailed(f"etcd refused an append: {error}")
        if self._failure is not None:
            raise self._failure

    def flush(self) -> int:
        batch = self.take_batch()
        if batch is not None:
            self.write_batch(batch)
            self.complete_batch(batch)
        return self._durable_lsn

    # -- the rest of a LogStore -------------------------------------------------------------

    def take_snapshot(self, state: State) -> str:
        """A checkpoint in etcd (snapshots.py) speeds up starts and lets the log prefix
        go; the log in etcd is the record.  "" when the node writes none."""
        return "" if self._snapshot is None else self._snapshot(state)

    def close(self) -> None:
        """Nothing to release: the etcd client belongs to the node."""
