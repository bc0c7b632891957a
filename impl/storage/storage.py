"""Durable storage of the queue: recovery at open, the WAL for every event, snapshots.

``Storage.open`` takes the data directory's lock and recovers:

1. delete snapshot temp files a crash left behind (never renamed, never valid);
2. load the newest snapshot that verifies; a damaged one is skipped (reported),
   and the next older one is used with the longer WAL tail behind it;
3. read the WAL after the snapshot's LSN (wal_reader.py): corruption stops
   recovery with the file and byte offset; a torn tail is cut, after its bytes
   are saved next to the segment as ``<segment>.cut-<offset>``;
4. replay the records with ``evolve`` (the LSN guard skips what the snapshot has);
   records of an older schema are upcast at their place in the log (codec.py);
5. rename the snapshots found damaged to ``<name>.damaged`` (they must not count
   as one of the two kept ones);
6. continue in a fresh segment, so no byte of an old segment is ever rewritten.

After that, ``append`` frames events, ``flush`` makes them durable (only then may
anything be acknowledged), and ``take_snapshot`` writes a snapshot, rotates the
WAL and deletes what the two newest snapshots make redundant.

No lifecycle decision is made here: the state changes only through ``evolve`` of
events that ``decide`` produced.
"""

from __future__ import annotations

import contextlib
import gc
import posixpath
from collections.abc import Iterable, Iterator
from itertools import pairwise

import attrs

from beaverq.model import BrokenInvariant, Event, State, evolve, initial_state
from beaverq.model.checkpoint import checkpoint_of, restore

from .codec import (
    SCHEMA_VERSION,
    SCHEMA_VERSIONS_READABLE,
    CodecError,
    decode_checkpoint,
    encode_checkpoint,
    encode_event,
    read_event,
)
from .fs import FileSystem, StorageError
from .snapshot import (
    decode_snapshot,
    encode_snapshot,
    list_snapshots,
    remove_temporary_files,
    write_snapshot,
)
from .wal import SEGMENT_BYTES_MAX_DEFAULT, Batch, WalWriter
from .wal_reader import TornTail, WalContents, list_segments, read_wal

LOCK_NAME = "LOCK"
SNAPSHOTS_KEPT = 2
#: The default snapshot policy takes a snapshot at least every this many events, so
#: recovery never replays a longer WAL tail than this (the runner also snapshots on
#: a timer, every 2 s as in the original design).
SNAPSHOT_EVERY_EVENTS_DEFAULT = 20_000


@attrs.frozen
class StorageOptions:
    segment_bytes_max: int = SEGMENT_BYTES_MAX_DEFAULT
    snapshot_compression: str = "none"


@attrs.frozen
class RecoveryReport:
    snapshot_path: str | None
    snapshot_lsn: int
    snapshots_skipped: tuple[tuple[str, str], ...]  # (path, what was wrong)
    records_replayed: int
    last_lsn: int
    torn_tail: TornTail | None
    bytes_truncated: int
    cut_copy_path: str | None
    temporary_files_removed: tuple[str, ...]


