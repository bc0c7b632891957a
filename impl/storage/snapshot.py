"""Snapshots: the whole state at one LSN, written atomically, read back verified.

File ``snapshot-<lsn, 16 hex digits>.snap``::

    offset size field
         0    8 magic           b"BVQSNAP\\0"
         8    4 format_version  of this file layout (1)
        12    4 schema_version  of the encoded checkpoint (impl/storage/codec.py)
        16    8 lsn             the last event the snapshot includes
        24    4 chain_crc       the WAL chain value at ``lsn`` (record.py)
        28    4 compression     0 = none, 1 = zlib
        32    8 body_length     bytes of body as stored
        40    4 body_crc        CRC-32C of the stored body
        44    4 header_crc      CRC-32C of bytes 0..43
        48    n body            the encoded checkpoint, compressed or not

Write order, and why each step: write ``<name>.tmp`` and fsync it (the data is
durable before any name points at it); rename it to ``<name>`` (atomic: a reader
sees the old set of snapshots or the new one, never half a file); fsync the
directory (the rename itself is durable).  Only after that may anything the
snapshot replaces (older snapshots, WAL segments) be deleted; storage.py does so.
"""

from __future__ import annotations

import posixpath
import re
import struct
import zlib

import attrs
import crc32c

from beaverq.model.errors import BrokenInvariant

from .fs import FileSystem, StorageError

MAGIC = b"BVQSNAP\0"
FORMAT_VERSION = 1
HEADER = struct.Struct("<8sIIQIIQII")
COMPRESSIONS = {"none": 0, "zlib": 1}
_NAME = re.compile(r"snapshot-([0-9a-f]{16})\.snap")

if HEADER.size != 48:
    raise BrokenInvariant("broken invariant: HEADER.size == 48")


class SnapshotVersionError(StorageError):
    """A snapshot written by another version of beaverq: refuse, never guess."""


@attrs.frozen
class SnapshotFile:
    path: str
    lsn: int


@attrs.frozen
class LoadedSnapshot:
    path: str
    lsn: int
    chain_crc: int
    schema_version: int
    body: bytes  # decompressed, verified


def snapshot_name(lsn: int) -> str:
    return f"snapshot-{lsn:016x}.snap"


def list_snapshots(fs: FileSystem, directory: str) -> list[SnapshotFile]:
    """Snapshot files, newest (highest LSN) first."""
    found = []
    for name in fs.list_dir(directory):
        match = _NAME.fullmatch(name)
        if match is not None:
            found.append(SnapshotFile(posixpath.join(directory, name), int(match.group(1), 16)))
    return sorted(found, key=lambda snapshot: snapshot.lsn, reverse=True)


def encode_snapshot(
    lsn: int, chain_crc: int, schema_version: int, body: bytes, compression: str = "none"
) -> bytes:
    code = COMPRESSIONS[compression]
    stored = zlib.compress(body, 1) if code == 1 else body
    header = HEADER.pack(
        MAGIC,
        FORMAT_VERSION,
        schema_version,
        lsn,
        chain_crc,
        code,
        len(stored),
        crc32c.crc32c(stored),
        0,
    )
    header = header[:-4] + crc32c.crc32c(header[:-4]).to_bytes(4, "little")
    return header + stored


def decode_snapshot(data: bytes, path: str) -> LoadedSnapshot | str:
    """The verified snapshot, or a sentence naming what is wrong (a damaged file).

    Raises ``SnapshotVersionError`` for an intact file of another version.
    """
    if len(data) < HEADER.size:
        return f"{len(data)} bytes, shorter than the {HEADER.size}-byte header"
    magic, version, schema, lsn, chain, code, length, body_crc, header_crc = HEADER.unpack_from(
        data
    )
    if magic != MAGIC:
        return "bad magic"
    if crc32c.crc32c(data[: HEADER.size - 4]) != header_crc:
        return "header CRC mismatch"
    if version != FORMAT_VERSION:
        raise SnapshotVersionError(
            f"{path}: snapshot format version {version}; this beaverq reads {FORMAT_VERSION}"
        )
    stored = data[HEADER.size :]
    if len(stored) != length:
        return f"body of {len(stored)} bytes, header says {length}"
    if crc32c.crc32c(stored) != body_crc:
        return "body CRC mismatch"
    if code not in COMPRESSIONS.values():
        return f"unknown compression {code}"
    body = zlib.decompress(stored) if code == 1 else stored
    return LoadedSnapshot(path, lsn, chain, schema, body)


class SnapshotFailed(StorageError, OSError):
    """Writing a snapshot failed (a full disk, say).  Nothing is lost: the WAL still
    holds every event; the temporary file is gone.  An ``OSError`` still, as the
    failure it wraps, for callers that catch those."""


def write_snapshot(fs: FileSystem, directory: str, lsn: int, data: bytes) -> str:
    """Write ``data`` (an encoded snapshot) durably under its final name; return the path.

    A failure removes the temporary file before it raises ``SnapshotFailed``: on a
    nearly full disk, each retry (at a new LSN, so under a new name) would otherwise
    leave one more behind, and they would fill the disk the WAL needs."""
    final = posixpath.join(directory, snapshot_name(lsn))
    temporary = final + ".tmp"
    try:
        if fs.exists(temporary):
            fs.unlink(temporary)
        fs.create(temporary)
        fs.append(temporary, data)
        fs.fsync(temporary)
    except OSError as error:
        removed = _remove_quietly(fs, directory, temporary)
        raise SnapshotFailed(
            f"{final}: cannot write the snapshot ({error.strerror or error}); "
            + ("its temporary file was removed" if removed else f"{temporary} is left over")
            + "; the WAL still holds every event"
        ) from error
    fs.rename(temporary, final)
    fs.fsync_dir(directory)
    return final


def remove_temporary_files(fs: FileSystem, directory: str) -> list[str]:
    """Delete ``*.snap.tmp`` left by a crash mid-write (never renamed, so never valid)."""
    removed = []
    for name in fs.list_dir(directory):
        if name.startswith("snapshot-") and name.endswith(".snap.tmp"):
            fs.unlink(posixpath.join(directory, name))
            removed.append(name)
    if removed:
        fs.fsync_dir(directory)
    return removed


def _remove_quietly(fs: FileSystem, directory: str, path: str) -> bool:
    """Remove a failed write's file; True if it is gone.  A failure here is not
    raised over the one being reported (recovery removes any ``.snap.tmp`` anyway)."""
    try:
        if fs.exists(path):
            fs.unlink(path)
            fs.fsync_dir(directory)
    except OSError:
        return False
    return True
