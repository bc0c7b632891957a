"""The replicated log: beaverq's events under a cluster prefix in etcd.

Key layout (``ClusterKeys``; docs/cluster.md, "The log in etcd")::

    /bq/<cluster>/head                  the last LSN, as decimal text
    /bq/<cluster>/log/<first LSN, hex>  an entry: a packed batch of encoded events
    /bq/<cluster>/leader/...            the election (etcd's election API)
    /bq/<cluster>/nodes/<node>          a node's registration, on the node's lease
    /bq/<cluster>/snapmark/<node>       the LSN of the node's newest local snapshot
    /bq/<cluster>/compacted             the LSN up to which log keys were deleted

**One appender, two fences.**  ``append`` is a single txn that puts the head and one
entry only if (1) the head still holds the LSN the appender folded last, and (2) the
appender's election key still exists with the create revision it won (its *epoch*).
(1) keeps the log gapless: an appender that has not seen every event cannot add one.
(2) keeps a deposed leader out even if it happens to know the head: measured without
it, a leader paused past its lease wrote 69 events interleaved with its successor's.
These are ``NoHeadCompare`` and ``NoEpochFence`` in tla/BeaverQueueCluster.tla.

An entry packs many events, so one txn (one quorum fsync) carries a whole group
commit: measured 1 event per txn 181 events/s, 100 packed 3,850-6,360.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence

import attrs
from cattrs.preconf.msgpack import make_converter

from beaverq.impl.storage.codec import SCHEMA_VERSION, encode_event, read_event
from beaverq.model import Event, State, evolve
from beaverq.model.errors import BrokenInvariant

from .etcd_client import Compare, EtcdClient, Get, LeaderKey, Put, prefix_end

#: An entry's encoded size stays under this, well inside etcd's 1.5 MiB request
#: limit (the gateway's base64 and the txn's other keys ride on top).
ENTRY_BYTES_MAX = 1024 * 1024
#: Entries read per range request while catching up.
READ_PAGE = 64


class LogRefused(Exception):
    """An append was refused by its fences: the appender is no longer the leader,
    or another appender moved the head.  Nothing of the append was written."""


class LogCorrupt(Exception):
    """An entry that does not decode, fails its checksum, or breaks the LSN order."""


@attrs.frozen
class ClusterKeys:
    cluster: str

    @property
    def root(self) -> bytes:
        return f"/bq/{self.cluster}/".encode()

    @property
    def head(self) -> bytes:
        return self.root + b"head"

    @property
    def log_prefix(self) -> bytes:
        return self.root + b"log/"

    def log_key(self, first_lsn: int) -> bytes:
        # Fixed-width hex: key order is LSN order.
        return self.log_prefix + f"{first_lsn:016x}".encode()

    @property
    def election(self) -> bytes:
        return self.root + b"leader"

    @property
    def nodes_prefix(self) -> bytes:
        return self.root + b"nodes/"

    def node_key(self, node: str) -> bytes:
        return self.nodes_prefix + node.encode()

    @property
    def snapmark_prefix(self) -> bytes:
        return self.root + b"snapmark/"

    def snapmark_key(self, node: str) -> bytes:
        return self.snapmark_prefix + node.encode()

    @property
    def compacted(self) -> bytes:
        return self.root + b"compacted"


@attrs.frozen
class LogEntry:
    """One txn's worth of events, encoded by the codec, with a checksum over them
    (etcd checks its own storage; this catches a writer that packed wrongly)."""

    schema_version: int
    first_lsn: int
    events: tuple[bytes, ...]
    crc: int

    @property
    def last_lsn(self) -> int:
        return self.first_lsn + len(self.events) - 1


_converter = make_converter()


def _crc(events: Sequence[bytes]) -> int:
    crc = 0
    for data in events:
        crc = zlib.crc32(data, crc)
    return crc


def pack(events: Sequence[Event]) -> LogEntry:
    if not events:
        raise BrokenInvariant("an empty log entry")
    encoded = tuple(encode_event(event) for event in events)
    for offset, event in enumerate(events):
        if event.lsn != events[0].lsn + offset:
            raise BrokenInvariant(f"entry events out of LSN order at {event.lsn}")
    return LogEntry(SCHEMA_VERSION, events[0].lsn, encoded, _crc(encoded))


def encode_entry(entry: LogEntry) -> bytes:
    data: bytes = _converter.dumps(entry)
    return data


def decode_entry(key: bytes, data: bytes) -> LogEntry:
    try:
        entry = _converter.loads(data, LogEntry)
    except Exception as error:  # any decoding failure means the same: not an entry
        raise LogCorrupt(f"log key {key!r} does not hold an entry: {error}") from None
    if _crc(entry.events) != entry.crc:
        raise LogCorrupt(f"log key {key!r}: checksum mismatch")
    return entry


def split(events: Sequence[Event]) -> Iterator[list[Event]]:
    """``events`` in runs whose entries stay under ENTRY_BYTES_MAX."""
    run: list[Event] = []
    size = 0
    for event in events:
        event_size = len(encode_event(event))
        if run and size + event_size > ENTRY_BYTES_MAX:
            yield run
            run, size = [], 0
        run.append(event)
        size += event_size
    if run:
        yield run


class EtcdLog:
    """Appending to and reading the log of one cluster."""

    def __init__(self, client: EtcdClient, keys: ClusterKeys) -> None:
        self.client = client
        self.keys = keys

    # -- appending (the leader only) ---------------------------------------------------

    def append(self, events: Sequence[Event], *, leader: LeaderKey, timeout_s: float) -> int:
        """Append ``events`` (LSNs following the head) as one entry, fenced by the
        head and the epoch; the etcd revision that holds it.  ``LogRefused`` if a
        fence failed; ``EtcdUnavailable`` with ``maybe_applied`` if the outcome is
        unknown (the caller must re-read to learn it, never re-append)."""
        entry = pack(events)
        known = entry.first_lsn - 1
        head_compare = (
            Compare(self.keys.head, "VERSION", 0)
            if known == 0
            else Compare(self.keys.head, "VALUE", str(known).encode())
        )
        result = self.client.txn(
            [head_compare, Compare(leader.key, "CREATE", leader.revision)],
            [
                Put(self.keys.head, str(entry.last_lsn).encode()),
                Put(self.keys.log_key(entry.first_lsn), encode_entry(entry)),
            ],
            [Get(self.keys.head), Get(leader.key)],
            timeout_s=timeout_s,
        )
        if result.succeeded:
            return result.revision
        head, election_key = result.ranges
        if not election_key or election_key[0].create_revision != leader.revision:
            raise LogRefused(f"leadership lost: epoch {leader.revision} is no longer current")
        now = head[0].value.decode() if head else "0"
        raise LogRefused(f"the log head moved: expected LSN {known}, found {now}")

    # -- reading (every node) ----------------------------------------------------------

    def head(self) -> tuple[int, int]:
        """(last LSN, etcd revision read at), linearizably."""
        result = self.client.range(self.keys.head)
        lsn = int(result.kvs[0].value) if result.kvs else 0
        return lsn, result.revision

    def entries_after(self, lsn: int, *, revision: int = 0) -> Iterator[LogEntry]:
        """Every entry holding an event after ``lsn``, in order (at ``revision`` if
        given, so that a catch-up reads one consistent cut)."""
        start = self._entry_holding(lsn + 1, revision)
        end = prefix_end(self.keys.log_prefix)
        while True:
            page = self.client.range(start, end, limit=READ_PAGE, revision=revision)
            for kv in page.kvs:
                entry = decode_entry(kv.key, kv.value)
                if entry.last_lsn > lsn:
                    yield entry
            if not page.more or not page.kvs:
                return
            start = page.kvs[-1].key + b"\x00"

    def _entry_holding(self, lsn: int, revision: int) -> bytes:
        """The key of the entry that holds ``lsn`` (or the first after it): entries are
        keyed by their first LSN, so it is the last key at or below ``lsn``'s."""
        result = self.client.range(
            self.keys.log_prefix,
            self.keys.log_key(lsn) + b"\x00",
            limit=1,
            revision=revision,
            sort_descending=True,
        )
        return result.kvs[0].key if result.kvs else self.keys.log_prefix


def fold_entry(state: State, entry: LogEntry) -> tuple[State, list[Event]]:
    """Fold the events of ``entry`` the state does not cover yet; those events."""
    if entry.first_lsn > state.last_lsn + 1:
        raise LogCorrupt(
            f"log gap: the state is at LSN {state.last_lsn}, the next entry starts at "
            f"{entry.first_lsn}"
        )
    applied: list[Event] = []
    for offset, data in enumerate(entry.events):
        if entry.first_lsn + offset <= state.last_lsn:
            continue
        event = read_event(state, data, entry.schema_version)
        if event is None:
            continue
        if event.lsn != entry.first_lsn + offset:
            raise LogCorrupt(f"entry at {entry.first_lsn}: event {offset} has LSN {event.lsn}")
        state = evolve(state, event)
        applied.append(event)
    return state, applied