class Storage:
    def __init__(self, fs: FileSystem, directory: str, writer: WalWriter, options: StorageOptions):
        self._fs = fs
        self._directory = directory
        self._writer = writer
        self._options = options

    # -- opening ------------------------------------------------------------------------

    @classmethod
    def open(
        cls, fs: FileSystem, directory: str, options: StorageOptions | None = None
    ) -> tuple[Storage, State, RecoveryReport]:
        options = options or StorageOptions()
        if not fs.exists(directory):
            fs.mkdir(directory)
            parent = posixpath.dirname(directory.rstrip("/")) or "."
            fs.fsync_dir(parent)
        lock = posixpath.join(directory, LOCK_NAME)
        fs.lock(lock)
        try:
            with _collector_paused():
                state, contents, report = _recover(fs, directory)
            last = contents.segments[-1].index if contents.segments else -1
            writer = WalWriter(
                fs,
                directory,
                schema_version=SCHEMA_VERSION,
                next_index=last + 1,
                last_lsn=state.last_lsn,
                chain_crc=contents.chain_crc,
                event_chain_crc=contents.event_chain_crc,
                segment_bytes_max=options.segment_bytes_max,
            )
        except BaseException:
            fs.unlock(lock)
            raise
        return cls(fs, directory, writer, options), state, report

    # -- the WAL ------------------------------------------------------------------------

    def append(self, events: Iterable[Event]) -> None:
        """Frame events into the current batch (not durable until ``flush``)."""
        for event in events:
            self._writer.append(event.lsn, encode_event(event))

    def flush(self) -> int:
        """Make every appended event durable; return the durable LSN."""
        return self._writer.flush()

    # The three steps of ``flush``, for a group-commit thread (see wal.py, "Threads").
    def take_batch(self) -> Batch | None:
        return self._writer.take_batch()

    def write_batch(self, batch: Batch) -> None:
        self._writer.write_batch(batch)

    def complete_batch(self, batch: Batch) -> None:
        self._writer.complete_batch(batch)

    @property
    def pending_events(self) -> int:
        return self._writer.pending_events

    @property
    def failed(self) -> bool:
        return self._writer.failed

    @property
    def durable_lsn(self) -> int:
        return self._writer.durable_lsn

    @property
    def appended_lsn(self) -> int:
        return self._writer.appended_lsn

    # -- snapshots ----------------------------------------------------------------------

    def take_snapshot(self, state: State) -> str:
        """Snapshot ``state``, rotate the WAL, delete what is now redundant.

        ``state`` must be exactly the durable log: a snapshot ahead of the log
        would survive a crash that the log's tail does not.
        """
        self.flush()
        if state.last_lsn != self._writer.durable_lsn:
            raise BrokenInvariant(
                f"snapshot of a state at LSN {state.last_lsn}; the log is durable to "
                f"{self._writer.durable_lsn}"
            )
        body = encode_checkpoint(checkpoint_of(state))
        data = encode_snapshot(
            state.last_lsn,
            self._writer.durable_event_chain_crc,
            SCHEMA_VERSION,
            body,
            self._options.snapshot_compression,
        )
        path = write_snapshot(self._fs, self._directory, state.last_lsn, data)
        self._writer.rotate()
        self._writer.flush()
        self._compact()
        return path

    def _compact(self) -> None:
        """Delete snapshots beyond the newest two, and segments the older one covers.

        Runs only after the new snapshot is durable (write_snapshot fsynced the
        directory).  The older kept snapshot still has every segment after it, so
        if the newest turns out damaged, recovery falls back to it.
        """
        snapshots = list_snapshots(self._fs, self._directory)
        for stale in snapshots[SNAPSHOTS_KEPT:]:
            self._fs.unlink(stale.path)
        kept = snapshots[:SNAPSHOTS_KEPT]
        if len(kept) < SNAPSHOTS_KEPT:
            return
        oldest_kept_lsn = kept[-1].lsn
        segments = list_segments(self._fs, self._directory)
        # A sealed segment's last LSN is the next segment's base LSN.  Only segments
        # that end *before* the older snapshot go: the one holding its last event
        # stays, so the reader can check the chain at exactly the snapshot's LSN
        # (tests/test_snapshot.py, fallback right after open).
        for (_index, _base, path), (_next_index, next_base, _next_path) in pairwise(segments):
            if next_base < oldest_kept_lsn:
                self._fs.unlink(path)
        self._fs.fsync_dir(self._directory)

    def close(self) -> None:
        try:
            self._writer.close()
        finally:
            self._fs.unlock(posixpath.join(self._directory, LOCK_NAME))


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while recovery allocates millions of
    objects that all stay alive: each collection would scan them all again, for
    nothing (measured: most of the recovery time of a 100,000-job snapshot).
    Recovery creates no reference cycles, so nothing is leaked meanwhile."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _recover(fs: FileSystem, directory: str) -> tuple[State, WalContents, RecoveryReport]:
    removed = remove_temporary_files(fs, directory)
    skipped: list[tuple[str, str]] = []
    state, snapshot_path, chain_crc = initial_state(), None, 0
    for candidate in list_snapshots(fs, directory):
        loaded = decode_snapshot(fs.read(candidate.path), candidate.path)
        if isinstance(loaded, str):
            skipped.append((candidate.path, loaded))
            continue
        if loaded.schema_version not in SCHEMA_VERSIONS_READABLE:
            raise StorageError(
                f"{candidate.path}: schema version {loaded.schema_version}; "
                f"this beaverq reads {sorted(SCHEMA_VERSIONS_READABLE)}"
            )
        try:
            checkpoint = decode_checkpoint(loaded.body)
        except CodecError as error:
            skipped.append((candidate.path, str(error)))
            continue
        if checkpoint.last_lsn != loaded.lsn:
            skipped.append((candidate.path, "header LSN differs from the body's"))
            continue
        state, snapshot_path, chain_crc = restore(checkpoint), candidate.path, loaded.chain_crc
        break
    contents = read_wal(fs, directory, after_lsn=state.last_lsn, after_chain_crc=chain_crc)
    unreadable = {segment.schema_version for segment in contents.segments}
    unreadable -= SCHEMA_VERSIONS_READABLE
    if unreadable:
        raise StorageError(
            f"{directory}: WAL schema version {max(unreadable)}; "
            f"this beaverq reads {sorted(SCHEMA_VERSIONS_READABLE)}"
        )
    snapshot_lsn = state.last_lsn
    state = replay_records(state, contents, directory)
    if state.last_lsn != contents.last_lsn:
        raise BrokenInvariant(
            f"{directory}: replay ended at LSN {state.last_lsn}, the log at {contents.last_lsn}"
        )
    cut_copy = _cut_torn_tail(fs, directory, contents.torn_tail)
    _set_aside_damaged_snapshots(fs, directory, [path for path, _reason in skipped])
    torn = contents.torn_tail
    report = RecoveryReport(
        snapshot_path=snapshot_path,
        snapshot_lsn=snapshot_lsn,
        snapshots_skipped=tuple(skipped),
        records_replayed=len(contents.records),
        last_lsn=state.last_lsn,
        torn_tail=torn,
        bytes_truncated=0 if torn is None else torn.size - torn.offset,
        cut_copy_path=cut_copy,
        temporary_files_removed=tuple(removed),
    )
    return state, contents, report


