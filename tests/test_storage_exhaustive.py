"""Exhaustive small scope: every crash state of every workload of up to three operations.

The stateful test (``tests/stateful/test_storage_crash.py``) samples crashes at random;
this one leaves no gap inside a small scope, in the spirit of TLA+ model checking and
ALICE's crash-state enumeration.

Scope:

- workloads: every sequence of 0 to 3 operations over the alphabet enqueue, lease,
  complete (the job in flight, if any), flush, snapshot: 1 + 5 + 25 + 125 = 156
  workloads, each run by ``sim.workload.Process`` from an empty disk (``Storage.open``
  first, then the operations with the clock at 1, 2, 3 ms);
- crash points: the process dies before each mutating file-system call of the run,
  or at its end (``CrashPoint`` with every budget).  A workload shares the crash
  points of its prefix, so each is run once, under the shortest workload that has it;
- crash states: at each point, every file system the fault model allows
  (``sim.crashfs``: every policy, every choice, depth first), with two limits on the
  enumeration: 64-byte sectors (the WAL's frames are 8-byte aligned, so a torn sector
  never tears a frame's length word, as on a real disk; smaller sectors than a real
  disk's give more ways to tear the few hundred bytes these workloads write), and one
  garbage pattern for a garbled sector piece.  States that differ only in the
  ``LOCK`` file (a pid, never fsynced, read only for an error message) count once;
- ``segment_bytes_max`` of 256 bytes, so that every flush after an event rotates and
  rotations are among the crash points.

For each crash state, recovery (``Storage.open``) must succeed and satisfy checks 1, 2
and 4 of ``sim.workload.check_recovery``: every acknowledged event is present, the state
is the model's fold of a prefix of the appended events at least as long as the
acknowledged prefix, and a torn tail is cut and kept aside.
"""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Sequence

import pytest
from sim.crashfs import (
    ALL_POLICIES,
    CrashFS,
    CrashPolicy,
    EnumeratingChooser,
    enumerate_choices,
)
from sim.workload import (
    DATA_DIR,
    History,
    Process,
    check_recovery,
    segment_paths,
    without_lock,
)

from beaverq.impl.storage.fs import StorageError
from beaverq.impl.storage.storage import Storage, StorageOptions
from beaverq.model import Complete, Enqueue, Lease
from beaverq.model.errors import BrokenInvariant

OPERATIONS = ("enqueue", "lease", "complete", "flush", "snapshot")
LENGTH_MAX = 3
SECTOR_BYTES = 64
OPTIONS = StorageOptions(segment_bytes_max=256)
# Measured: 156 workloads, 344 crash points, 8,050 crash states (8,538 before 34a1314
# fsynced a new segment's header on its own).  The floor, with room for such changes
# of the write order, catches a scope that silently shrank (crash points lost, a
# policy no longer enumerated).
CRASH_STATES_FLOOR = 6_000


def operate(process: Process, operation: str, now_ms: int) -> None:
    state = process.state
    assert state is not None
    if operation == "enqueue":
        process.command(Enqueue(now_ms=now_ms, handler="h"))
    elif operation == "lease":
        process.command(Lease(now_ms=now_ms, worker_id="w"))
    elif operation == "complete":
        if state.in_flight:
            job_id = min(state.in_flight)
            attempt = state.jobs[job_id].attempt
            process.command(Complete(now_ms=now_ms, job_id=job_id, attempt=attempt))
    elif operation == "flush":
        process.flush()
    else:
        assert operation == "snapshot"
        process.snapshot()


def run(workload: Sequence[str], budget: int | None) -> Process:
    """Run ``workload`` from an empty disk; the process dies after ``budget`` mutating
    file-system calls (None: it runs to the end).  The disk is left as it was then."""
    process = Process(CrashFS(sector_bytes=SECTOR_BYTES), History(), OPTIONS)
    process.fs.arm(budget)

    def steps() -> None:
        process.start(now_ms=0)
        for now_ms, operation in enumerate(workload, start=1):
            operate(process, operation, now_ms)

    process.run(steps)
    return process


def _crash_tree(
    disk: CrashFS, policy: CrashPolicy, last: list[EnumeratingChooser], chooser: EnumeratingChooser
) -> dict[str, bytes | None]:
    last[:] = [chooser]
    return disk.crash_tree(policy, chooser)


def crash_images(disk: CrashFS) -> list[tuple[dict[str, bytes | None], CrashPolicy, list[int]]]:
    """Every distinct crash image of ``disk``, as ``sim.crashfs.all_crash_states``
    enumerates them but with states differing only in LOCK counted once; each with
    the policy and the choices that made it, for failure messages."""
    images = []
    seen = set()
    for policy in ALL_POLICIES:
        last: list[EnumeratingChooser] = []
        for tree in enumerate_choices(functools.partial(_crash_tree, disk, policy, last)):
            key = without_lock(tree)
            if key not in seen:
                seen.add(key)
                images.append((tree, policy, [choice for choice, _ in last[0].trail]))
    return images


