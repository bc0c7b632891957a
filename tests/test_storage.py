"""Storage (impl/storage/storage.py): open, append, flush, snapshot, compact, close, reopen.

Storage makes no lifecycle decision: what it recovers must be exactly the model's
fold of the events it was given, whatever the batching, segment size, snapshots
and reopenings along the way.  Snapshots keep the two newest; compaction deletes
only what the older of the two makes redundant, so that the older one plus the
WAL after it still recovers the same state.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
from hypothesis import given
from hypothesis import strategies as st
from storage_support import (
    NoSyncFS,
    files_of,
    fold,
    frames_of,
    reopen,
    scratch_directory,
    segment_paths,
    toggle_events,
    workload_events,
    write_log,
)
from strategies import histories

from beaverq.impl.storage.codec import SCHEMA_VERSION
from beaverq.impl.storage.fs import RealFileSystem, StorageError
from beaverq.impl.storage.record import RecordKind, encode_frame
from beaverq.impl.storage.segments import (
    SEGMENT_HEADER,
    decode_segment_header,
    parse_segment_name,
)
from beaverq.impl.storage.snapshot import decode_snapshot, list_snapshots
from beaverq.impl.storage.storage import LOCK_NAME, Storage, StorageOptions
from beaverq.impl.storage.wal_reader import read_wal
from beaverq.model import evolve, initial_state
from beaverq.model.errors import BrokenInvariant


@pytest.fixture
def scratch(tmp_path):
    with scratch_directory(str(tmp_path)) as path:
        yield path


@pytest.fixture(scope="module")
def shared_scratch(tmp_path_factory):
    """One directory for every example of a property test (each uses a fresh
    subdirectory and removes it)."""
    with scratch_directory(str(tmp_path_factory.mktemp("storage"))) as path:
        yield path


def test_open_creates_a_new_data_directory(tmp_path):
    """Goal: opening a path that does not exist creates the data directory, with a
    lock file naming this process and a first segment holding only its header;
    the state is the initial one and the report says nothing was found.

    Method: open a fresh path on the real file system and inspect the files.
    """
    directory = str(tmp_path / "new")
    fs = RealFileSystem()
    storage, state, report = Storage.open(fs, directory)
    try:
        assert state == initial_state()
        assert report.snapshot_path is None and report.snapshot_lsn == 0
        assert report.records_replayed == 0 and report.last_lsn == 0
        assert report.torn_tail is None and report.cut_copy_path is None
        assert report.snapshots_skipped == () and report.temporary_files_removed == ()
        names = sorted(os.listdir(directory))
        assert names == [LOCK_NAME, "wal-0000000000000000-0000000000000000.log"]
        with open(os.path.join(directory, LOCK_NAME)) as file:
            assert file.read().strip() == str(os.getpid())
        (header,) = frames_of((tmp_path / "new" / names[1]).read_bytes())
        assert header.kind is RecordKind.SEGMENT_HEADER
        assert decode_segment_header(header.payload).schema_version == SCHEMA_VERSION
    finally:
        storage.close()
        fs.close()


@st.composite
def sessions(draw):
    """A reachable history cut into sessions (open .. close), each a list of steps:
    ("batch", events) appends and flushes, ("snapshot",) takes a snapshot."""
    events, _states = draw(histories(max_commands=30))
    found = []
    position = 0
    for _ in range(draw(st.integers(1, 4))):
        steps = []
        for _ in range(draw(st.integers(0, 5))):
            if draw(st.integers(0, 3)) == 0:
                steps.append(("snapshot",))
            else:
                size = draw(st.integers(1, 5))
                steps.append(("batch", events[position : position + size]))
                position += size
        found.append(steps)
    found.append([("batch", events[position:])])
    return found


def _segment_spans(directory):
    """path -> (base LSN, last LSN) of every segment (a header-only one: base, base)."""
    spans = {}
    for path in segment_paths(directory):
        with open(path, "rb") as file:
            records = frames_of(file.read())
        spans[path] = (records[0].lsn, records[-1].lsn)
    return spans


@given(sessions(), st.sampled_from([200, 600, 1 << 20]))
def test_reopen_recovers_the_fold_and_compaction_keeps_what_the_older_snapshot_needs(
    shared_scratch, sessions_, segment_bytes_max
):
    """Goal: across sessions of appends, flushes, snapshots and reopenings, every
    recovery equals the fold of the events written so far, and every snapshot
    leaves exactly the two newest snapshots and deletes only segments entirely
    covered by the older one, which with the WAL after it still recovers.

    Method: random reachable histories split into sessions; after each
    take_snapshot: the snapshot files are the two newest LSNs snapshotted; every
    deleted segment's events are all at or before the older snapshot's LSN; every
    kept segment but the last ends at or after it; reading the WAL from the older
    snapshot's LSN and chain value succeeds.  After each reopen: the state is the
    fold, and the report's snapshot LSN, records replayed and last LSN agree with
    the snapshots taken.
    """
    directory = tempfile.mkdtemp(dir=shared_scratch)
    try:
        _run_sessions(directory, sessions_, segment_bytes_max)
    finally:
        shutil.rmtree(directory)


def _run_sessions(directory, sessions_, segment_bytes_max):
    options = StorageOptions(segment_bytes_max=segment_bytes_max)
    written = []
    snapshot_lsns = []
    for steps in sessions_:
        fs = NoSyncFS()
        storage, state, report = Storage.open(fs, directory, options)
        assert state == fold(written)
        newest = snapshot_lsns[-1] if snapshot_lsns else 0
        assert report.snapshot_lsn == newest
        assert report.records_replayed == len(written) - newest
        assert report.last_lsn == len(written)
        for step in steps:
            if step[0] == "batch":
                storage.append(step[1])
                storage.flush()
                for event in step[1]:
                    state = evolve(state, event)
                written += step[1]
                continue
            before = _segment_spans(directory)
            storage.take_snapshot(state)
            if not snapshot_lsns or snapshot_lsns[-1] != state.last_lsn:
                snapshot_lsns.append(state.last_lsn)
            _check_compaction(directory, before, snapshot_lsns)
        storage.close()
        fs.close()
    state, report = reopen(directory)
    assert state == fold(written)


def _check_compaction(directory, before, snapshot_lsns):
    snapshots = list_snapshots(RealFileSystem(), directory)
    assert [snapshot.lsn for snapshot in snapshots] == snapshot_lsns[::-1][:2]
    if len(snapshots) < 2:
        assert set(before) <= set(segment_paths(directory))
        return
    older = snapshots[-1]
    after = _segment_spans(directory)
    for path, (_base, last) in before.items():
        if path not in after:
            assert last <= older.lsn, (path, older.lsn)
    kept = sorted(after)
    for path in kept[:-1]:
        assert after[path][1] >= older.lsn, (path, older.lsn)
    with open(older.path, "rb") as file:
        loaded = decode_snapshot(file.read(), older.path)
    read_wal(NoSyncFS(), directory, after_lsn=older.lsn, after_chain_crc=loaded.chain_crc)


def test_recovery_after_snapshots_replays_only_the_tail(scratch):
    """Goal: recovery loads the newest snapshot and replays exactly the events after
    it; the report says so.

    Method: write the workload in two sessions with a snapshot in each, more events
    after the second; reopen: snapshot_lsn is the second snapshot's, the number
    of records replayed is the events after it, the state is the fold.
    """
    directory = os.path.join(scratch, "data")
    events = workload_events()
    fs = NoSyncFS()
    storage, state, _report = Storage.open(fs, directory)
    for start, end in [(0, 4), (4, 9)]:
        storage.append(events[start:end])
        storage.flush()
        state = fold(events[:end])
        storage.take_snapshot(state)
    storage.append(events[9:])
    storage.close()  # close flushes
    fs.close()
    state, report = reopen(directory)
    assert state == fold(events)
    assert report.snapshot_lsn == 9
    assert report.snapshot_path.endswith("snapshot-0000000000000009.snap")
    assert report.records_replayed == len(events) - 9
    assert report.last_lsn == len(events)


def test_recovery_never_rewrites_an_existing_segment(scratch):
    """Goal: opening continues in a fresh segment; no byte of an older segment
    changes, so a crash during recovery or after it cannot damage what was there.

    Method: write events, record every segment's bytes, reopen and append more
    three times; every recorded segment still holds the same bytes, each open
    added exactly one segment, and the state is the fold of everything.
    """
    directory = os.path.join(scratch, "data")
    events = workload_events()
    write_log(directory, events[:8], (3,))
    written = list(events[:8])
    for round_ in range(3):
        old = {path: data for path, data in files_of(directory).items() if path.startswith("wal")}
        state = fold(written)
        new = toggle_events(state, 2, now_ms=500_000 + 10 * round_)
        write_log(directory, new, (2,))
        written += new
        now = files_of(directory)
        assert all(now[path] == data for path, data in old.items())
        added = [name for name in now if name.startswith("wal") and name not in old]
        assert len(added) == 1
    assert reopen(directory)[0] == fold(written)


def test_a_snapshot_of_a_state_that_is_not_the_durable_log_is_refused(scratch):
    """Goal: take_snapshot only accepts the state of exactly the durable log.

    Method: append events, then ask for a snapshot of the state before them
    (take_snapshot flushes first, so the durable log is ahead): BrokenInvariant,
    and no snapshot file appears.
    """
    directory = os.path.join(scratch, "data")
    fs = NoSyncFS()
    storage, state, _report = Storage.open(fs, directory)
    storage.append(workload_events()[:3])
    with pytest.raises(BrokenInvariant):
        storage.take_snapshot(state)
    assert list_snapshots(fs, directory) == []
    storage.close()
    fs.close()


def _rewrite_single_segment(path, patch_header):
    """Re-frame a whole segment with its header payload patched (every frame's CRC
    and chain recomputed): an intact segment as another version would write it."""
    with open(path, "rb") as file:
        records = frames_of(file.read())
    chain = 0
    parts = []
    for record in records:
        payload = record.payload
        if record.kind is RecordKind.SEGMENT_HEADER:
            payload = patch_header(payload)
        frame, chain = encode_frame(record.kind, record.lsn, record.synced_lsn, payload, chain)
        parts.append(frame)
    with open(path, "wb") as file:
        file.write(b"".join(parts))


@pytest.mark.parametrize(
    ("field", "words"),
    [(1, "WAL format version 9"), (2, "WAL schema version 9")],
    ids=["format", "schema"],
)
def test_a_wal_of_another_version_is_refused(scratch, field, words):
    """Goal: a WAL segment written by another format or schema version stops
    recovery with a StorageError naming the versions; nothing changes.

    Method: a one-segment log whose header is re-framed with version 9 in the
    format or schema field (all CRCs valid); open.
    """
    directory = os.path.join(scratch, "data")
    write_log(directory, workload_events()[:4], (2,))
    (path,) = segment_paths(directory)

    def patch(payload):
        fields = list(SEGMENT_HEADER.unpack(payload))
        fields[field] = 9
        return SEGMENT_HEADER.pack(*fields)

    _rewrite_single_segment(path, patch)
    assert parse_segment_name(os.path.basename(path)) == (0, 0)
    before = files_of(directory)
    fs = NoSyncFS()
    with pytest.raises(StorageError) as caught:
        Storage.open(fs, directory)
    fs.close()
    assert words in str(caught.value)
    assert files_of(directory) == before


def test_a_snapshot_ahead_of_the_log_is_refused(scratch):
    """Goal: when the WAL ends before the newest snapshot's LSN (segments after an
    early one are missing), recovery refuses with WalCorrupt, as read_wal's check
    "the log ends at LSN n, before the snapshot's m" intends, instead of carrying
    on and writing a segment that the next open refuses.

    Method: write 6 events, reopen, write 6 more, snapshot at 12, close; delete
    every segment but the first (which ends at LSN 6); open must refuse, and the
    directory must be unchanged.
    """
    directory = os.path.join(scratch, "data")
    events = workload_events()
    write_log(directory, events[:6], (3,))
    fs = NoSyncFS()
    storage, _state, _report = Storage.open(fs, directory)
    storage.append(events[6:12])
    storage.flush()
    storage.take_snapshot(fold(events[:12]))
    storage.close()
    fs.close()
    _first, *rest = segment_paths(directory)
    for path in rest:
        os.unlink(path)
    before = files_of(directory)
    fs = NoSyncFS()
    try:
        with pytest.raises(StorageError, match="before the snapshot"):
            opened = Storage.open(fs, directory)
            opened[0].close()
    finally:
        fs.close()
    assert files_of(directory) == before
