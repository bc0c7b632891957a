"""Full disks (issue 11): what the queue promises when the disk fills, through real
``beaverq`` processes on a small tmpfs each test mounts (tests/disk_support.py).

The promises (docs/security.md, "Full disks"): once an event is durable the command
that made it reports success, and what failed after it (a snapshot) is a warning;
an error is reported only for what did not happen, and says whether the request may
have taken effect; a failed snapshot leaves no temporary file and is retried later
and later; never a traceback.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from disk_support import Runner, beaverq, fill, small_disk, wait_until
from sim.crashfs import NOTHING_UNSYNCED, CrashFS

from beaverq.impl.runtime import loops
from beaverq.impl.runtime.controller import Controller
from beaverq.impl.runtime.handlers import HandlerRegistry
from beaverq.impl.runtime.workers import ThreadPool
from beaverq.impl.storage.storage import Storage

DISK_BYTES = 4 * 1024 * 1024
BIG_ARGS = json.dumps("x" * 60_000)  # a job of ~60 KB: a snapshot of a dozen is ~720 KB


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    with small_disk(tmp_path / "disk", DISK_BYTES) as mounted:
        yield mounted


def big_state(data_dir: Path, jobs: int = 12) -> None:
    """A data directory whose snapshot is far larger than one more event."""
    batch = "".join(f'{{"handler": "absent", "args": {BIG_ARGS}}}\n' for _ in range(jobs))
    done = beaverq(data_dir, "enqueue", "--batch", "-", stdin=batch)
    assert done.returncode == 0, done.stderr


def leftovers(data_dir: Path) -> list[str]:
    return sorted(path.name for path in data_dir.glob("*.snap.tmp"))


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_an_enqueue_whose_snapshot_fails_succeeds_with_a_warning(disk: Path) -> None:
    """Goal: a no-runner enqueue whose event is durable but whose closing snapshot
    fails with ENOSPC reports success (its id, exit 0) with a one-line warning, is
    stored exactly once, and leaves no snapshot temporary file.
    Method: a dozen 60 KB jobs, then fill the disk but 16 KB (room for one small
    event, not for a 720 KB snapshot); enqueue; free the disk; read the queue back."""
    data_dir = disk / "data"
    big_state(data_dir)
    filler = fill(disk, leave_bytes=16 * 1024)
    done = beaverq(data_dir, "enqueue", "noop", '{"n": 1}', "--id", "once")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "once\n"
    warning = one_line(done.stderr)
    assert warning.startswith("beaverq: warning: the enqueue is durable")
    assert "No space left on device" in warning and "snapshot" in warning
    assert leftovers(data_dir) == []
    filler.unlink()
    shown = json.loads(beaverq(data_dir, "show", "once", "--json").stdout)
    assert shown["status"] == "pending"
    status = json.loads(beaverq(data_dir, "status", "--json").stdout)
    assert status["total"] == 13  # the dozen and this one, once
    assert beaverq(data_dir, "verify").returncode == 0


def test_without_a_runner_a_full_wal_says_nothing_was_done_and_where(disk: Path) -> None:
    """Goal: when the WAL cannot be written at all, a no-runner enqueue fails in one
    line that names the segment file and the system's reason (never "None") and
    says the enqueue was not done; the job is indeed absent afterwards.
    Method: fill the disk completely; enqueue; free it; look the job up."""
    data_dir = disk / "data"
    assert beaverq(data_dir, "enqueue", "noop").returncode == 0
    filler = fill(disk)
    done = beaverq(data_dir, "enqueue", "noop", BIG_ARGS, "--id", "lost")
    assert done.returncode == 1 and done.stdout == ""
    error = one_line(done.stderr)
    assert error.startswith("beaverq: error: enqueue not done: ")
    assert f"{data_dir}/wal-" in error and "No space left on device" in error
    assert "None" not in error
    filler.unlink()
    assert beaverq(data_dir, "show", "lost").returncode == 1  # unknown job: not done
    assert beaverq(data_dir, "verify").returncode == 0


def test_with_a_runner_a_failed_wal_says_whether_the_request_took_effect(disk: Path) -> None:
    """Goal: a producer whose enqueue's fsync fails is told what failed, where, and
    that the enqueue may or may not have taken effect (not "internal error: group
    commit stopped"); a producer after that is told nothing of its request was
    done; the runner stops with a one-line error; the directory recovers.
    Method: a runner on the small disk; fill it; enqueue a 60 KB job twice; free
    the disk; wait for the runner to exit; verify and count."""
    data_dir = disk / "data"
    assert beaverq(data_dir, "enqueue", "noop").returncode == 0
    runner = Runner(data_dir)
    try:
        filler = fill(disk)
        first = beaverq(data_dir, "enqueue", "absent", BIG_ARGS)
        assert first.returncode == 1 and first.stdout == ""
        error = one_line(first.stderr)
        assert "internal error" not in error and "None" not in error
        assert f"{data_dir}/wal-" in error and "No space left on device" in error
        assert "may or may not have taken effect" in error
        second = beaverq(data_dir, "enqueue", "absent", BIG_ARGS)
        assert second.returncode == 1
        # Refused by the failed runner, or, once it has exited, by the full disk.
        refusal = one_line(second.stderr)
        assert any(
            said in refusal
            for said in ("nothing of this call was done", "enqueue not done", "no new jobs")
        ), refusal
        filler.unlink()
        status, err = runner.finish()
        assert status == 1 and "Traceback" not in err
    finally:
        runner.kill()
    assert beaverq(data_dir, "verify").returncode == 0
    jobs = json.loads(beaverq(data_dir, "jobs", "--json").stdout)
    assert 1 <= len(jobs) <= 2  # the first, and the one in doubt if it reached the disk


def test_a_runner_snapshotting_on_a_full_disk_leaves_no_temporary_files_and_backs_off(
    disk: Path,
) -> None:
    """Goal: failed snapshots leave no ``snapshot-*.snap.tmp`` behind, and their
    retries come later and later, so a runner on a nearly full disk neither fills it
    with temporary files nor burns its time retrying.
    Method: a runner asked to snapshot as often as anything changes
    (--snapshot-interval 0) on a disk with room for small events but not for a
    snapshot; feed it events until three snapshots have failed; the second and
    third retries wait (1 s, then 2 s), so the three take at least 3 s; no
    temporary file is ever found; the WAL kept working throughout."""
    data_dir = disk / "data"
    big_state(data_dir)
    runner = Runner(data_dir, "--snapshot-interval", "0")
    try:
        fill(disk, leave_bytes=64 * 1024)
        failures_seen: list[tuple[float, int]] = []

        def failures_reach(count: int) -> bool:
            done = beaverq(data_dir, "enqueue", "noop")  # an event: a snapshot is due
            assert done.returncode == 0, done.stderr
            assert leftovers(data_dir) == []
            runtime = json.loads(beaverq(data_dir, "status", "--json").stdout)["runtime"]
            failures_seen.append((time.monotonic(), runtime["snapshot_failures"]))
            return bool(runtime["snapshot_failures"] >= count)

        wait_until(lambda: failures_reach(1))
        first_seen = failures_seen[-1][0]
        wait_until(lambda: failures_reach(3))
        # 1 s, then 2 s of back-off, less the lag of one look.
        assert failures_seen[-1][0] - first_seen >= 3 * loops.SNAPSHOT_RETRY_S_MIN - 1.0
        assert failures_seen[-1][1] <= 4  # without the back-off: hundreds by now
    finally:
        runner.kill()
    assert leftovers(data_dir) == []


def test_a_stop_whose_final_snapshot_fails_on_a_full_disk_succeeds() -> None:
    """Goal: ``Controller.stop`` does not fail for its final snapshot alone: the
    events are durable, so the snapshot's ENOSPC is counted (and says why), the
    temporary file is gone, and the next opening replays the log to the same state.
    Runs in-process on the crashable file system, so it needs no root.
    Method: a controller on CrashFS enqueues a 60 KB job (durable); the disk is then
    left room for one small event but not for the snapshot; stop; reopen."""
    fs = CrashFS()
    controller = Controller.open("/data", ThreadPool(HandlerRegistry(), workers=1), fs=fs)
    controller.enqueue("absent", "x" * 60_000, job_id="big")
    fs.disk_full_after(10_000)
    assert controller.stop(grace_s=0.0) == []
    assert controller.stats.snapshot_failures == 1
    assert "No space left on device" in (controller.stats.snapshot_error_last or "")
    assert not [name for name in fs.list_dir("/data") if name.endswith(".snap.tmp")]
    fs.disk_full_after(None)
    storage, state, _report = Storage.open(fs.crash(NOTHING_UNSYNCED), "/data")
    assert "big" in state.jobs
    storage.close()
