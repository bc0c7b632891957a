"""The queue process as the crash tests run it, and the checks made after every recovery.

Shared by ``tests/stateful/test_storage_crash.py`` (Hypothesis drives it) and
``tests/test_storage_exhaustive.py`` (every crash state of small workloads).

The pieces
==========
``History``
    The test's ledger, kept outside the storage code: every event appended (in LSN
    order, ``events[i].lsn == i + 1``) and ``acknowledged``, the LSN up to which the
    storage has answered "durable" (a ``flush`` that returned, or the storage's own
    ``durable_lsn``, the number a group-commit thread would answer producers with).
    After a recovery that found LSN ``k``, ``events[k:]`` are lost and dropped.

``CrashPoint``
    A ``FileSystem`` that forwards every call to a ``CrashFS`` and, once armed with a
    budget of ``n`` calls, lets ``n`` more *mutating* calls through and raises
    ``SimulatedCrash`` instead of the next one.  That is how a crash lands in the
    middle of a flush, a rotation, a snapshot, a compaction or a recovery: the
    process dies there, and the test then crashes the ``CrashFS`` under it.  Reads
    are not counted: a crash before or after a read leaves the same disk.

``Process``
    One life of the queue process: ``Storage.open`` (recovery, then the checks
    below, then the model's ``Recover`` command appended and flushed, as the runtime
    does), model commands (``decide`` on the current state, ``storage.append`` the
    events, ``evolve``), ``flush`` and ``snapshot``.

``check_recovery``
    What every recovery must satisfy, with ``k = state.last_lsn``:

    1. every acknowledged event is present: ``acknowledged <= k``;
    2. the state is the model's fold of a prefix of what was appended, at least as
       long as the acknowledged prefix: ``k <= len(events)`` and
       ``state == replay(initial_state(), events[:k])`` (no hole, no reordering,
       nothing invented);
    4. a torn tail is cut, its bytes saved beside the segment, and never applied
       (the state equality above shows nothing after ``k`` was applied).

    Check 3, recovering twice gives the same state, is ``check_recovers_again``: a
    second recovery of the disk as the first one left it (only what it made durable:
    the crash image keeping nothing unsynced) finds the same state, and a clean log.

``frames_of`` reads WAL frames from their length fields alone (not with
``impl/storage/record.py``), so that the corruption tests can aim at a chosen frame and
predict the offset recovery must report.
"""

from __future__ import annotations

import posixpath
import random
import struct
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from hypothesis import strategies as st

from beaverq.impl.storage.storage import LOCK_NAME, RecoveryReport, Storage, StorageOptions
from beaverq.model import (
    Command,
    Event,
    Recover,
    Rejected,
    State,
    decide,
    initial_state,
    replay,
)
from sim.crashfs import NOTHING_UNSYNCED, CrashFS

DATA_DIR = "/data"
LOCK_PATH = posixpath.join(DATA_DIR, LOCK_NAME)


class SimulatedCrash(BaseException):
    """The process dies at this point.  A ``BaseException``, like ``SystemExit``: no
    storage code may catch it and carry on (``Storage.open`` only cleans up and
    re-raises)."""


# -- a crash in the middle of any file-system call sequence -------------------------------

MUTATING_CALLS = frozenset(
    {"create", "append", "fsync", "fsync_dir", "rename", "truncate", "unlink", "mkdir", "lock"}
)


class CrashPoint:
    """A ``FileSystem`` over a ``CrashFS`` that can die after a budget of mutating calls.

    ``calls`` counts every mutating call that went through since construction.
    """

    def __init__(self, disk: CrashFS) -> None:
        self.disk = disk
        self.calls = 0
        self._crash_at: int | None = None

    def arm(self, budget: int | None) -> None:
        """Let ``budget`` more mutating calls through, then die (None: never)."""
        assert budget is None or budget >= 0, budget
        self._crash_at = None if budget is None else self.calls + budget

    def __getattr__(self, name: str) -> Any:
        call = getattr(self.disk, name)
        if name not in MUTATING_CALLS:
            return call

        def counted(*args: Any) -> Any:
            if self._crash_at is not None and self.calls >= self._crash_at:
                raise SimulatedCrash(f"crash before call {self.calls + 1}: {name}{args!r:.80}")
            self.calls += 1
            return call(*args)

        return counted


