"""``beaverq wal dump``: every WAL record decoded and printed, for teaching and debugging.

One line per frame: file offset, kind, LSN, the LSN known durable when it was
framed, its chain CRC, and the decoded event.  Damage is printed where it is
found and the dump stops there; nothing is changed.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator

import attrs

from .codec import CodecError, decode_event
from .fs import FileSystem
from .record import FrameProblem, Record, RecordKind, decode_frame
from .segments import decode_segment_header
from .wal_reader import list_segments


def dump_wal(fs: FileSystem, directory: str) -> Iterator[str]:
    for index, base_lsn, path in list_segments(fs, directory):
        data = fs.read(path)
        name = posixpath.basename(path)
        yield f"== {name} (segment {index}, after LSN {base_lsn}, {len(data)} bytes)"
        offset = 0
        chain: int | None = None
        while offset < len(data):
            decoded = decode_frame(data, offset, chain)
            if isinstance(decoded, FrameProblem):
                yield f"  @{offset:>8}  DAMAGE: {decoded.reason}; {len(data) - offset} bytes follow"
                break
            yield "  " + _describe(decoded)
            chain, offset = decoded.chain_crc, offset + decoded.size


def _describe(record: Record) -> str:
    prefix = (
        f"@{record.offset:>8}  lsn {record.lsn:>8}  synced {record.synced_lsn:>8}  "
        f"chain {record.chain_crc:08x}  "
    )
    if record.kind is RecordKind.SEGMENT_HEADER:
        header = decode_segment_header(record.payload)
        return prefix + f"SegmentHeader {header}"
    try:
        event = decode_event(record.payload)
    except CodecError as error:
        return prefix + f"UNDECODABLE: {error}"
    fields = attrs.asdict(event, recurse=False)
    fields.pop("lsn")
    shown = " ".join(f"{name}={value!r}" for name, value in fields.items())
    return prefix + f"{type(event).__name__} {shown}"
