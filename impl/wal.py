"""The write-ahead log, append side: framed events into segment files, fsynced in batches.

Protocol (docs/storage.md has the argument for each step):

1. ``append(lsn, payload)`` frames an event into an in-memory batch.  Nothing is on
   disk yet and nothing may be acknowledged.
2. ``flush()`` writes the batch at the end of the current segment and fsyncs the
   file.  Only when the fsync returns are the batch's events durable, and only then
   may their producers be answered (group commit: one fsync covers the batch).
3. A failed write or fsync fails the whole batch and the WAL for good: after a
   failed fsync the kernel may have dropped the dirty pages and marked them clean,
   so retrying and trusting a later fsync could acknowledge lost data.  Every later
   call raises ``WalFailed``; the process must restart and recover from disk.
4. ``rotate()`` seals the segment and starts the next: create, write the header
   frame, fsync the file, then fsync the directory so the new name is durable
   before any event in it is acknowledged.

The writer is single-threaded; ``GroupCommit`` (group_commit.py) adds the
"flush after N events or T ms" policy and the waiting producers.
"""

from __future__ import annotations

import posixpath

from .fs import FileSystem, StorageError
from .record import RecordKind, encode_frame
from .segments import SegmentHeader, encode_segment_header, segment_name

SEGMENT_BYTES_MAX_DEFAULT = 64 * 1024 * 1024


class WalFailed(StorageError):
    """A write or fsync failed; the WAL refuses all further work."""


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
        assert segment_bytes_max > 0
        self._fs = fs
        self._directory = directory
        self._schema_version = schema_version
        self._segment_bytes_max = segment_bytes_max
        self._batch = bytearray()
        self._failure: BaseException | None = None
        self.appended_lsn = last_lsn  # last LSN framed (maybe not durable)
        self.durable_lsn = last_lsn  # last LSN covered by a completed fsync
        self.chain_crc = chain_crc  # chain value after the last framed record
        # The chain value right after the last durable *event* frame: what a snapshot
        # at ``durable_lsn`` records (segment headers after it do not count).
        self.durable_event_chain_crc = event_chain_crc
        self._event_chain_crc = event_chain_crc
        self.segment_index = next_index - 1
        self.segment_path = ""
        self.segment_bytes = 0
        self._start_segment(next_index)

    # -- appending --------------------------------------------------------------------

    def append(self, lsn: int, payload: bytes) -> None:
        self._check_usable()
        # Events arrive in LSN order without gaps (decide numbers them so).
        assert lsn == self.appended_lsn + 1, (lsn, self.appended_lsn)
        frame, self.chain_crc = encode_frame(
            RecordKind.EVENT, lsn, self.durable_lsn, payload, self.chain_crc
        )
        self._batch += frame
        self.appended_lsn = lsn
        self._event_chain_crc = self.chain_crc

    @property
    def batch_bytes(self) -> int:
        return len(self._batch)

    def flush(self) -> int:
        """Write and fsync the batch; return the durable LSN.  Raises ``WalFailed``."""
        self._check_usable()
        if not self._batch:
            return self.durable_lsn
        try:
            self._fs.append(self.segment_path, bytes(self._batch))
            self._fs.fsync(self.segment_path)
        except OSError as error:
            self._fail(error, f"{self.segment_path}: write or fsync failed: {error}")
        self.segment_bytes += len(self._batch)
        self._batch.clear()
        self.durable_lsn = self.appended_lsn
        self.durable_event_chain_crc = self._event_chain_crc
        return self.durable_lsn

    def rotate(self) -> None:
        """Seal the current segment and continue in a new one (flushes first)."""
        self.flush()
        self._start_segment(self.segment_index + 1)

    def rotate_if_full(self) -> bool:
        if self.segment_bytes < self._segment_bytes_max:
            return False
        self.rotate()
        return True

    def close(self) -> None:
        """Flush what is batched; the writer is unusable afterwards."""
        if self._failure is None:
            self.flush()
            self._failure = WalFailed("the WAL is closed")

    # -- internals --------------------------------------------------------------------

    def _start_segment(self, index: int) -> None:
        assert not self._batch, "a segment starts with an empty batch"
        header = SegmentHeader(self._schema_version, index, self.appended_lsn, self.chain_crc)
        frame, chain_crc = encode_frame(
            RecordKind.SEGMENT_HEADER,
            self.appended_lsn,
            self.durable_lsn,
            encode_segment_header(header),
            self.chain_crc,
        )
        path = posixpath.join(self._directory, segment_name(index, self.appended_lsn))
        try:
            self._fs.create(path)
            self._fs.append(path, frame)
            self._fs.fsync(path)
            # The name must be durable before any event in this file is acknowledged.
            self._fs.fsync_dir(self._directory)
        except OSError as error:
            self._fail(error, f"{path}: cannot start a WAL segment: {error}")
        self.segment_index = index
        self.segment_path = path
        self.segment_bytes = len(frame)
        self.chain_crc = chain_crc

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise WalFailed(f"the WAL refuses writes after an earlier failure: {self._failure}")

    def _fail(self, error: OSError, message: str) -> None:
        self._batch.clear()
        failure = WalFailed(message)
        self._failure = failure
        raise failure from error
