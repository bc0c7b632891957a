"""The leader's checkpoint loop, log-prefix compaction, and every node's snapmark.

snapshots.py says how a checkpoint sits in etcd; this module says when one is
written and what it lets go:

* ``LeaderSnapshots``: the leader's checkpoints, off the controller's lock.
* ``compact_log``: after a checkpoint, the log prefix no live node needs is deleted
  in one txn (with ``compacted`` = W), and etcd's history is compacted.
* ``SnapmarkPublisher``: each node says which checkpoint it has folded past, so the
  leader never deletes the log a live node is still reading.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

import attrs

from beaverq.model import State

from .etcd_client import (
    Compare,
    DeleteRange,
    EtcdClient,
    EtcdError,
    LeaderKey,
    Operation,
    Put,
    prefix_end,
)
from .etcd_log import ClusterKeys
from .membership import registered_nodes
from .snapshots import (
    CheckpointWriter,
    SnapshotCorrupt,
    SnapshotRefused,
    decode_manifest,
    manifest_key,
)

log = logging.getLogger(__name__)

#: How often a compaction that a live node's snapmark held off is tried again.
COMPACT_RETRY_S = 2.0


# -- compaction -----------------------------------------------------------------------


@attrs.frozen
class Compaction:
    upto_lsn: int  # W: the log keys wholly at or below it are deleted
    mvcc_revision: int  # etcd's history is compacted at this revision (0: not this time)


def snapmarks(client: EtcdClient, keys: ClusterKeys) -> dict[str, int]:
    found = client.range(keys.snapmark_prefix, prefix_end(keys.snapmark_prefix))
    prefix = len(keys.snapmark_prefix)
    return {kv.key[prefix:].decode(): int(kv.value) for kv in found.kvs}


def compact_log(
    client: EtcdClient,
    keys: ClusterKeys,
    upto_lsn: int,
    mvcc_revision: int,
    leader: LeaderKey | None = None,
) -> Compaction | None:
    """Delete the log entries wholly at or below W = min(``upto_lsn``, every live
    node's snapmark), record ``compacted`` = W, and compact etcd's history at
    ``mvcc_revision``.  None if nothing is to delete or a live node has not said
    where it is (a node that just joined: it publishes within a second)."""
    marks = snapmarks(client, keys)
    live = registered_nodes(client, keys)
    if any(node not in marks for node in live):
        return None
    upto = min([upto_lsn, *(marks[node] for node in live)])
    found = client.get(keys.compacted)
    done = int(found.value) if found is not None else 0
    if upto <= done:
        return None
    # Entries are keyed by their first LSN: keep the one that holds W+1.
    holding = client.range(
        keys.log_prefix, keys.log_key(upto + 1) + b"\x00", limit=1, sort_descending=True
    ).kvs
    end = holding[0].key if holding else keys.log_prefix
    compares = [] if leader is None else [Compare(leader.key, "CREATE", leader.revision)]
    operations: list[Operation] = [Put(keys.compacted, str(upto).encode())]
    if end > keys.log_prefix:
        operations.append(DeleteRange(keys.log_prefix, end))
    if not client.txn(compares, operations).succeeded:
        raise SnapshotRefused("leadership lost before compacting the log")
    compacted_at = 0
    if mvcc_revision:
        try:
            client.compact(mvcc_revision)
            compacted_at = mvcc_revision
        except EtcdError as error:
            if "compacted" not in str(error):  # already compacted there: nothing to do
                raise
    return Compaction(upto, compacted_at)


# -- the leader's loop, and every node's snapmark ---------------------------------------


class LeaderSnapshots:
    """The leader's checkpoints, written by a thread of their own.

    ``take`` is the ``snapshot`` callable of ``EtcdLogWriter``: the controller calls
    it under its lock with exactly the durable log's state (R4).  The state is
    immutable, so the writing (seconds for 100,000 jobs) happens here, outside the
    lock, and appends go on meanwhile; a newer state replaces one not yet written.
    After each checkpoint the log prefix behind the *previous* one is deleted: so the
    previous checkpoint stays a complete fallback, log tail included.
    """

    def __init__(self, client: EtcdClient, keys: ClusterKeys, leader: LeaderKey | None) -> None:
        self.writer = CheckpointWriter(client, keys)
        self._client = client
        self._keys = keys
        self._leader = leader
        self._due: tuple[State, int] | None = None
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="beaverq-checkpoint", daemon=True)
        self._target: tuple[int, int] | None = None  # (LSN, revision) to compact up to
        self.written = 0
        self.compactions: list[Compaction] = []
        self.failure: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join()

    def take(self, state: State, at_ms: int) -> str:
        with self._cond:
            self._due = (state, at_ms)
            self._cond.notify_all()
        return f"etcd:{self._keys.cluster}@{state.last_lsn}"

    def wait_written(self, lsn: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while (self.writer.manifest is None or self.writer.manifest.lsn < lsn) and (
                remaining := deadline - time.monotonic()
            ) > 0:
                self._cond.wait(remaining)
            return self.writer.manifest is not None and self.writer.manifest.lsn >= lsn

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._due is None and not self._stopping:
                    # A compaction held off by a node that has not published its
                    # snapmark yet is tried again after a while, not only on the next
                    # checkpoint (which a quiet queue may not take for a long time).
                    self._cond.wait(COMPACT_RETRY_S if self._target is not None else None)
                if self._stopping:
                    return
                due, self._due = self._due, None
            try:
                if due is not None:
                    self.checkpoint(*due)
                else:
                    self.compact()
            except Exception as error:  # never a silent death: etcd would only grow
                # The log is the record; a missed checkpoint only delays compaction, and
                # the next one is tried as usual.  ``failure`` says why until then.
                log.warning("beaverq: checkpoint or compaction failed: %s", error)
                self.failure = error
            with self._cond:
                self._cond.notify_all()

    def checkpoint(self, state: State, at_ms: int) -> None:
        self.writer.write(state, at_ms, self._leader)
        self.written += 1
        if self.writer.previous_lsn:
            self._target = (self.writer.previous_lsn, self.writer.previous_revision)
        self.compact()

    def compact(self) -> None:
        """Delete the log behind the previous checkpoint (see the class's comment)."""
        if self._target is None:
            return
        upto, revision = self._target
        done = compact_log(self._client, self._keys, upto, revision, self._leader)
        if done is not None:
            self.compactions.append(done)
        found = self._client.get(self._keys.compacted)
        if found is not None and int(found.value) >= upto:
            self._target = None


class SnapmarkPublisher:
    """``snapmark/<node>``: the newest checkpoint LSN this node's state has folded past.

    A node in a cluster keeps no snapshot of its own: what it could restart from is
    the checkpoint in etcd plus the log after it.  While its fold is behind the
    newest checkpoint it still tails the log from its position, so it publishes the
    older checkpoint's LSN it *has* passed, and the leader deletes nothing it still
    needs.  On the node's lease: a dead node stops holding the log back.
    """

    def __init__(
        self,
        client: EtcdClient,
        keys: ClusterKeys,
        node: str,
        position: Callable[[], int],
        lease: Callable[[], int],
        *,
        every_s: float = 1.0,
    ) -> None:
        self._client = client
        self._keys = keys
        self._node = node
        self._position = position
        self._lease = lease
        self._every_s = every_s
        self._published: tuple[int, int] = (-1, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="beaverq-snapmark", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def publish(self) -> int:
        found = self._client.get(manifest_key(self._keys))
        mark = 0 if found is None else decode_manifest(found).lsn
        if self._position() < mark:
            mark = self._published[0] if self._published[0] >= 0 else 0
        lease = self._lease()
        if (mark, lease) != self._published:
            self._client.put(self._keys.snapmark_key(self._node), str(mark).encode(), lease=lease)
            self._published = (mark, lease)
        return mark

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(EtcdError, SnapshotCorrupt):
                self.publish()
            self._stop.wait(self._every_s)
