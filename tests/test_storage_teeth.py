"""Promises of the storage code that no other test pins down, found by ``tools/mutate.py``.

Each test here exists because a known-bad change to ``impl/`` survived the rest of the
suite; the mutation it catches is named in its docstring (``docs/mutations.md`` has the
table).

* Group commit (``impl/storage/group_commit.py``) answers a producer only after the fsync that
  covers its events has returned.  The stateful crash test drives ``Storage.flush``,
  which runs the write, the fsync and the publication in one call; the flusher thread
  of ``GroupCommit`` runs them as three separate steps and could publish too early.
* A flush whose batch spans a rotation is durable, in every segment, when it returns.
  The exhaustive crash test covers this too, but failed on main for a while (a torn
  start of a new segment was refused, fixed in 73ece6c), which took it out of the
  mutation run; this test checks only crash states *after* the flush returned, a
  small scope that does not depend on how torn writes are judged.
"""

from __future__ import annotations

import threading
from typing import Any

from sim.crashfs import ALL_POLICIES, NOTHING_UNSYNCED, CrashFS, all_crash_states
from sim.workload import DATA_DIR, History, Process, check_recovery, segment_paths

from beaverq.impl.storage.group_commit import GroupCommit
from beaverq.impl.storage.storage import Storage, StorageOptions
from beaverq.model import Enqueue, decide, evolve

TIMEOUT_S = 30.0


class GatedFS:
    """A CrashFS whose fsyncs wait at a gate while it is closed (the disk is slow)."""

    def __init__(self, disk: CrashFS) -> None:
        self.disk = disk
        self.gate = threading.Event()
        self.gate.set()
        self.fsync_waiting = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.disk, name)

    def fsync(self, path: str) -> None:
        if not self.gate.is_set():
            self.fsync_waiting.set()
            assert self.gate.wait(TIMEOUT_S), "the test never opened the gate"
        self.disk.fsync(path)


def _recovered_lsn(disk: CrashFS) -> int:
    """The LSN a recovery reaches after a crash of ``disk`` now, keeping nothing
    unsynced (``disk`` itself is left running)."""
    crashed = CrashFS.from_tree(disk.crash_tree(NOTHING_UNSYNCED), pid=disk.pid + 1)
    storage, state, _report = Storage.open(crashed, DATA_DIR)
    storage.close()
    return state.last_lsn


def test_group_commit_answers_a_producer_only_after_the_fsync_that_covers_it():
    """Goal: a producer's append_and_wait returns, and the durable LSN it is answered
    with moves, only once the fsync covering its events has returned; until then a
    crash may lose the events, so nobody may have been told they are durable.
    (Mutation 2c: the flusher publishes the batch before writing it.)

    Method: a GroupCommit over a CrashFS whose fsyncs block at a gate.  A producer
    appends one event and waits; once the flusher is blocked inside the fsync, the
    durable LSN has not moved, the producer has not been answered, and a crash at
    that moment (nothing unsynced kept) recovers without the event.  Then the gate
    opens: the producer is answered, and a crash keeps the event.
    """
    disk = CrashFS()
    fs = GatedFS(disk)
    storage, state, _report = Storage.open(fs, DATA_DIR)
    commit = GroupCommit(storage, events_max=1, delay_s=0.0)
    events = decide(state, Enqueue(now_ms=1, handler="h"))
    lsn = events[-1].lsn
    answered = threading.Event()
    failures: list[BaseException] = []

    def producer() -> None:
        try:
            commit.append_and_wait(events, timeout_s=TIMEOUT_S)
            answered.set()
        except BaseException as error:  # reported by the main thread
            failures.append(error)

    fs.gate.clear()
    thread = threading.Thread(target=producer, name="producer")
    thread.start()
    try:
        assert fs.fsync_waiting.wait(TIMEOUT_S), "the flusher never fsynced"
        # The flusher is inside the fsync that covers the event.
        assert commit.durable_lsn == state.last_lsn < lsn, "published before the fsync returned"
        assert not answered.is_set(), "the producer was answered before the fsync returned"
        assert _recovered_lsn(disk) < lsn  # the event really is not durable yet
    finally:
        fs.gate.set()
        thread.join(TIMEOUT_S)
    assert not failures, failures
    assert answered.is_set()
    assert commit.durable_lsn == lsn
    commit.close()
    assert _recovered_lsn(disk) == lsn


def test_group_commit_events_answered_durable_survive_a_crash():
    """Goal: what group commit answered as durable survives any crash that keeps
    nothing unsynced.  (Mutations 2a to 2c, through the group-commit path.)

    Method: several producers append and wait; then the disk crashes, keeping only
    what was fsynced; recovery finds every answered LSN.
    """
    disk = CrashFS()
    storage, state, _report = Storage.open(disk, DATA_DIR)
    commit = GroupCommit(storage, events_max=3, delay_s=0.001)
    answered: list[int] = []
    for number in range(10):
        events = decide(state, Enqueue(now_ms=number, handler="h", args_json=f"[{number}]"))
        for event in events:
            state = evolve(state, event)
        answered.append(commit.append_and_wait(events, timeout_s=TIMEOUT_S))
    commit.close()
    # The process dies without closing the storage: only what was fsynced counts.
    crashed = CrashFS.from_tree(disk.crash_tree(NOTHING_UNSYNCED), pid=disk.pid + 1)
    recovered_storage, recovered, _report = Storage.open(crashed, DATA_DIR)
    recovered_storage.close()
    assert recovered.last_lsn >= max(answered)
    assert recovered == state


def test_a_flush_that_rotates_is_durable_in_both_segments_when_it_returns():
    """Goal: when a flush whose batch fills one segment and starts the next returns,
    every event of it survives any crash: the old segment was sealed (fsynced) before
    the new one was created, the new one fsynced, and its name made durable.
    (Mutations 8 and 9.)

    Method: with 256-byte segments, frame three enqueues on a fresh log (the first
    fills segment 0, each of the others starts a new segment) and flush once.  Then enumerate every
    crash state of the disk under every policy: each recovers every event, as the
    model folds them (checks 1, 2 and 4 of ``sim.workload``).
    """
    options = StorageOptions(segment_bytes_max=256)
    process = Process(CrashFS(), History(), options)
    process.start(now_ms=0)
    (current,) = segment_paths(process.disk)
    size = process.disk.size(current)
    for now_ms in (1, 2, 3):
        process.command(Enqueue(now_ms=now_ms, handler="h"))
    process.flush()
    # The batch wrote an event into the segment that was current before it, then
    # rotated into new ones.
    assert process.disk.size(current) > size
    assert len(segment_paths(process.disk)) >= 2
    assert process.history.acknowledged == len(process.history.events) >= 3
    states = 0
    for crashed in all_crash_states(process.disk, ALL_POLICIES):
        storage, state, report = Storage.open(crashed, DATA_DIR, options)
        storage.close()
        check_recovery(crashed, state, report, process.history)
        states += 1
    assert states >= 1
