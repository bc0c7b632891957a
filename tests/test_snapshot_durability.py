"""``write_snapshot`` under the crashable file system: durable when it returns, atomic before.

``tests/test_snapshot.py`` checks the order of the calls ``write_snapshot`` makes on the
real file system.  These tests check what the order is for, against every crash state
the fault model of ``tests/sim/crashfs.py`` allows:

* once ``write_snapshot`` has returned, every crash leaves the snapshot under its final
  name with exactly the bytes written (the file's data was fsynced before the rename,
  and the rename itself was made durable by the directory fsync);
* a crash at any point *during* ``write_snapshot`` leaves the final name either absent
  or holding exactly those bytes, never part of them, and leaves the older snapshot
  alone.

The storage code relies on the first promise before deleting anything on the
snapshot's account.  Today ``Storage.take_snapshot`` also rotates the WAL right after
the snapshot, and the rotation's directory fsync would make a forgotten rename durable
by accident; the promise is ``write_snapshot``'s own, so it is tested here, alone
(``tools/mutate.py`` mutations 1 and 6c).
"""

from __future__ import annotations

import contextlib
import posixpath

import pytest
from sim.crashfs import ALL_POLICIES, CrashFS, all_crash_states
from sim.workload import CrashPoint, SimulatedCrash

from beaverq.impl.storage.snapshot import (
    LoadedSnapshot,
    decode_snapshot,
    encode_snapshot,
    list_snapshots,
    snapshot_name,
    write_snapshot,
)

DIRECTORY = "/data"
OLDER_LSN, NEWER_LSN = 3, 7
# Small sectors: more ways to tear the few hundred bytes written.
SECTOR_BYTES = 64


def _snapshot(lsn: int, fill: bytes) -> bytes:
    return encode_snapshot(lsn, 0x1234_5678 + lsn, 1, fill * 40)


OLDER = _snapshot(OLDER_LSN, b"older ")
NEWER = _snapshot(NEWER_LSN, b"newer! ")
OLDER_PATH = posixpath.join(DIRECTORY, snapshot_name(OLDER_LSN))
NEWER_PATH = posixpath.join(DIRECTORY, snapshot_name(NEWER_LSN))


def _disk(stale_temporary: bool) -> CrashFS:
    """A durable data directory holding an older snapshot (and maybe a half-written
    temporary file of the newer one, left by an earlier crash)."""
    tree: dict[str, bytes | None] = {DIRECTORY: None, OLDER_PATH: OLDER}
    if stale_temporary:
        tree[NEWER_PATH + ".tmp"] = NEWER[:50]
    return CrashFS.from_tree(tree, sector_bytes=SECTOR_BYTES)


def _check_older_intact(disk: CrashFS) -> None:
    assert disk.read(OLDER_PATH) == OLDER
    assert isinstance(decode_snapshot(disk.read(OLDER_PATH), OLDER_PATH), LoadedSnapshot)


@pytest.mark.parametrize("stale_temporary", [False, True], ids=["fresh", "stale-temporary"])
def test_write_snapshot_returns_only_when_the_snapshot_survives_any_crash(stale_temporary):
    """Goal: when write_snapshot returns, the snapshot is durable: no crash can take
    it back.

    Method: write a snapshot on a CrashFS, then enumerate every crash state of the
    disk under every policy (unsynced writes lost, kept in part, torn; unsynced
    directory entries reverted): each holds the new snapshot under its final name
    with exactly the bytes written, and the older snapshot untouched.
    """
    disk = _disk(stale_temporary)
    path = write_snapshot(disk, DIRECTORY, NEWER_LSN, NEWER)
    assert path == NEWER_PATH
    states = 0
    for crashed in all_crash_states(disk, ALL_POLICIES):
        states += 1
        assert crashed.exists(NEWER_PATH), f"the snapshot's name was lost:\n{crashed.describe()}"
        assert crashed.read(NEWER_PATH) == NEWER, f"the snapshot's bytes were lost: {crashed!r}"
        assert [snapshot.lsn for snapshot in list_snapshots(crashed, DIRECTORY)] == [
            NEWER_LSN,
            OLDER_LSN,
        ]
        _check_older_intact(crashed)
    assert states >= 1


def _calls_of_write_snapshot(stale_temporary: bool) -> int:
    """How many mutating file-system calls write_snapshot makes."""
    point = CrashPoint(_disk(stale_temporary))
    write_snapshot(point, DIRECTORY, NEWER_LSN, NEWER)
    return point.calls


@pytest.mark.parametrize("stale_temporary", [False, True], ids=["fresh", "stale-temporary"])
def test_a_crash_during_write_snapshot_leaves_the_whole_snapshot_or_none(stale_temporary):
    """Goal: a snapshot appears atomically: a crash in the middle of write_snapshot
    never leaves a partial file under the final name, and never harms the older
    snapshot, which recovery falls back to.

    Method: let the process die before each mutating call of write_snapshot in turn
    (and after the last), then enumerate every crash state of the disk: the final
    name is absent or holds exactly the snapshot's bytes; the older snapshot is
    intact; a leftover temporary file is never listed as a snapshot.
    """
    calls = _calls_of_write_snapshot(stale_temporary)
    assert calls >= 4  # create, append, fsync, rename (and the directory fsync)
    outcomes = set()
    for budget in range(calls + 1):
        disk = _disk(stale_temporary)
        point = CrashPoint(disk)
        point.arm(budget)
        with contextlib.suppress(SimulatedCrash):
            write_snapshot(point, DIRECTORY, NEWER_LSN, NEWER)
        for crashed in all_crash_states(disk, ALL_POLICIES):
            _check_older_intact(crashed)
            listed = [snapshot.path for snapshot in list_snapshots(crashed, DIRECTORY)]
            if crashed.exists(NEWER_PATH):
                assert crashed.read(NEWER_PATH) == NEWER, (
                    f"a crash before call {budget + 1} left part of the snapshot: {crashed!r}"
                )
                assert listed == [NEWER_PATH, OLDER_PATH]
                outcomes.add("new")
            else:
                assert listed == [OLDER_PATH]
                outcomes.add("old")
    # Both outcomes occur: early crashes keep only the older snapshot, late ones the new.
    assert outcomes == {"old", "new"}
