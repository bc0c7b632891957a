"""Snapshots (impl/storage/snapshot.py) and recovery's use of them (impl/storage/storage.py).

A snapshot is written to a temporary name, fsynced, renamed into place and the
directory fsynced, so a reader sees a whole snapshot or none.  Its header and body
carry CRCs: a damaged newest snapshot is skipped (and reported), and recovery
falls back to the older one plus the longer WAL tail behind it, reaching the same
state.  A snapshot that is intact but of another format or schema version is
refused outright, with a message naming the file and both versions: guessing, or
silently falling back past it, could lose what only it holds.
"""

from __future__ import annotations

import os
import zlib

import crc32c
import pytest
from hypothesis import given
from hypothesis import strategies as st
from storage_support import (
    NoSyncFS,
    files_of,
    fold,
    reopen,
    scratch_directory,
    workload_events,
    write_log,
)

from beaverq.impl.storage.codec import SCHEMA_VERSION
from beaverq.impl.storage.fs import RealFileSystem, StorageError
from beaverq.impl.storage.snapshot import (
    COMPRESSIONS,
    FORMAT_VERSION,
    HEADER,
    LoadedSnapshot,
    SnapshotVersionError,
    decode_snapshot,
    encode_snapshot,
    list_snapshots,
    snapshot_name,
    write_snapshot,
)
from beaverq.impl.storage.storage import Storage, StorageOptions
from beaverq.impl.storage.wal_reader import WalCorrupt
from beaverq.model import evolve

# -- The file format. -----------------------------------------------------------------------


