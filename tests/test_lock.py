"""The data directory lock (impl/storage/fs.py ``RealFileSystem.lock``, impl/storage/storage.py).

Two processes writing one WAL would interleave frames and break the chain, so a
data directory has one writer: ``Storage.open`` takes an exclusive ``flock`` on
``LOCK`` and writes its pid there.  A second opener gets ``DataDirLocked`` naming
the holder's pid; the lock goes away when the holder closes, or when it dies
(the kernel drops a dead process's flocks, so no stale lock survives a crash).

The other process is a real one (``python -c``).  No sleeps: the child reports
each step on a line of its stdout, and the parent waits for that line with a
deadline.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

import pytest
from storage_support import workload_events, write_log

from beaverq.impl.storage.fs import DataDirLocked, RealFileSystem
from beaverq.impl.storage.storage import LOCK_NAME, Storage
from beaverq.impl.storage.wal_reader import WalCorrupt

DEADLINE_S = 60.0  # generous: only a broken test waits this long

HOLDER = r"""
import sys
from beaverq.impl.storage.fs import DataDirLocked, RealFileSystem
from beaverq.impl.storage.storage import Storage

fs = RealFileSystem()
try:
    storage, state, report = Storage.open(fs, sys.argv[1])
except DataDirLocked as error:
    print("refused", error, flush=True)
    sys.exit(3)
print("locked", state.last_lsn, flush=True)
sys.stdin.readline()  # hold the lock until the parent says otherwise
storage.close()
fs.close()
print("closed", flush=True)
"""


def start_child(directory):
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, directory],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        bufsize=0,  # no hidden buffer between select() and readline()
    )


def read_line(process):
    """The child's next line of output, waiting at most until the deadline."""
    deadline = time.monotonic() + DEADLINE_S
    line = b""
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        readable, _, _ = select.select([process.stdout], [], [], max(0.0, remaining))
        if not readable:
            process.kill()
            raise AssertionError(f"no line from the child within {DEADLINE_S} s: {line!r}")
        chunk = process.stdout.read(1)
        if not chunk:
            return line.decode()  # the child exited
        line += chunk
    return line.decode().strip()


def finish(process):
    try:
        return process.wait(timeout=DEADLINE_S)
    finally:
        process.stdin.close()
        process.stdout.close()


@pytest.fixture
def data_dir(tmp_path):
    directory = str(tmp_path / "data")
    write_log(directory, workload_events()[:3], (3,))
    return directory


def test_a_second_process_is_refused_naming_the_holder_until_it_closes(data_dir):
    """Goal: while a process holds the data directory, opening it here fails with
    DataDirLocked naming the lock file and the holder's pid; once the holder has
    closed, the open succeeds.

    Method: a child opens the directory and reports "locked"; the parent's open
    must fail; the parent tells the child to close and waits for "closed" and its
    exit; the parent's open then succeeds and recovers the log.
    """
    child = start_child(data_dir)
    try:
        assert read_line(child) == "locked 3"
        fs = RealFileSystem()
        with pytest.raises(DataDirLocked) as caught:
            Storage.open(fs, data_dir)
        message = str(caught.value)
        assert f"process {child.pid}" in message
        assert os.path.join(data_dir, LOCK_NAME) in message
        child.stdin.write(b"\n")
        assert read_line(child) == "closed"
    finally:
        assert finish(child) == 0
    storage, state, _report = Storage.open(fs, data_dir)
    assert state.last_lsn == 3
    storage.close()
    fs.close()


def test_the_other_process_is_refused_naming_this_one(data_dir):
    """Goal: the refusal works in the other direction: a process that opens a
    directory this process holds is refused, with this process's pid.

    Method: open here; a child tries, prints the error and exits with status 3.
    """
    fs = RealFileSystem()
    storage, _state, _report = Storage.open(fs, data_dir)
    try:
        child = start_child(data_dir)
        line = read_line(child)
        assert finish(child) == 3
        assert line.startswith("refused")
        assert f"in use by process {os.getpid()}" in line
    finally:
        storage.close()
        fs.close()


def test_the_lock_is_released_when_the_holder_dies(data_dir):
    """Goal: a holder killed with SIGKILL (no chance to clean up) leaves no stale
    lock: the next open succeeds and the lock file names the new holder.

    Method: a child takes the lock and reports it; SIGKILL it and reap it; open.
    """
    child = start_child(data_dir)
    try:
        assert read_line(child) == "locked 3"
        with open(os.path.join(data_dir, LOCK_NAME)) as file:
            assert file.read().strip() == str(child.pid)
        child.send_signal(signal.SIGKILL)
    finally:
        assert finish(child) == -signal.SIGKILL
    fs = RealFileSystem()
    storage, state, _report = Storage.open(fs, data_dir)
    try:
        assert state.last_lsn == 3
        with open(os.path.join(data_dir, LOCK_NAME)) as file:
            assert file.read().strip() == str(os.getpid())
    finally:
        storage.close()
        fs.close()


def test_a_second_open_in_the_same_process_is_refused(data_dir):
    """Goal: the lock also holds within one process (two Storage objects on one
    directory would corrupt it just the same), and close releases it.

    Method: open twice with two file-system objects; the second fails naming this
    process; after the first closes, the second succeeds.
    """
    first_fs, second_fs = RealFileSystem(), RealFileSystem()
    first, _state, _report = Storage.open(first_fs, data_dir)
    with pytest.raises(DataDirLocked, match=f"process {os.getpid()}"):
        Storage.open(second_fs, data_dir)
    first.close()
    second, _state, _report = Storage.open(second_fs, data_dir)
    second.close()
    first_fs.close()
    second_fs.close()


def test_a_refused_recovery_releases_the_lock(data_dir):
    """Goal: when recovery refuses (corruption), the lock is released, so the next
    attempt reports the corruption again rather than a lock held by nobody.

    Method: damage a byte in the middle of the first segment's header, then open
    twice on one file-system object: WalCorrupt both times, never DataDirLocked.
    """
    path = os.path.join(data_dir, "wal-0000000000000000-0000000000000000.log")
    with open(path, "r+b") as file:
        file.seek(40)
        byte = file.read(1)
        file.seek(40)
        file.write(bytes([byte[0] ^ 0xFF]))
    fs = RealFileSystem()
    for _attempt in range(2):
        with pytest.raises(WalCorrupt):
            Storage.open(fs, data_dir)
    fs.close()