# -- the test's ledger ---------------------------------------------------------------------


@attrs.define
class History:
    events: list[Event] = attrs.Factory(list)
    acknowledged: int = 0

    def append(self, events: Sequence[Event]) -> None:
        for event in events:
            assert event.lsn == len(self.events) + 1, (event, len(self.events))
            self.events.append(event)

    def acknowledge(self, durable_lsn: int) -> None:
        """The storage answered "durable up to ``durable_lsn``"."""
        assert durable_lsn <= len(self.events), (durable_lsn, len(self.events))
        self.acknowledged = max(self.acknowledged, durable_lsn)

    def recovered(self, k: int) -> None:
        """A recovery found the log up to ``k``: what came after is lost; up to ``k``
        is on disk now, durable, so it counts as acknowledged from here on."""
        del self.events[k:]
        self.acknowledge(k)


# -- the checks ------------------------------------------------------------------------------


def check_recovery(disk: CrashFS, state: State, report: RecoveryReport, history: History) -> int:
    """Checks 1, 2 and 4 of the module doc on a recovery's result; returns ``k``."""
    k = state.last_lsn
    assert report.last_lsn == k, (report.last_lsn, k)
    # (1) nothing acknowledged is lost.
    assert history.acknowledged <= k, (
        f"acknowledged up to LSN {history.acknowledged}, recovered only up to {k}: {report}"
    )
    # (2) a prefix of what was appended, folded by the model.
    assert k <= len(history.events), f"recovered LSN {k}, only {len(history.events)} appended"
    expected = replay(initial_state(), history.events[:k])
    assert state == expected, f"recovered state differs from the model's fold of events[:{k}]"
    # (4) a torn tail is cut (its bytes kept aside) and nothing of it was applied.
    torn = report.torn_tail
    if torn is None:
        assert report.bytes_truncated == 0 and report.cut_copy_path is None, report
    else:
        assert report.bytes_truncated == torn.size - torn.offset >= 0, report
        assert report.cut_copy_path is not None and disk.exists(report.cut_copy_path), report
        assert disk.size(report.cut_copy_path) == report.bytes_truncated, report
        if torn.offset == 0:
            # A segment whose own header was torn: nothing in it counts, it is dropped
            # (the new segment may take the same name at once, with other bytes).
            cut = disk.read(report.cut_copy_path)
            assert not disk.exists(torn.path) or disk.read(torn.path) != cut, report
        else:
            assert disk.size(torn.path) == torn.offset, report
    return k


def check_recovers_again(
    disk: CrashFS, state: State, options: StorageOptions
) -> tuple[State, RecoveryReport]:
    """(3) Recovering the disk again, as the last recovery left it, gives the same state.

    The copy keeps only what is durable (a crash losing everything unsynced), so this
    also checks that recovery made its own repairs durable: the second recovery finds
    no torn tail and replays to the same LSN.  ``disk`` itself is not touched.
    """
    copy = CrashFS.from_tree(
        disk.crash_tree(NOTHING_UNSYNCED), sector_bytes=disk.sector_bytes, pid=disk.pid + 1
    )
    again_storage, again, report = Storage.open(copy, DATA_DIR, options)
    again_storage.close()
    assert again == state, "a second recovery disagrees with the first"
    assert report.torn_tail is None, f"the first recovery's cut was not durable: {report}"
    assert report.last_lsn == state.last_lsn, report
    return again, report


# -- one life of the queue process -------------------------------------------------------------


