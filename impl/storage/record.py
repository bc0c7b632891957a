"""WAL record framing: pure functions from records to bytes and from bytes to a verdict.

Frame format (little-endian; every frame starts at a multiple of 8 bytes)::

    offset size field
         0    4 length       payload bytes
         4    1 kind         1 = event, 2 = segment header
         5    1 padding      zero bytes after the payload (0..7), to the next multiple of 8
         6    2 magic        0xB7E5: a zeroed or stale frame is recognised at once
         8    8 lsn          the event's LSN (a segment header: the LSN just before it)
        16    8 synced_lsn   the highest LSN known durable when this frame was written
        24    4 frame_crc    CRC-32C of bytes 0..23 and the payload
        28    4 chain_crc    CRC-32C of frame_crc, seeded with the previous frame's chain_crc
        32    n payload, then ``padding`` zero bytes

Why each field:

* The first 8 bytes (length, kind, padding, magic) form one aligned word, so a torn
  write can never tear the length (etcd's rule): a sector boundary never falls
  inside an aligned 8-byte word.
* ``frame_crc`` validates a frame on its own; ``chain_crc`` links it to every frame
  before it, across segments, so a deleted, duplicated, reordered or spliced frame
  breaks the chain even when each frame is individually intact.
* ``synced_lsn`` is the evidence that tells a torn tail from corruption (see
  ``wal_reader``): a valid frame found *after* damage whose ``synced_lsn`` reaches
  the damaged LSN proves the damaged record had been acknowledged.
"""

from __future__ import annotations

import struct
from enum import IntEnum

import attrs
import crc32c

from beaverq.model.errors import BrokenInvariant

HEADER = struct.Struct("<IBBHQQII")
HEADER_BYTES = HEADER.size
ALIGNMENT = 8
MAGIC = 0xB7E5
PAYLOAD_BYTES_MAX = 1 << 24  # 16 MiB: far above any event (limits.py caps payloads at 64 KiB)
_CRC_COVERED = struct.Struct("<IBBHQQ")  # the header bytes that frame_crc covers

if HEADER_BYTES != 32:
    raise BrokenInvariant("broken invariant: HEADER_BYTES == 32")
if HEADER_BYTES % ALIGNMENT != 0:
    raise BrokenInvariant("broken invariant: HEADER_BYTES % ALIGNMENT == 0")
if _CRC_COVERED.size != 24:
    raise BrokenInvariant("broken invariant: _CRC_COVERED.size == 24")


class RecordKind(IntEnum):
    EVENT = 1
    SEGMENT_HEADER = 2


@attrs.frozen
class Record:
    kind: RecordKind
    lsn: int
    synced_lsn: int
    payload: bytes
    offset: int  # where the frame starts in its file
    chain_crc: int
    size: int  # bytes the frame occupies, padding included


def padding_for(length: int) -> int:
    return -length % ALIGNMENT


def encode_frame(
    kind: RecordKind, lsn: int, synced_lsn: int, payload: bytes, previous_chain_crc: int
) -> tuple[bytes, int]:
    """The frame's bytes and its chain_crc (the seed for the next frame)."""
    if not (0 <= len(payload) <= PAYLOAD_BYTES_MAX):
        raise BrokenInvariant(f"a payload of {len(payload)} bytes (PAYLOAD_BYTES_MAX)")
    if not (0 <= synced_lsn <= lsn or kind is RecordKind.SEGMENT_HEADER):
        raise BrokenInvariant(f"frame at LSN {lsn} claims LSN {synced_lsn} durable")
    padding = padding_for(len(payload))
    covered = _CRC_COVERED.pack(len(payload), kind, padding, MAGIC, lsn, synced_lsn)
    frame_crc = crc32c.crc32c(payload, crc32c.crc32c(covered))
    chain_crc = crc32c.crc32c(frame_crc.to_bytes(4, "little"), previous_chain_crc)
    frame = b"".join((covered, struct.pack("<II", frame_crc, chain_crc), payload, bytes(padding)))
    if len(frame) % ALIGNMENT != 0:
        raise BrokenInvariant("broken invariant: len(frame) % ALIGNMENT == 0")
    return frame, chain_crc


@attrs.frozen
class FrameProblem:
    """Why the bytes at ``offset`` are not a valid frame."""

    offset: int
    reason: str


def decode_frame(data: bytes, offset: int, previous_chain_crc: int | None) -> Record | FrameProblem:
    """Decode the frame at ``offset``.  With ``previous_chain_crc`` None the chain is
    not checked (used to search for evidence beyond damage)."""
    if offset % ALIGNMENT != 0:
        raise BrokenInvariant(f"broken invariant: offset % ALIGNMENT == 0: {offset!r}")
    if len(data) - offset < HEADER_BYTES:
        return FrameProblem(
            offset, f"{len(data) - offset} bytes left, a header needs {HEADER_BYTES}"
        )
    length, kind, padding, magic, lsn, synced_lsn, frame_crc, chain_crc = HEADER.unpack_from(
        data, offset
    )
    if magic != MAGIC:
        return FrameProblem(offset, f"bad magic {magic:#06x}")
    if kind not in (RecordKind.EVENT, RecordKind.SEGMENT_HEADER):
        return FrameProblem(offset, f"unknown record kind {kind}")
    if length > PAYLOAD_BYTES_MAX or padding != padding_for(length):
        return FrameProblem(offset, f"implausible length {length} (padding {padding})")
    end = offset + HEADER_BYTES + length + padding
    if end > len(data):
        return FrameProblem(offset, f"frame of {end - offset} bytes overruns the file end")
    payload = data[offset + HEADER_BYTES : offset + HEADER_BYTES + length]
    expected = crc32c.crc32c(payload, crc32c.crc32c(data[offset : offset + _CRC_COVERED.size]))
    if expected != frame_crc:
        return FrameProblem(offset, f"frame CRC mismatch (stored {frame_crc:#010x})")
    if any(data[end - padding : end]):
        return FrameProblem(offset, "non-zero padding")
    if previous_chain_crc is not None:
        linked = crc32c.crc32c(frame_crc.to_bytes(4, "little"), previous_chain_crc)
        if linked != chain_crc:
            return FrameProblem(offset, "chain CRC mismatch: a frame before it is missing or moved")
    return Record(RecordKind(kind), lsn, synced_lsn, payload, offset, chain_crc, end - offset)


def is_zero(data: bytes, offset: int) -> bool:
    """Whether everything from ``offset`` on is zero bytes (preallocated, never written)."""
    return not data[offset:].strip(b"\0")


def find_valid_frames_after(data: bytes, offset: int) -> list[Record]:
    """Every individually valid frame that starts after ``offset``, at any aligned position.

    Used only when damage was found, to gather the ``synced_lsn`` evidence; frames
    found this way are never replayed.  The magic narrows the search to a few
    candidates, so scanning a whole segment costs one pass of ``bytes.find``.
    """
    found: list[Record] = []
    needle = MAGIC.to_bytes(2, "little")
    position = data.find(needle, offset + 1)
    while position != -1:
        start = position - 6  # the magic sits at byte 6 of a frame
        if start > offset and start % ALIGNMENT == 0:
            decoded = decode_frame(data, start, None)
            if isinstance(decoded, Record):
                found.append(decoded)
                # Skip the frame's body: bytes inside a valid frame's payload are
                # user data (an error message, say), never a frame of their own.
                position = data.find(needle, start + decoded.size)
                continue
        position = data.find(needle, position + 1)
    return found
