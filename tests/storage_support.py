"""Helpers shared by the storage tests (codec, record, WAL, snapshot, storage, lock).

These tests run the storage code against the real file system in ``tmp_path``
(``impl.fs.RealFileSystem``).  The crash semantics of the disk are the business of
the crashable file system (``tests/sim/crashfs.py``) and the stateful crash tests;
here the questions are about bytes: what is written, what is read back, what
damage is recognised and what recovery does about it.

An fsync on the CI disk costs several milliseconds, and a property test that opens
a data directory a hundred times would spend most of its budget waiting for the
disk.  ``NoSyncFS`` is ``RealFileSystem`` with ``fsync`` and ``fsync_dir`` counted
instead of performed: every other call (create, append, rename, truncate, unlink,
read, lock) is the real one.  Nothing these tests check depends on power-loss
durability, which no test on a live file system can observe anyway.  Tests that
are about the fsync calls themselves use the plain ``RealFileSystem``.

Workloads come from the model (``decide``/``evolve`` via ``strategies.run``), so
every payload written is a real event of a reachable history.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence

from strategies import replay_all, run

from beaverq.impl.storage.fs import RealFileSystem
from beaverq.impl.storage.record import Record, decode_frame
from beaverq.impl.storage.storage import RecoveryReport, Storage, StorageOptions
from beaverq.impl.storage.wal_reader import list_segments
from beaverq.model import (
    Cancel,
    Complete,
    Enqueue,
    Event,
    Fail,
    Lease,
    PauseQueue,
    ResumeQueue,
    State,
    Tick,
    decide,
    evolve,
)


class NoSyncFS(RealFileSystem):
    """The real file system, except that fsyncs are counted, not performed."""

    def __init__(self) -> None:
        super().__init__()
        self.fsyncs = 0
        self.dir_fsyncs = 0

    def fsync(self, path: str) -> None:
        assert os.path.isfile(path), path
        self.fsyncs += 1

    def fsync_dir(self, path: str) -> None:
        assert os.path.isdir(path), path
        self.dir_fsyncs += 1


# A hand-picked workload that produces most event types: enqueues (plain, delayed,
# keyed, in two queues), leases, a completion, a failure with a retry, a cancel of a
# delayed job (a stale timer), a pause, and ticks that expire a lease and release a
# delayed job.  Its events are the material of the example-based tests.
WORKLOAD_COMMANDS = (
    Enqueue(now_ms=0, handler="h", job_id="a", args_json='{"n":1}'),
    Enqueue(now_ms=0, handler="h", job_id="b", queue="q2", priority=2),
    Enqueue(now_ms=1, handler="h", job_id="c", delay_ms=50),
    Enqueue(now_ms=1, handler="h", job_id="d", delay_ms=10, idempotency_key="k1"),
    Lease(now_ms=2, worker_id="w1"),
    Lease(now_ms=2, worker_id="w2"),
    Complete(now_ms=3, job_id="b", attempt=1, result_json='"done"'),
    Fail(now_ms=4, job_id="a", attempt=1, error="boom", jitter_seed=7),
    Cancel(now_ms=5, job_id="c"),
    PauseQueue(now_ms=6, queue="q2"),
    Enqueue(now_ms=7, handler="h", args_json="[1,2,3]", timeout_ms=5),
    Tick(now_ms=20),
    Lease(now_ms=21, worker_id="w1"),
    Tick(now_ms=40_000),
    Enqueue(now_ms=40_001, handler="h", job_id="e", max_attempts=1),
)


def workload_events() -> list[Event]:
    events, _states = run(WORKLOAD_COMMANDS)
    assert len(events) >= 15, len(events)
    return events


def fold(events: Iterable[Event]) -> State:
    return replay_all(events)


def more_events(state: State, count: int, now_ms: int = 100_000) -> list[Event]:
    """``count`` enqueues decided on ``state`` (derived ids, so never refused)."""
    found: list[Event] = []
    for number in range(count):
        (event,) = decide(state, Enqueue(now_ms=now_ms, handler="h", args_json=f"[{number}]"))
        state = evolve(state, event)
        found.append(event)
    return found


def toggle_events(state: State, count: int, now_ms: int = 200_000) -> list[Event]:
    """``count`` small events (QueuePaused / QueueResumed of queue "toggle")."""
    found: list[Event] = []
    for number in range(count):
        paused = "toggle" in state.paused
        command = (ResumeQueue if paused else PauseQueue)(now_ms=now_ms + number, queue="toggle")
        (event,) = decide(state, command)
        state = evolve(state, event)
        found.append(event)
    return found


# Truncating or rewriting a non-empty file on the CI disk (ext4) costs several
# milliseconds (ext4 flushes such files at once), and Storage.open rewrites its
# LOCK file and truncates torn tails.  The exhaustive damage tests do that
# thousands of times, so they work in a directory on tmpfs when there is one.  The
# calls are the same system calls on the same RealFileSystem; only the speed of
# the medium differs.
_SCRATCH_ROOT = "/dev/shm"


@contextlib.contextmanager
def scratch_directory(fallback: str) -> Iterator[str]:
    """A fresh directory on tmpfs when one is writable, else ``fallback``."""
    if not (os.path.isdir(_SCRATCH_ROOT) and os.access(_SCRATCH_ROOT, os.W_OK)):
        yield fallback
        return
    with tempfile.TemporaryDirectory(dir=_SCRATCH_ROOT, prefix="beaverq-test-") as path:
        yield path


def write_log(
    directory: str,
    events: Sequence[Event],
    batch_sizes: Sequence[int] = (1,),
    options: StorageOptions | None = None,
) -> State:
    """Open ``directory``, append ``events`` in flushes of ``batch_sizes`` (cycled),
    close; return the state the log holds.  The directory must be new, or hold a
    log that ends just before the first event."""
    fs = NoSyncFS()
    storage, state, _report = Storage.open(fs, directory, options)
    try:
        position = 0
        turn = 0
        while position < len(events):
            batch = events[position : position + batch_sizes[turn % len(batch_sizes)]]
            storage.append(batch)
            storage.flush()
            for event in batch:
                state = evolve(state, event)
            position += len(batch)
            turn += 1
        storage.close()
    finally:
        fs.close()
    return state


def reopen(directory: str, options: StorageOptions | None = None) -> tuple[State, RecoveryReport]:
    """Recover ``directory`` and close it again: the state and the report."""
    fs = NoSyncFS()
    try:
        storage, state, report = Storage.open(fs, directory, options)
        storage.close()
    finally:
        fs.close()
    return state, report


def segment_paths(directory: str) -> list[str]:
    return [path for _index, _base, path in list_segments(RealFileSystem(), directory)]


def frames_of(data: bytes) -> list[Record]:
    """Every frame of an intact segment, in order (the chain is checked from its header)."""
    found: list[Record] = []
    offset = 0
    while offset < len(data):
        decoded = decode_frame(data, offset, None)
        assert isinstance(decoded, Record), decoded
        found.append(decoded)
        offset += decoded.size
    return found


def files_of(directory: str) -> dict[str, bytes]:
    """Name -> bytes of every file in ``directory``: to show a refusal changed nothing."""
    found = {}
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as file:
            found[name] = file.read()
    return found