def check_crash_point(workload: Sequence[str], budget: int) -> int:
    """Checks every crash state at one crash point; returns how many there were."""
    process = run(workload, budget)
    history = process.history
    images = crash_images(process.disk)
    for tree, policy, script in images:
        image = CrashFS.from_tree(tree, sector_bytes=SECTOR_BYTES)
        try:
            storage, state, report = Storage.open(image, DATA_DIR, OPTIONS)
            check_recovery(image, state, report, history)
        except (AssertionError, BrokenInvariant, StorageError) as error:
            sizes = {path: len(image.read(path)) for path in segment_paths(image)}
            pytest.fail(
                f"workload {list(workload)}, crash before mutating call {budget + 1}, "
                f"policy {policy}, choices {script}: {type(error).__name__}: {error}\n"
                f"acknowledged LSN {history.acknowledged} of {len(history.events)} appended; "
                f"segments after the crash {sizes}\n"
                f"disk before the crash:\n{process.disk.describe()}"
            )
        storage.close()
    return len(images)


def test_every_crash_state_of_every_small_workload_recovers_what_was_acknowledged():
    """Goal: within the small scope of the module doc, no crash state exists in which
    recovery loses an acknowledged event, invents or reorders one, or refuses to start.

    Method: for each workload (shortest first) count its mutating file-system calls
    when it runs to the end; for each crash point it adds to its prefix's, rerun it up
    to that point, enumerate every crash image the fault model allows and recover each
    one, checking (1) and (2) against the run's history.  The number of crash states is
    printed and must reach a floor, so the test cannot pass by checking nothing.
    """
    started = time.perf_counter()
    workloads = [
        workload
        for length in range(LENGTH_MAX + 1)
        for workload in itertools.product(OPERATIONS, repeat=length)
    ]
    calls = {workload: run(workload, None).fs.calls for workload in workloads}
    points = states = 0
    for workload in workloads:
        first = 0 if not workload else calls[workload[:-1]] + 1
        for budget in range(first, calls[workload] + 1):
            points += 1
            states += check_crash_point(workload, budget)
    elapsed = time.perf_counter() - started
    print(
        f"\nexhaustive crash states: {len(workloads)} workloads, {points} crash points, "
        f"{states} crash states checked in {elapsed:.1f} s"
    )
    assert len(workloads) == 156
    assert points >= len(workloads)
    assert states >= CRASH_STATES_FLOOR, states


# -- regressions ----------------------------------------------------------------------------


# Segments of 600 bytes: a 72-byte header and three 224-byte enqueue frames fill one.
ROTATION_OPTIONS = StorageOptions(segment_bytes_max=600)


def _before_a_rotating_flush() -> Process:
    """Three enqueues flushed (segment 0 is then full) and three more framed: the next
    flush starts segment 1 and writes its header and the three events, 744 bytes, in
    one write (with 512-byte sectors, the third event lies wholly in the second)."""
    process = Process(CrashFS(), History(), ROTATION_OPTIONS)
    process.start(now_ms=0)
    for now_ms in (1, 2, 3):
        operate(process, "enqueue", now_ms)
    process.flush()
    for now_ms in (4, 5, 6):
        operate(process, "enqueue", now_ms)
    return process


def test_regression_every_crash_during_a_rotating_flush_recovers():
    """Goal: whatever a crash in the middle of a flush that rotates into a new segment
    leaves (512-byte sectors, as on a real disk), recovery starts and keeps every
    acknowledged event.

    Method: for each crash point of that flush (``_before_a_rotating_flush``) and each
    crash state there, recover and check (1), (2) and (4).  Found by the exhaustive test
    with 64-byte sectors: a torn write of segment 1 that lost the sector holding the
    header but kept a later sector with a whole event frame made recovery refuse to
    start after an ordinary power loss ("corrupt at byte 0: bad magic 0x0000"): the
    reader calls a damaged last-segment header corrupt when any valid frame follows it,
    and the header and the events were one write.  Fixed in 34a1314 (a new segment's
    header is fsynced before its events are written).
    """
    calls_before = _before_a_rotating_flush().fs.calls
    full = _before_a_rotating_flush()
    full.flush()
    flush_calls = full.fs.calls - calls_before
    assert flush_calls >= 4  # at least: create segment 1, write, fsync, fsync the directory
    states = 0
    for budget in range(flush_calls + 1):
        process = _before_a_rotating_flush()
        process.fs.arm(budget)
        process.run(process.flush)
        for tree, policy, script in crash_images(process.disk):
            image = CrashFS.from_tree(tree)
            try:
                _storage, state, report = Storage.open(image, DATA_DIR, ROTATION_OPTIONS)
            except StorageError as error:
                pytest.fail(f"crash after {budget} calls of the flush, {policy} {script}: {error}")
            check_recovery(image, state, report, process.history)
            states += 1
    assert states >= 10, states  # 20 when written, before 34a1314
