"""``beaverq verify`` and ``beaverq wal dump`` on real data directories.

Goal: verify reports a sound directory as sound, a torn tail as a warning, and
corruption as an error naming the file and byte offset (exit status 1), and it
never changes a byte; wal dump prints one line per frame.  Method: build data
directories with the real storage code, damage them the way a crash or bit rot
would, run the console script as a subprocess and compare every file's bytes
before and after.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from beaverq.impl.storage.fs import RealFileSystem
from beaverq.impl.storage.storage import Storage, StorageOptions
from beaverq.model import Enqueue, Lease, decide, evolve

BEAVERQ = [sys.executable, "-m", "beaverq.impl.frontends.cli"]


def _build(directory: Path, jobs: int = 30) -> None:
    """A data dir with several small segments, two snapshots and a WAL tail."""
    storage, state, _ = Storage.open(
        RealFileSystem(), str(directory), StorageOptions(segment_bytes_max=2048)
    )
    for index in range(jobs):
        for command in (Enqueue(now_ms=index, handler="noop"), Lease(now_ms=index, worker_id="w")):
            events = decide(state, command)
            storage.append(events)
            for event in events:
                state = evolve(state, event)
        storage.flush()
        if index in (10, 20):
            storage.take_snapshot(state)
    storage.close()


def _files(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def _run(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BEAVERQ, *arguments], capture_output=True, text=True, timeout=120)


def _segments(directory: Path) -> list[Path]:
    return sorted(path for path in directory.iterdir() if path.name.startswith("wal-"))


def test_a_sound_directory_verifies_and_nothing_changes(tmp_path: Path) -> None:
    _build(tmp_path / "data")
    before = _files(tmp_path / "data")
    result = _run("verify", "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "verdict: OK" in result.stdout
    assert "invariants: all hold" in result.stdout
    assert "in flight 30" in result.stdout
    assert _files(tmp_path / "data") == before


def test_the_data_dir_comes_from_the_environment_too(tmp_path: Path) -> None:
    _build(tmp_path / "data", jobs=3)
    environment = {**os.environ, "BEAVERQ_DATA_DIR": str(tmp_path / "data")}
    result = subprocess.run(
        [*BEAVERQ, "verify"], capture_output=True, text=True, env=environment, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert str(tmp_path / "data") in result.stdout


def test_a_torn_tail_is_a_warning_and_is_left_in_place(tmp_path: Path) -> None:
    directory = tmp_path / "data"
    _build(directory)
    last = _segments(directory)[-1]
    with last.open("ab") as file:
        file.write(b"\x07" * 21)  # a write the crash cut short
    before = _files(directory)
    result = _run("verify", "--data-dir", str(directory))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning:" in result.stdout
    assert "torn tail" in result.stdout
    assert _files(directory) == before


def test_damage_in_a_sealed_segment_fails_naming_file_and_offset(tmp_path: Path) -> None:
    directory = tmp_path / "data"
    _build(directory)
    sealed = _segments(directory)[0]
    data = bytearray(sealed.read_bytes())
    offset = len(data) // 2
    data[offset] ^= 0xFF
    sealed.write_bytes(bytes(data))
    before = _files(directory)
    result = _run("verify", "--data-dir", str(directory))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "verdict: FAILED" in result.stdout
    assert sealed.name in result.stdout
    assert "corrupt at byte" in result.stdout
    assert _files(directory) == before


def test_a_missing_directory_fails_with_one_clear_line(tmp_path: Path) -> None:
    result = _run("verify", "--data-dir", str(tmp_path / "nowhere"))
    assert result.returncode == 1
    assert "no such directory" in result.stdout


def test_wal_dump_prints_every_frame(tmp_path: Path) -> None:
    directory = tmp_path / "data"
    _build(directory, jobs=5)
    result = _run("wal", "dump", "--data-dir", str(directory))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    # Ten events (five enqueues, five leases) and one header per segment.
    assert sum("JobEnqueued" in line for line in lines) == 5
    assert sum("LeaseGranted" in line for line in lines) == 5
    headers = sum(line.startswith("== wal-") for line in lines)
    assert headers == len(_segments(directory)) >= 1
    assert sum("SegmentHeader" in line for line in lines) == headers
