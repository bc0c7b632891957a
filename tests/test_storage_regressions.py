"""Regressions of the storage crash/replay machine, replayed deterministically.

Each test names the sequence of file-system states that the Hypothesis machine in
``tests/stateful/test_storage_crash.py`` shrank a failure to.
"""

from __future__ import annotations

import posixpath

import pytest
from sim.crashfs import NOTHING_UNSYNCED, CrashFS
from sim.workload import (
    DATA_DIR,
    History,
    Process,
    check_recovers_again,
    segment_paths,
    snapshot_paths,
    without_lock,
)

from beaverq.impl.storage.storage import Storage, StorageOptions
from beaverq.impl.storage.wal_reader import WalCorrupt
from beaverq.model import Enqueue


def _rot(disk: CrashFS, path: str) -> None:
    disk.corrupt(path, 60, bytes([disk.read(path)[60] ^ 0xFF]))


@pytest.mark.parametrize("restart_first", [True, False], ids=["header-only-segment-0", "plain"])
def test_fallback_snapshot_is_the_only_copy_of_the_log_start(restart_first: bool):
    """Goal: pin down the state behind the machine's failure "wal-1-0.log: the segment
    does not continue the log's chain" (and its twin "the log starts after LSN 3; the
    snapshot ends at 0"), and show that refusing it is right: it is a double fault.

    Method, as the machine shrank it (segments of 512 bytes, so most flushes rotate):
    segment 0 holds only its header (in one variant a restart before any event, so
    segment 1 also starts after LSN 0, its header chained from segment 0's header);
    events; snapshot S1; an event; snapshot S2, whose compaction deletes the segments
    that end before S1 (segment 0 among them).  Rot
    in S2: recovery falls back to S1 and sets S2 aside as ``S2.damaged``.  The
    directory now lists one snapshot, S1, but the log before S1 is gone: S1 is the
    only copy of the log's start.  Rot in S1 as well (the machine's second
    snapshot_rot: its double-fault guard did not see S2 once renamed, took S1 for
    a lone snapshot and expected a fallback to the whole log).  Nothing can rebuild
    the events up to S1, so recovery must refuse, name the first segment left, and
    change nothing; it must not start from the empty state.
    """
    options = StorageOptions(segment_bytes_max=512)
    process = Process(CrashFS(sector_bytes=512), History(), options)
    process.start(now_ms=0)
    if restart_first:
        # As the machine's run began: a restart before any event, so segment 0 holds
        # only its header and segment 1 starts after LSN 0 too, chained from it.
        process.close()
        process = Process(process.disk, process.history, options)
        process.start(now_ms=0)
    # One event before S1 keeps segment 1 (it holds S1's LSN) when S2 compacts.
    for now_ms in (1,) if restart_first else (1, 2, 3):
        process.command(Enqueue(now_ms=now_ms, handler="h"))
        process.flush()
    s1 = process.snapshot()
    process.command(Enqueue(now_ms=9, handler="h"))
    process.flush()
    s2 = process.snapshot()
    assert snapshot_paths(process.disk) == [s2, s1]
    first = segment_paths(process.disk)[0]
    assert not first.startswith(posixpath.join(DATA_DIR, "wal-0000000000000000-")), first

    # First fault: rot in S2.  Recovery falls back to S1 and sets S2 aside.
    _rot(process.disk, s2)
    process.died()
    process = Process(process.disk.crash(NOTHING_UNSYNCED), process.history, options)
    report = process.start(now_ms=5)
    assert report.snapshot_path == s1
    assert [path for path, _why in report.snapshots_skipped] == [s2]
    assert process.disk.exists(f"{s2}.damaged")
    assert snapshot_paths(process.disk) == [s1]  # the only intact copy of LSN <= 4
    assert process.state is not None and process.state.last_lsn == (2 if restart_first else 4)
    check_recovers_again(process.disk, process.state, options)

    # Second fault: rot in S1.  A double fault: refused, and nothing changes.
    _rot(process.disk, s1)
    process.died()
    rotted = process.disk.crash(NOTHING_UNSYNCED)
    before = without_lock(rotted.tree())
    with pytest.raises(WalCorrupt) as refused:
        Storage.open(rotted, DATA_DIR, options)
    assert refused.value.path == segment_paths(rotted)[0]
    # Said as what it is (segments missing before the first one), not as a chain break.
    assert "snapshot" in refused.value.reason, refused.value.reason
    if restart_first:
        assert refused.value.path.endswith("wal-0000000000000001-0000000000000000.log")
        assert "segments before it are missing" in refused.value.reason, refused.value.reason
    assert without_lock(rotted.tree()) == before
