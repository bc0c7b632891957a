"""The write-ahead log, read side: segments to records, and the damage policy.

``read_wal`` is pure except for reading files: it never changes the directory.
It returns the records after a given LSN and a verdict on the log's end:

* **Clean**: the last segment ends at a frame boundary.
* **Torn tail**: the last segment holds bytes after its last valid frame that are
  not a valid continuation: a write the crash cut short (zeroed, partial or
  garbled sectors).  Nothing there was acknowledged, so recovery may cut it
  (``storage.py`` keeps a copy of the bytes it cuts and logs what it cut).
* **Corruption**: damage anywhere else, which recovery must refuse to repair:
  damage in a sealed (non-last) segment, a missing segment, a broken chain, an
  LSN gap, or damage in the last segment followed by a valid frame whose
  ``synced_lsn`` shows the damaged record had been durable (acknowledged).  The
  error names the file and the byte offset.

The distinction rests on one fact of the write protocol (wal.py): batch k+1 is
written only after batch k's fsync returned, and every frame records the durable
LSN at the time it was framed.  So a frame claiming ``synced_lsn >= n`` proves
record n was acknowledged; without such a frame, the damage lies in the last,
unacknowledged batch.
"""

from __future__ import annotations

import posixpath

import attrs

from beaverq.model.errors import BrokenInvariant

from .fs import FileSystem, StorageError
from .record import FrameProblem, Record, RecordKind, decode_frame, find_valid_frames_after
from .segments import SegmentHeader, decode_segment_header, parse_segment_name


