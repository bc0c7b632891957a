"""Names and headers of WAL segment files.

A segment is ``wal-<index>-<base_lsn>.log`` (both 16 hex digits): ``index`` counts
segments from 0 without gaps, ``base_lsn`` is the LSN just before the segment's
first event.  Its first frame is a segment header (kind 2) whose payload is::

    magic b"BVQW" | format_version u32 | schema_version u32 | index u64 | base_lsn u64
    | previous_chain_crc u32 | reserved u32

``previous_chain_crc`` is the chain value of the last frame of the previous
segment (0 for the first segment of a new data directory), so the chain runs
unbroken across segments and the first surviving segment after compaction can
still be checked against the snapshot that replaced the deleted ones.
"""

from __future__ import annotations

import re
import struct

import attrs

FORMAT_VERSION = 1
SEGMENT_MAGIC = b"BVQW"
SEGMENT_HEADER = struct.Struct("<4sIIQQII")
_NAME = re.compile(r"wal-([0-9a-f]{16})-([0-9a-f]{16})\.log")


@attrs.frozen
class SegmentHeader:
    schema_version: int
    index: int
    base_lsn: int
    previous_chain_crc: int


def segment_name(index: int, base_lsn: int) -> str:
    return f"wal-{index:016x}-{base_lsn:016x}.log"


def parse_segment_name(name: str) -> tuple[int, int] | None:
    match = _NAME.fullmatch(name)
    if match is None:
        return None
    return int(match.group(1), 16), int(match.group(2), 16)


def encode_segment_header(header: SegmentHeader) -> bytes:
    return SEGMENT_HEADER.pack(
        SEGMENT_MAGIC,
        FORMAT_VERSION,
        header.schema_version,
        header.index,
        header.base_lsn,
        header.previous_chain_crc,
        0,
    )


def decode_segment_header(payload: bytes) -> SegmentHeader | str:
    """The header, or a sentence saying what is wrong with it."""
    if len(payload) != SEGMENT_HEADER.size:
        return f"segment header of {len(payload)} bytes, expected {SEGMENT_HEADER.size}"
    magic, version, schema, index, base_lsn, chain, _reserved = SEGMENT_HEADER.unpack(payload)
    if magic != SEGMENT_MAGIC:
        return f"bad segment magic {magic!r}"
    if version != FORMAT_VERSION:
        return f"WAL format version {version}; this beaverq reads version {FORMAT_VERSION}"
    return SegmentHeader(schema, index, base_lsn, chain)