class Process:
    """The storage over a ``CrashPoint`` over ``disk``, and the model state it applied."""

    def __init__(self, disk: CrashFS, history: History, options: StorageOptions) -> None:
        self.disk = disk
        self.fs = CrashPoint(disk)
        self.history = history
        self.options = options
        self.storage: Storage | None = None
        self.state: State | None = None

    def start(self, now_ms: int) -> RecoveryReport:
        """Recover (``Storage.open``), check the result, then ``Recover`` + flush."""
        storage, state, report = Storage.open(self.fs, DATA_DIR, self.options)
        k = check_recovery(self.disk, state, report, self.history)
        self.history.recovered(k)
        self.storage, self.state = storage, state
        self.command(Recover(now_ms=now_ms))
        self.flush()
        return report

    def command(self, command: Command) -> tuple[Event, ...]:
        """Decide on the current state, append the events, fold them in (none if refused)."""
        assert self.storage is not None and self.state is not None
        try:
            events = decide(self.state, command)
        except Rejected:
            return ()
        self.storage.append(events)
        self.history.append(events)
        self.state = replay(self.state, events)
        return events

    def flush(self) -> None:
        assert self.storage is not None
        durable = self.storage.flush()
        assert durable == len(self.history.events), (durable, len(self.history.events))
        self.history.acknowledge(durable)

    def snapshot(self) -> str:
        assert self.storage is not None and self.state is not None
        path = self.storage.take_snapshot(self.state)
        assert self.storage.durable_lsn == len(self.history.events)
        self.history.acknowledge(self.storage.durable_lsn)
        return path

    def close(self) -> None:
        assert self.storage is not None
        self.storage.close()
        self.history.acknowledge(len(self.history.events))
        self.storage = None

    def died(self) -> None:
        """The process died (``SimulatedCrash``): take note of what the storage had
        acknowledged (its ``durable_lsn``) before it did."""
        if self.storage is not None:
            self.history.acknowledge(self.storage.durable_lsn)
        self.storage = None

    def run(self, step: Callable[[], object]) -> bool:
        """Run ``step``; False if the process died in it (``SimulatedCrash``)."""
        try:
            step()
        except SimulatedCrash:
            self.died()
            return False
        return True


# -- choices from Hypothesis, compactly ---------------------------------------------------------


class CompactHypothesisChooser:
    """``sim.crashfs.HypothesisChooser``, except that garbage costs one draw (a seed)
    instead of a whole sector of drawn bytes, so a long stateful run with many torn
    writes stays within Hypothesis's data budget.  Shrinks the seed towards 0."""

    def __init__(self, data: st.DataObject) -> None:
        self._data = data

    def choose(self, label: str, options: int) -> int:
        assert options >= 1, label
        if options == 1:
            return 0
        return self._data.draw(st.integers(0, options - 1), label=label)

    def garble(self, label: str, size: int) -> bytes:
        seed = self._data.draw(st.integers(0, 2**32 - 1), label=label)
        return random.Random(seed).randbytes(size)


# -- reading the WAL independently -----------------------------------------------------------

FRAME_HEADER = struct.Struct("<IBBHQQII")  # as documented in impl/storage/record.py
KIND_EVENT, KIND_SEGMENT_HEADER = 1, 2


@attrs.frozen
class Frame:
    offset: int
    size: int
    kind: int
    lsn: int
    synced_lsn: int


def frames_of(data: bytes) -> list[Frame]:
    """The frames of an intact segment, walked by their length fields; stops at the
    first one that would overrun the data."""
    frames = []
    offset = 0
    while offset + FRAME_HEADER.size <= len(data):
        length, kind, _padding, _magic, lsn, synced_lsn, _crc, _chain = FRAME_HEADER.unpack_from(
            data, offset
        )
        size = FRAME_HEADER.size + length + (-length % 8)
        if offset + size > len(data):
            break
        frames.append(Frame(offset, size, kind, lsn, synced_lsn))
        offset += size
    return frames


def segment_paths(disk: CrashFS) -> list[str]:
    """WAL segment files by index (their names sort by index: 16 hex digits)."""
    return [
        posixpath.join(DATA_DIR, name)
        for name in disk.list_dir(DATA_DIR)
        if name.startswith("wal-") and name.endswith(".log")
    ]


def snapshot_paths(disk: CrashFS) -> list[str]:
    """Snapshot files, newest (highest LSN, the 16 hex digits of the name) first."""
    names = [
        name
        for name in disk.list_dir(DATA_DIR)
        if name.startswith("snapshot-") and name.endswith(".snap")
    ]
    return [posixpath.join(DATA_DIR, name) for name in sorted(names, reverse=True)]


def without_lock(tree: dict[str, bytes | None]) -> tuple[tuple[str, bytes | None], ...]:
    """A crash image minus the LOCK file, whose content (the holder's pid, never
    fsynced) is read only for an error message: images differing only there are one
    state for recovery."""
    return tuple(sorted((path, data) for path, data in tree.items() if path != LOCK_PATH))
