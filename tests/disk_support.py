"""Full disks for tests: a small tmpfs the test mounts, and a file that fills it.

A test that needs a disk to run out of space mounts its own tmpfs of a few
megabytes (``small_disk``), so that nothing else on the machine fills up, and
unmounts it when done.  Mounting needs root; where the machine forbids it, the test
is skipped with the reason.  ``fill`` then takes every free byte but the few the
test leaves, so the next write that needs more fails with ENOSPC.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

WAIT_S = 30.0
CLI = [sys.executable, "-m", "beaverq.impl.frontends.cli"]
FILL_CHUNK_BYTES = 64 * 1024


@contextlib.contextmanager
def small_disk(where: Path, size_bytes: int) -> Iterator[Path]:
    """A tmpfs of ``size_bytes`` mounted at ``where`` for the ``with`` block."""
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("a full-disk test mounts a small tmpfs, which needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], timeout=WAIT_S).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], timeout=WAIT_S)  # still busy: detach


def fill(disk: Path, leave_bytes: int = 0) -> Path:
    """Take every free byte of ``disk`` but ``leave_bytes``; returns the filler file."""
    filler = disk / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        chunk = bytes(FILL_CHUNK_BYTES)
        stat = os.statvfs(disk)
        for _ in range(stat.f_blocks * stat.f_frsize // 512 + 1):  # bounded: the disk's size
            try:
                os.write(descriptor, chunk)
            except OSError:
                if len(chunk) == 512:
                    break  # not even 512 bytes fit: full
                chunk = chunk[: len(chunk) // 2]  # fill the last pages with smaller writes
        os.ftruncate(descriptor, max(0, os.fstat(descriptor).st_size - leave_bytes))
    finally:
        os.close(descriptor)
    return filler


def beaverq(
    data_dir: Path, *argv: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """One ``beaverq`` process; the caller checks its status and output."""
    return subprocess.run(
        [*CLI, "--data-dir", str(data_dir), *argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )


def wait_until(predicate: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError("condition not met before the deadline")
        threading.Event().wait(0.02)


class Runner:
    """A ``beaverq run`` process, ready once its control socket exists."""

    def __init__(self, data_dir: Path, *extra: str) -> None:
        self.process = subprocess.Popen(
            [*CLI, "--data-dir", str(data_dir), "run", "--workers", "1", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        socket = data_dir / "control.sock"
        wait_until(lambda: socket.exists() or self.process.poll() is not None)
        if self.process.poll() is not None:
            raise AssertionError(f"the runner did not start: {self.process.communicate()}")

    def finish(self, timeout_s: float = WAIT_S) -> tuple[int, str]:
        """Wait for the runner to exit by itself; its status and stderr."""
        _out, err = self.process.communicate(timeout=timeout_s)
        return self.process.returncode, err

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate(timeout=WAIT_S)