class WalCorrupt(StorageError):
    """Damage recovery must not repair: names the file and the byte offset."""

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(f"{path}: corrupt at byte {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


@attrs.frozen
class TornTail:
    path: str
    offset: int  # first byte that is not part of the valid log
    size: int  # file size: bytes offset..size are cut
    reason: str


@attrs.frozen
class Segment:
    path: str
    index: int
    base_lsn: int
    last_lsn: int
    chain_crc: int  # after its last valid frame
    # Its header's: a reader refuses a schema it does not know even in a segment
    # that holds no record it replays (a newer beaverq's segment, empty).
    schema_version: int


@attrs.frozen
class WalContents:
    records: tuple[Record, ...]  # event records with lsn > after_lsn, in order
    segments: tuple[Segment, ...]
    last_lsn: int  # last valid LSN in the log (after_lsn if the log has none beyond)
    chain_crc: int  # chain value after the last valid frame (segment headers included)
    event_chain_crc: int  # chain value after the event at ``last_lsn``
    torn_tail: TornTail | None
    # The schema each record was written in (its segment's), parallel to ``records``:
    # a log written before an upgrade has older segments before newer ones.
    record_schema_versions: tuple[int, ...]


def list_segments(fs: FileSystem, directory: str) -> list[tuple[int, int, str]]:
    """(index, base_lsn, path) of every segment file, by index."""
    found = []
    for name in fs.list_dir(directory):
        parsed = parse_segment_name(name)
        if parsed is not None:
            found.append((parsed[0], parsed[1], posixpath.join(directory, name)))
    return sorted(found)


def read_wal(
    fs: FileSystem, directory: str, *, after_lsn: int, after_chain_crc: int
) -> WalContents:
    """Read every segment; return the records after ``after_lsn`` (the snapshot's LSN).

    ``after_chain_crc`` is the chain value the snapshot recorded at ``after_lsn``;
    the log must continue exactly that chain.
    """
    reader = _Reader(after_lsn, after_chain_crc)
    files = list_segments(fs, directory)
    for position, (index, base_lsn, path) in enumerate(files):
        reader.read_segment(fs.read(path), path, index, base_lsn, position == len(files) - 1)
        if reader.torn_tail is not None:
            break
    if reader.highest_lsn < after_lsn:
        # The snapshot is ahead of the log: events it includes were never durable in
        # the log, or segments holding them were deleted.
        where = files[-1][2] if files else directory
        raise WalCorrupt(
            where, 0, f"the log ends at LSN {reader.highest_lsn}, before the snapshot's {after_lsn}"
        )
    return WalContents(
        tuple(reader.records),
        tuple(reader.segments),
        reader.last_lsn,
        reader.chain,
        reader.event_chain,
        reader.torn_tail,
        tuple(reader.record_schema_versions),
    )


class _Reader:
    """Walks the frames of consecutive segments, keeping the running LSN and chain."""

    def __init__(self, after_lsn: int, after_chain_crc: int) -> None:
        self.after_lsn = after_lsn
        self.after_chain_crc = after_chain_crc
        self.records: list[Record] = []
        self.segments: list[Segment] = []
        self.torn_tail: TornTail | None = None
        self.record_schema_versions: list[int] = []
        self.last_lsn = after_lsn
        self.chain = after_chain_crc
        self.event_chain = after_chain_crc
        self.highest_lsn = 0  # the highest LSN any segment reaches, snapshot or not

    def read_segment(
        self, data: bytes, path: str, index: int, base_lsn: int, is_last: bool
    ) -> None:
        previous = self.segments[-1] if self.segments else None
        if previous is not None and index != previous.index + 1:
            raise WalCorrupt(path, 0, f"segment {previous.index + 1} is missing")
        if previous is not None and base_lsn != previous.last_lsn:
            raise WalCorrupt(
                path, 0, f"segment starts after LSN {base_lsn}, not {previous.last_lsn}"
            )
        if previous is None and base_lsn > self.after_lsn:
            raise WalCorrupt(
                path,
                0,
                f"the log starts after LSN {base_lsn}; the snapshot ends at {self.after_lsn}",
            )
        header = _segment_header(data, path, index, base_lsn, is_last)
        if header is None:  # the last segment's header itself was torn: nothing in it counts
            self.torn_tail = TornTail(path, 0, len(data), "segment header incomplete")
            return
        # Where the chain is known (a segment before this one, or the snapshot's value
        # at this segment's base), the segment must continue it.
        known_chain = previous.chain_crc if previous is not None else self.after_chain_crc
        if (previous is not None or base_lsn == self.after_lsn) and (
            header.previous_chain_crc != known_chain
        ):
            if previous is not None:
                raise WalCorrupt(path, 0, "the segment does not continue the log's chain")
            raise WalCorrupt(
                path,
                0,
                f"the first segment does not continue the chain at LSN {self.after_lsn} "
                "(the snapshot's, or a new log's if there is none): the segments before "
                "it are missing",
            )
        first = decode_frame(data, 0, header.previous_chain_crc)
        if not isinstance(first, Record):
            raise WalCorrupt(path, 0, first.reason)
        lsn, chain, offset = base_lsn, first.chain_crc, first.size
        while offset < len(data):
            decoded = decode_frame(data, offset, chain)
            problem = _frame_problem(decoded, lsn)
            if problem is not None:
                self._damage(data, path, offset, lsn, problem, is_last)
                break
            if not (isinstance(decoded, Record)):
                raise BrokenInvariant("broken invariant: isinstance(decoded, Record)")
            lsn, chain, offset = decoded.lsn, decoded.chain_crc, offset + decoded.size
            if lsn == self.after_lsn and chain != self.after_chain_crc:
                raise WalCorrupt(
                    path, decoded.offset, "the log disagrees with the snapshot's chain"
                )
            if lsn > self.after_lsn:
                self.records.append(decoded)
                self.record_schema_versions.append(header.schema_version)
                self.event_chain = chain
        self.segments.append(Segment(path, index, base_lsn, lsn, chain, header.schema_version))
        self.highest_lsn = max(self.highest_lsn, lsn)
        if lsn >= self.after_lsn:
            self.last_lsn, self.chain = lsn, chain

    def _damage(
        self, data: bytes, path: str, offset: int, lsn: int, problem: str, is_last: bool
    ) -> None:
        if not is_last:
            raise WalCorrupt(path, offset, f"{problem} (in a sealed segment)")
        for evidence in find_valid_frames_after(data, offset):
            # Evidence must look like a later frame of this log: a later LSN, and a
            # durable LSN below its own (the writer frames with synced_lsn < lsn).
            if evidence.lsn > lsn and lsn < evidence.synced_lsn < evidence.lsn:
                raise WalCorrupt(
                    path,
                    offset,
                    f"{problem}; the frame at byte {evidence.offset} shows that LSN {lsn + 1} "
                    "was durable",
                )
        self.torn_tail = TornTail(path, offset, len(data), problem)


def _frame_problem(decoded: Record | FrameProblem, lsn: int) -> str | None:
    if isinstance(decoded, FrameProblem):
        return decoded.reason
    if decoded.kind is not RecordKind.EVENT:
        return "a segment header in the middle of a segment"
    if decoded.lsn != lsn + 1:
        return f"LSN {decoded.lsn} follows LSN {lsn}"
    return None


def _segment_header(
    data: bytes, path: str, index: int, base_lsn: int, is_last: bool
) -> SegmentHeader | None:
    decoded = decode_frame(data, 0, None)
    if isinstance(decoded, FrameProblem) or decoded.kind is not RecordKind.SEGMENT_HEADER:
        reason = decoded.reason if isinstance(decoded, FrameProblem) else "no segment header"
        if is_last and not find_valid_frames_after(data, 0):
            return None
        raise WalCorrupt(path, 0, reason)
    header = decode_segment_header(decoded.payload)
    if isinstance(header, str):
        raise WalCorrupt(path, 0, header)
    if (header.index, header.base_lsn) != (index, base_lsn) or decoded.lsn != base_lsn:
        raise WalCorrupt(path, 0, "segment header does not match the file name")
    return header