def replay_records(state: State, contents: WalContents, directory: str) -> State:
    """Fold the log's records into ``state``, each read in the schema it was written in."""
    for record, schema_version in zip(
        contents.records, contents.record_schema_versions, strict=True
    ):
        try:
            event = read_event(state, record.payload, schema_version)
        except CodecError as error:
            raise StorageError(f"{directory}: record at LSN {record.lsn}: {error}") from None
        # Paired with the framing: the LSN in the frame is the LSN in the event.  The
        # frames after the snapshot run on from the state's LSN, so an event the
        # upcaster finds covered (None) is one whose LSN is not its frame's either.
        if event is None or event.lsn != record.lsn:
            held = "an event at or below it" if event is None else repr(event)
            raise BrokenInvariant(
                f"{directory}: frame LSN {record.lsn} holds {held} (state at {state.last_lsn})"
            )
        state = evolve(state, event)
    return state


def _set_aside_damaged_snapshots(fs: FileSystem, directory: str, paths: list[str]) -> None:
    """Rename snapshots recovery found damaged to ``<name>.damaged``.

    Runs only after recovery succeeded without them.  Kept under their own name,
    they would count as one of the two snapshots compaction keeps, and the next
    compaction would delete the intact older snapshot and the segments it needs
    (tests/stateful/test_storage_crash.py, damaged snapshot not kept as fallback).
    The bytes stay on disk for inspection.
    """
    for path in paths:
        fs.rename(path, f"{path}.damaged")
    if paths:
        fs.fsync_dir(directory)


def _cut_torn_tail(fs: FileSystem, directory: str, torn: TornTail | None) -> str | None:
    """Save the torn bytes beside the segment, then cut them off (or drop the file)."""
    if torn is None:
        return None
    data = fs.read(torn.path)
    copy = f"{torn.path}.cut-{torn.offset}"
    if fs.exists(copy):
        fs.unlink(copy)
    fs.create(copy)
    fs.append(copy, data[torn.offset :])
    fs.fsync(copy)
    if torn.offset == 0:
        fs.unlink(torn.path)
    else:
        fs.truncate(torn.path, torn.offset)
        fs.fsync(torn.path)
    fs.fsync_dir(directory)
    return copy
