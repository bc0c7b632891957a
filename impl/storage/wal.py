"""The write-ahead log, append side: framed events into segment files, fsynced in batches.

Protocol (docs/storage.md has the argument for each step):

1. ``append(lsn, payload)`` frames an event into the pending batch.  Nothing is on
   disk yet and nothing may be acknowledged.
2. ``take_batch()`` hands the pending frames over as a ``Batch``; ``write_batch``
   writes it at the end of the current segment and fsyncs; ``complete_batch``
   then publishes the new durable LSN.  Only then may the batch's producers be
   answered (group commit: one fsync covers the whole batch).  ``flush`` does the
   three in a row for single-threaded callers.
3. A failed write or fsync fails the whole batch and the WAL for good: after a
   failed fsync the kernel may have dropped the dirty pages and marked them clean,
   so retrying and trusting a later fsync could acknowledge lost data.  Every later
   call raises ``WalFailed``; the process must restart and recover from disk.
4. Rotation happens inside the frame stream: when a segment is full, the next
   frame is the header of a new segment, and the batch records that a new file
   starts there.  ``write_batch`` fsyncs the old file before it creates the new one
   (so a sealed segment is always complete), and fsyncs the directory before the
   batch counts as durable (so the new name survives a crash).

Threads: the framing side (``append``, ``rotate``, ``take_batch``,
``complete_batch``) must be called under one lock, in LSN order; ``write_batch``
does the I/O and is called by one thread at a time, without that lock, so
producers keep framing the next batch while this one is being fsynced
(group_commit.py).
"""

from __future__ import annotations

import posixpath

import attrs

from beaverq.model.errors import BrokenInvariant

from .fs import FileSystem, StorageError
from .record import HEADER_BYTES, RecordKind, encode_frame, padding_for
from .segments import SEGMENT_HEADER, SegmentHeader, encode_segment_header, segment_name

SEGMENT_BYTES_MAX_DEFAULT = 64 * 1024 * 1024
#: A segment header frame: the frame header plus the fixed-size segment header payload.
SEGMENT_HEADER_FRAME_BYTES = HEADER_BYTES + SEGMENT_HEADER.size + padding_for(SEGMENT_HEADER.size)


class WalFailed(StorageError):
    """A write or fsync failed; the WAL refuses all further work."""


@attrs.frozen
class Chunk:
    path: str
    data: bytes
    creates: bool  # the chunk starts a new segment file


@attrs.frozen
class Batch:
    chunks: tuple[Chunk, ...]
    last_lsn: int  # durable once the batch is written
    event_chain_crc: int
    events: int