@given(
    st.binary(max_size=2000),
    st.integers(0, 2**63 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.sampled_from(sorted(COMPRESSIONS)),
)
def test_a_snapshot_decodes_to_what_was_encoded(body, lsn, chain, schema, compression):
    """Goal: decode(encode(snapshot)) gives back the LSN, chain value, schema version
    and body, with either compression.

    Method: random bodies (including empty and repetitive ones) and header values;
    the header's compression code is the one asked for.
    """
    data = encode_snapshot(lsn, chain, schema, body, compression)
    assert HEADER.unpack_from(data)[5] == COMPRESSIONS[compression]
    assert decode_snapshot(data, "snap") == LoadedSnapshot("snap", lsn, chain, schema, body)


def test_zlib_compresses_a_repetitive_body():
    """Goal: "zlib" is real compression (a repetitive body shrinks), "none" stores as is.

    Method: encode 10 kB of repeated bytes both ways and compare the sizes.
    """
    body = b"job-row " * 1250
    plain = encode_snapshot(1, 0, SCHEMA_VERSION, body, "none")
    packed = encode_snapshot(1, 0, SCHEMA_VERSION, body, "zlib")
    assert len(plain) == HEADER.size + len(body)
    assert len(packed) < len(body) // 10
    assert zlib.decompress(packed[HEADER.size :]) == body


def _small_snapshot():
    return encode_snapshot(7, 0x1234, SCHEMA_VERSION, b"body of the snapshot", "none")


def test_every_damaged_byte_or_cut_makes_the_file_invalid():
    """Goal: a snapshot with any byte changed, or cut short anywhere, is reported
    damaged (a reason, not a snapshot and not an exception).

    The version fields are covered by the header CRC, so a damaged version byte
    is damage, not a version mismatch.

    Method: flip every byte of a small snapshot, and cut it at every length.
    """
    data = _small_snapshot()
    for offset in range(len(data)):
        damaged = bytearray(data)
        damaged[offset] ^= 0x01
        assert isinstance(decode_snapshot(bytes(damaged), "snap"), str), offset
    for end in range(len(data)):
        assert isinstance(decode_snapshot(data[:end], "snap"), str), end


def _patched(data, field, value):
    """``data`` with one header field replaced and the header CRC recomputed: an
    intact snapshot as another version of beaverq would write it."""
    fields = list(HEADER.unpack_from(data))
    fields[field] = value
    header = HEADER.pack(*fields)
    header = header[:-4] + crc32c.crc32c(header[:-4]).to_bytes(4, "little")
    return header + data[HEADER.size :]


FORMAT_FIELD, SCHEMA_FIELD = 1, 2


def test_another_format_version_is_refused_not_taken_for_damage():
    """Goal: an intact header of another format version raises SnapshotVersionError
    naming the file and both versions.

    Method: patch the format version of a valid snapshot and recompute the header CRC.
    """
    data = _patched(_small_snapshot(), FORMAT_FIELD, FORMAT_VERSION + 1)
    with pytest.raises(SnapshotVersionError) as caught:
        decode_snapshot(data, "the/path.snap")
    message = str(caught.value)
    assert "the/path.snap" in message
    assert f"version {FORMAT_VERSION + 1}" in message and str(FORMAT_VERSION) in message


# -- Writing. -------------------------------------------------------------------------------


class RecordingFS(RealFileSystem):
    """RealFileSystem that records every call that changes the disk or its durability."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def _record(self, name, *paths):
        self.calls.append((name, *(os.path.basename(path) for path in paths)))

    def create(self, path):
        self._record("create", path)
        super().create(path)

    def append(self, path, data):
        self._record("append", path)
        super().append(path, data)

    def fsync(self, path):
        self._record("fsync", path)
        super().fsync(path)

    def fsync_dir(self, path):
        self._record("fsync_dir", path)
        super().fsync_dir(path)

    def rename(self, source, target):
        self._record("rename", source, target)
        super().rename(source, target)

    def unlink(self, path):
        self._record("unlink", path)
        super().unlink(path)


@pytest.mark.parametrize("stale_temporary", [False, True])
def test_a_snapshot_is_written_to_a_temporary_file_then_renamed(tmp_path, stale_temporary):
    """Goal: the snapshot's bytes are durable under a temporary name before the
    final name points at them, and the rename is made durable.

    Method: record the calls of write_snapshot on the real file system: create the
    temporary file, write, fsync it, rename it over the final name, fsync the
    directory, in that order.  A temporary file left by an earlier crash is
    removed first.  Afterwards the final file holds exactly the data and no
    temporary file remains.
    """
    directory = str(tmp_path)
    final = snapshot_name(7)
    temporary = final + ".tmp"
    if stale_temporary:
        (tmp_path / temporary).write_bytes(b"half a snapshot")
    fs = RecordingFS()
    data = _small_snapshot()
    path = write_snapshot(fs, directory, 7, data)
    expected = [
        ("create", temporary),
        ("append", temporary),
        ("fsync", temporary),
        ("rename", temporary, final),
        ("fsync_dir", os.path.basename(directory)),
    ]
    if stale_temporary:
        expected.insert(0, ("unlink", temporary))
    assert fs.calls == expected
    assert path == os.path.join(directory, final)
    assert (tmp_path / final).read_bytes() == data
    assert sorted(os.listdir(directory)) == [final]
    fs.close()


# -- Recovery from snapshots. ---------------------------------------------------------------


@pytest.fixture
def scratch(tmp_path):
    with scratch_directory(str(tmp_path)) as path:
        yield path


def _two_snapshots(directory, compression="none"):
    """A data directory: events, snapshot, events, snapshot, events; returns the
    events and the two snapshot paths (older, newer)."""
    events = workload_events()
    options = StorageOptions(segment_bytes_max=700, snapshot_compression=compression)
    fs = NoSyncFS()
    storage, state, _report = Storage.open(fs, directory, options)
    paths = []
    for start, end in [(0, 5), (5, 11), (11, len(events))]:
        storage.append(events[start:end])
        storage.flush()
        for event in events[start:end]:
            state = evolve(state, event)
        if end < len(events):
            paths.append(storage.take_snapshot(state))
    storage.close()
    fs.close()
    assert [snapshot.path for snapshot in list_snapshots(RealFileSystem(), directory)] == [
        paths[1],
        paths[0],
    ]
    return events, paths


def _check_fallback(directory, events, older, newer):
    state, report = reopen(directory)
    assert state == fold(events)
    assert [path for path, _reason in report.snapshots_skipped] == [newer]
    assert report.snapshot_path == older
    assert report.snapshot_lsn == 5
    assert report.records_replayed == len(events) - 5
    return report


def _flip(path, offset):
    with open(path, "r+b") as file:
        file.seek(offset)
        byte = file.read(1)
        file.seek(offset)
        file.write(bytes([byte[0] ^ 0x01]))


@pytest.mark.parametrize("compression", sorted(COMPRESSIONS))
def test_a_damaged_newest_snapshot_falls_back_to_the_older_one(scratch, compression):
    """Goal: with the newest snapshot damaged in its header or its body, recovery
    skips it (reporting why), loads the older one and replays the longer WAL tail
    after it, reaching the same state as the fold of the whole log.

    Method: build a directory with snapshots at LSN 5 and 11 and events after; for
    every header byte and a spread of body bytes of the newest, flip the byte in a
    fresh copy and recover.  Cutting the file short is damage too.
    """
    template = os.path.join(scratch, "template")
    events, (older, newer) = _two_snapshots(template, compression)
    size = os.path.getsize(newer)
    offsets = [*range(HEADER.size), *range(HEADER.size, size, 37), size - 1]
    reasons = set()
    for number, offset in enumerate(offsets):
        directory = os.path.join(scratch, f"copy-{number}")
        _copy(template, directory)
        _flip(os.path.join(directory, os.path.basename(newer)), offset)
        report = _check_fallback(
            directory,
            events,
            os.path.join(directory, os.path.basename(older)),
            os.path.join(directory, os.path.basename(newer)),
        )
        reasons.add(report.snapshots_skipped[0][1])
    assert {"header CRC mismatch", "body CRC mismatch", "bad magic"} <= reasons
    directory = os.path.join(scratch, "cut")
    _copy(template, directory)
    os.truncate(os.path.join(directory, os.path.basename(newer)), size - 1)
    _check_fallback(
        directory,
        events,
        os.path.join(directory, os.path.basename(older)),
        os.path.join(directory, os.path.basename(newer)),
    )


def test_fallback_works_when_the_older_snapshot_was_taken_right_after_open(scratch):
    """Goal: the fallback to the older snapshot works whatever the WAL looked like
    when that snapshot was taken, including right after an open, before any event.

    Why it matters: each open starts a new segment with only its header, and
    ``take_snapshot`` rotates again, so the segment after such a snapshot is
    chained from a segment header, not from the snapshot's last event.  Compaction
    by the next snapshot deletes the header-only segment; the remaining one must
    still be readable from the older snapshot.

    Method: write events, close, reopen, take a snapshot at once, write events,
    take a second snapshot, write events, close; damage the newest snapshot's
    body; recovery must fall back to the older one and reach the fold of the log.
    """
    directory = os.path.join(scratch, "data")
    events = workload_events()
    write_log(directory, events[:5], (2,))
    fs = NoSyncFS()
    storage, state, _report = Storage.open(fs, directory)
    older = storage.take_snapshot(state)  # no event in the current segment yet
    storage.append(events[5:11])
    storage.flush()
    state = fold(events[:11])
    newer = storage.take_snapshot(state)
    storage.append(events[11:])
    storage.flush()
    storage.close()
    fs.close()
    intact = os.path.join(scratch, "intact")
    _copy(directory, intact)
    assert reopen(intact)[0] == fold(events)  # undamaged, from the newest snapshot
    _flip(newer, HEADER.size + 3)
    _check_fallback(directory, events, older, newer)


def _copy(source, target):
    os.makedirs(target)
    for name, data in files_of(source).items():
        with open(os.path.join(target, name), "wb") as file:
            file.write(data)


@pytest.mark.parametrize(
    ("field", "error", "words"),
    [
        (FORMAT_FIELD, SnapshotVersionError, "format version"),
        (SCHEMA_FIELD, StorageError, "schema version"),
    ],
    ids=["format", "schema"],
)
def test_a_version_mismatch_is_refused_without_fallback(scratch, field, error, words):
    """Goal: an intact newest snapshot of another format or schema version stops
    recovery with an error naming the file and the versions; recovery does not
    fall back to the older snapshot (that would silently ignore what the newer
    one holds), and nothing in the directory changes.

    Method: patch the version in the newest snapshot's header, recompute the
    header CRC, and open.
    """
    directory = os.path.join(scratch, "data")
    _events, (_older, newer) = _two_snapshots(directory)
    current = FORMAT_VERSION if field == FORMAT_FIELD else SCHEMA_VERSION
    with open(newer, "rb") as file:
        data = file.read()
    with open(newer, "wb") as file:
        file.write(_patched(data, field, current + 41))
    before = files_of(directory)
    fs = NoSyncFS()
    with pytest.raises(error) as caught:
        Storage.open(fs, directory)
    fs.close()
    message = str(caught.value)
    assert newer in message and words in message
    assert str(current + 41) in message and str(current) in message
    assert files_of(directory) == before


def test_leftover_temporary_snapshots_are_removed_at_open(scratch):
    """Goal: ``*.snap.tmp`` files (a crash between write and rename) are deleted at
    open and reported, and are never loaded, even when their content is a valid
    snapshot of a later LSN.

    Method: beside a normal directory, leave a garbage temporary file and a
    complete valid snapshot under a temporary name at a higher LSN; open; both are
    gone, the report names them, and the state is the fold of the log.
    """
    directory = os.path.join(scratch, "data")
    events, (_older, newer) = _two_snapshots(directory)
    garbage = snapshot_name(3) + ".tmp"
    valid_but_unrenamed = snapshot_name(999) + ".tmp"
    with open(os.path.join(directory, garbage), "wb") as file:
        file.write(b"half a snap")
    with (
        open(newer, "rb") as source,
        open(os.path.join(directory, valid_but_unrenamed), "wb") as file,
    ):
        file.write(source.read())
    state, report = reopen(directory)
    assert state == fold(events)
    assert sorted(report.temporary_files_removed) == sorted([garbage, valid_but_unrenamed])
    assert report.snapshot_path == newer
    assert not [name for name in os.listdir(directory) if name.endswith(".tmp")]


def test_zlib_snapshots_round_trip_through_storage(scratch):
    """Goal: with snapshot_compression="zlib", snapshots are stored compressed and
    recovery from them gives the fold of the log.

    Method: build the two-snapshot directory with zlib; both files carry
    compression code 1 and are smaller than the same snapshot uncompressed; reopen.
    """
    directory = os.path.join(scratch, "data")
    events, paths = _two_snapshots(directory, "zlib")
    for path in paths:
        with open(path, "rb") as file:
            data = file.read()
        loaded = decode_snapshot(data, path)
        assert HEADER.unpack_from(data)[5] == COMPRESSIONS["zlib"]
        assert len(data) < HEADER.size + len(loaded.body)
    state, report = reopen(directory)
    assert state == fold(events)
    assert report.snapshot_path == paths[1]


def test_with_every_snapshot_damaged_recovery_refuses_rather_than_start_empty(scratch):
    """Goal: when every snapshot is damaged and the WAL no longer reaches back to
    LSN 0 (compaction deleted the segments the older snapshot covered), recovery
    refuses with WalCorrupt; it never starts from an empty state.

    Method: damage the body of both snapshots of the two-snapshot directory (whose
    first segment was compacted away) and open.
    """
    directory = os.path.join(scratch, "data")
    _events, paths = _two_snapshots(directory)
    assert not os.path.exists(os.path.join(directory, "wal-0000000000000000-0000000000000000.log"))
    for path in paths:
        _flip(path, HEADER.size + 1)
    before = files_of(directory)
    fs = NoSyncFS()
    with pytest.raises(WalCorrupt, match="starts after"):
        Storage.open(fs, directory)
    fs.close()
    assert files_of(directory) == before
