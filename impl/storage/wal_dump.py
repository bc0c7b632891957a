"""``beaverq wal dump``: every WAL record decoded and printed, for teaching and debugging.

One line per frame: file offset, kind, LSN, the LSN known durable when it was
framed, its chain CRC, and the decoded event.  Damage is printed where it is
found and the dump stops there; nothing is changed.  Events are shown as they are
on disk: a segment of an older schema shows its events in that schema's shape,
marked ``(schema N)``, not upcast (upcasting needs the state; recovery does it).
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator

import attrs

from .codec import (
    SCHEMA_VERSION,
    SCHEMA_VERSIONS_READABLE,
    CodecError,
    decode_event,
    decode_schema1_event,
)
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
        schema_version = SCHEMA_VERSION
        while offset < len(data):
            decoded = decode_frame(data, offset, chain)
            if isinstance(decoded, FrameProblem):
                yield f"  @{offset:>8}  DAMAGE: {decoded.reason}; {len(data) - offset} bytes follow"
                break
            if decoded.kind is RecordKind.SEGMENT_HEADER:
                header = decode_segment_header(decoded.payload)
                if not isinstance(header, str):
                    schema_version = header.schema_version
            yield "  " + _describe(decoded, schema_version)
            chain, offset = decoded.chain_crc, offset + decoded.size


def _describe(record: Record, schema_version: int) -> str:
    prefix = (
        f"@{record.offset:>8}  lsn {record.lsn:>8}  synced {record.synced_lsn:>8}  "
        f"chain {record.chain_crc:08x}  "
    )
    if record.kind is RecordKind.SEGMENT_HEADER:
        header = decode_segment_header(record.payload)
        return prefix + f"SegmentHeader {header}"
    try:
        if schema_version == SCHEMA_VERSION:
            event: object = decode_event(record.payload)
            name, marker = type(event).__name__, ""
        elif schema_version == 1:
            event = decode_schema1_event(record.payload)
            name = type(event).__name__.removeprefix("Schema1")
            marker = f" (schema {schema_version})"
        else:  # newer than this code: never guessed at in an older shape
            return prefix + (
                f"UNDECODABLE: schema version {schema_version}; "
                f"this beaverq reads {sorted(SCHEMA_VERSIONS_READABLE)}"
            )
    except CodecError as error:
        return prefix + f"UNDECODABLE: {error}"
    fields = attrs.asdict(event, recurse=False)  # type: ignore[arg-type]
    fields.pop("lsn")
    shown = " ".join(f"{field}={value!r}" for field, value in fields.items())
    return prefix + f"{name}{marker} {shown}"