class WalWriter:
    def __init__(
        self,
        fs: FileSystem,
        directory: str,
        *,
        schema_version: int,
        next_index: int,
        last_lsn: int,
        chain_crc: int,
        event_chain_crc: int,
        segment_bytes_max: int = SEGMENT_BYTES_MAX_DEFAULT,
    ) -> None:
        if not (segment_bytes_max > 0):
            raise BrokenInvariant("broken invariant: segment_bytes_max > 0")
        self._fs = fs
        self._directory = directory
        self._schema_version = schema_version
        self._segment_bytes_max = segment_bytes_max
        self._chunks: list[Chunk] = []
        self._pending = bytearray()
        self._pending_creates = False
        self._pending_events = 0
        self._failure: BaseException | None = None
        self.appended_lsn = last_lsn  # last LSN framed (maybe not durable)
        self.durable_lsn = last_lsn  # last LSN covered by a completed fsync
        self.chain_crc = chain_crc  # chain value after the last framed frame
        # The chain value right after the last durable *event* frame: what a snapshot
        # at ``durable_lsn`` records (segment headers after it do not count).
        self.durable_event_chain_crc = event_chain_crc
        self._event_chain_crc = event_chain_crc
        self.segment_index = next_index - 1
        self.segment_path = ""
        self._segment_framed_bytes = 0
        self._frame_segment_header(next_index)
        self.flush()

    # -- framing side -------------------------------------------------------------------

    def append(self, lsn: int, payload: bytes) -> None:
        self._check_usable()
        # Events arrive in LSN order without gaps (decide numbers them so).
        if lsn != self.appended_lsn + 1:
            raise BrokenInvariant(
                f"broken invariant: lsn == self.appended_lsn + 1: {(lsn, self.appended_lsn)!r}"
            )
        if self._segment_framed_bytes >= self._segment_bytes_max:
            self._frame_segment_header(self.segment_index + 1)
        frame, self.chain_crc = encode_frame(
            RecordKind.EVENT, lsn, self.durable_lsn, payload, self.chain_crc
        )
        self._pending += frame
        self._pending_events += 1
        self._segment_framed_bytes += len(frame)
        self.appended_lsn = lsn
        self._event_chain_crc = self.chain_crc

    def rotate(self) -> None:
        """Start a new segment at this point of the stream (durable at the next flush)."""
        self._check_usable()
        self._frame_segment_header(self.segment_index + 1)

    @property
    def pending_events(self) -> int:
        return self._pending_events

    def take_batch(self) -> Batch | None:
        self._check_usable()
        self._close_chunk()
        if not self._chunks:
            return None
        batch = Batch(
            tuple(self._chunks), self.appended_lsn, self._event_chain_crc, self._pending_events
        )
        self._chunks = []
        self._pending_events = 0
        return batch

    def complete_batch(self, batch: Batch) -> None:
        if not (batch.last_lsn >= self.durable_lsn):
            raise BrokenInvariant("broken invariant: batch.last_lsn >= self.durable_lsn")
        self.durable_lsn = batch.last_lsn
        self.durable_event_chain_crc = batch.event_chain_crc

    # -- I/O side -----------------------------------------------------------------------

    def write_batch(self, batch: Batch) -> None:
        """Write and fsync ``batch``.  Raises ``WalFailed``, after which nothing works."""
        self._check_usable()
        current: str | None = None
        created = False
        unsynced = False  # whether ``current`` has writes its last fsync did not cover
        try:
            for chunk in batch.chunks:
                data = chunk.data
                if chunk.creates:
                    if current is not None and unsynced:
                        # Seal the old segment before the new one can exist.
                        self._fs.fsync(current)
                    self._fs.create(chunk.path)
                    # The header goes down, durably, before any event of the segment is
                    # written: so a crash can never leave a torn header with event frames
                    # after it, and a damaged header followed by valid frames is always
                    # corruption, never a torn write (wal_reader._segment_header).
                    self._fs.append(chunk.path, data[:SEGMENT_HEADER_FRAME_BYTES])
                    self._fs.fsync(chunk.path)
                    data = data[SEGMENT_HEADER_FRAME_BYTES:]
                    created, unsynced = True, False
                current = chunk.path
                if data:
                    self._fs.append(chunk.path, data)
                    unsynced = True
            if current is None:
                raise BrokenInvariant("a batch was written, but to no segment")
            if unsynced:
                self._fs.fsync(current)
            if created:
                # The new name must be durable before any event in it is acknowledged.
                self._fs.fsync_dir(self._directory)
        except OSError as error:
            # The file the system names (a create or open), else the one being written;
            # never "None" (a failure creating the first segment has no ``current``).
            where = error.filename or current or batch.chunks[0].path
            failure = WalFailed(_failure_message(str(where), error, batch, self.durable_lsn))
            self._failure = failure
            raise failure from error

    def flush(self) -> int:
        """Write and fsync everything framed; return the durable LSN."""
        batch = self.take_batch()
        if batch is not None:
            self.write_batch(batch)
            self.complete_batch(batch)
        return self.durable_lsn

    def close(self) -> None:
        """Flush what is framed; the writer is unusable afterwards."""
        if self._failure is None:
            self.flush()
            self._failure = WalFailed("the WAL is closed")

    @property
    def failed(self) -> bool:
        return self._failure is not None

    # -- internals ----------------------------------------------------------------------

    def _close_chunk(self) -> None:
        if self._pending or self._pending_creates:
            self._chunks.append(
                Chunk(self.segment_path, bytes(self._pending), self._pending_creates)
            )
            self._pending = bytearray()
            self._pending_creates = False

    def _frame_segment_header(self, index: int) -> None:
        self._close_chunk()
        header = SegmentHeader(self._schema_version, index, self.appended_lsn, self.chain_crc)
        frame, self.chain_crc = encode_frame(
            RecordKind.SEGMENT_HEADER,
            self.appended_lsn,
            self.durable_lsn,
            encode_segment_header(header),
            self.chain_crc,
        )
        self.segment_index = index
        self.segment_path = posixpath.join(self._directory, segment_name(index, self.appended_lsn))
        self._pending += frame
        self._pending_creates = True
        self._segment_framed_bytes = len(frame)

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise WalFailed(f"the WAL refuses work after an earlier failure: {self._failure}")


def _failure_message(where: str, error: OSError, batch: Batch, durable_lsn: int) -> str:
    """One line: which file, the system's reason, and which LSNs the failure leaves in
    doubt (after a failed write or fsync, any part of the batch may be on disk)."""
    reason = error.strerror or str(error)
    if batch.last_lsn > durable_lsn:
        doubt = f"LSN {durable_lsn + 1} to {batch.last_lsn} may or may not be on disk"
    else:
        doubt = f"every event up to LSN {durable_lsn} is on disk"
    return f"{where}: write or fsync failed ({reason}); {doubt}; the log takes no more writes"
