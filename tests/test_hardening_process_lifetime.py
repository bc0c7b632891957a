"""No process a shell job starts outlives its attempt (issue 11, Linux).

Measured before: ``sh -c 'setsid sleep 300 &'`` escaped the process-group kill even at
a normal exit, and after a runner SIGKILL attempt 1's processes kept running while
the restarted runner ran attempt 2.  Now every shell attempt runs under an attempt
keeper (impl/runtime/attempt_keeper.py): a child subreaper that kills the program's
group and every process re-parented to it when the attempt ends, or when the process
that started it dies; and process-pool workers die with the runner.

Each test runs real ``beaverq`` processes, for both pools, and reads which processes
are alive from /proc.  The jobs write the pids of their processes to a file; a
process counts as alive while /proc shows it running ``sleep`` (a zombie, or a pid
reused by another program, is not alive).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"),
    reason="the promise is enforced on Linux only (a child subreaper and /proc)",
)

WAIT_S = 60.0
CLI = [sys.executable, "-m", "beaverq.impl.frontends.cli"]


def wait_until(predicate: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        threading.Event().wait(0.02)  # polling other processes: a short pause, bounded


def alive(pid: int) -> bool:
    """The process runs ``sleep`` and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    state = stat[stat.rfind(b")") + 2 :].split()[0]
    return state != b"Z" and b"sleep" in cmdline


def pids_in(path: Path) -> list[int]:
    if not path.exists():
        return []
    return [int(line) for line in path.read_text().split()]


def shell_job(pid_file: Path) -> str:
    """A program that starts a ``setsid`` escapee and a plain child, and writes their
    pids, then waits on the plain child."""
    script = f"setsid sleep 300 & echo $! >> {pid_file}; sleep 300 & echo $! >> {pid_file}; wait"
    return json.dumps({"argv": ["sh", "-c", script]})


def beaverq(data_dir: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [*CLI, "--data-dir", str(data_dir), *argv], capture_output=True, text=True, timeout=WAIT_S
    )
    assert done.returncode == 0, (argv, done.stdout, done.stderr)
    return done


@pytest.fixture
def pid_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "pids"
    yield path
    for pid in pids_in(path):  # a failed test leaves no sleeper behind
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


class Runner:
    def __init__(self, data_dir: Path, pool: str) -> None:
        self.process = subprocess.Popen(
            [*CLI, "--data-dir", str(data_dir), "run", "--allow-shell", "--pool", pool],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )

    def kill(self) -> None:
        self.process.kill()
        self.process.communicate(timeout=WAIT_S)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        self.process.communicate(timeout=WAIT_S)
        return self.process.returncode


@pytest.mark.parametrize("pool", ["threads", "processes"])
def test_a_setsid_escapee_dies_when_its_attempt_ends(
    tmp_path: Path, pid_file: Path, pool: str
) -> None:
    """Goal: at a normal exit, the processes a shell job started die with its
    attempt, the one that left the process group and session with ``setsid`` too.
    Method: a job whose program starts ``setsid sleep 300 &`` and ``sleep 300 &``
    and exits at once; ``beaverq run --until-idle``; /proc afterwards."""
    data_dir = tmp_path / "data"
    script = f"setsid sleep 300 & echo $! >> {pid_file}; sleep 300 & echo $! >> {pid_file}"
    job_id = beaverq(
        data_dir, "enqueue", "shell", json.dumps({"argv": ["sh", "-c", script]})
    ).stdout.strip()

    beaverq(data_dir, "run", "--allow-shell", "--pool", pool, "--until-idle")

    assert json.loads(beaverq(data_dir, "show", job_id, "--json").stdout)["status"] == "completed"
    pids = pids_in(pid_file)
    assert len(pids) == 2
    # The keeper killed them before it reported, and the job completed after that.
    assert [pid for pid in pids if alive(pid)] == []


@pytest.mark.parametrize("pool", ["threads", "processes"])
def test_a_sigkilled_runner_leaves_no_attempt_running(
    tmp_path: Path, pid_file: Path, pool: str
) -> None:
    """Goal: after a runner SIGKILL, attempt 1's processes (the ``setsid`` escapee
    included) die before a restarted runner runs attempt 2, so the job never runs
    twice at once; and attempt 2's die at a graceful stop.  Method: a long shell job;
    the runner SIGKILLed (its pid only: nothing else is signalled) once attempt 1's
    pids are written; /proc until they are gone; a restart; attempt 2's pids; SIGTERM."""
    data_dir = tmp_path / "data"
    beaverq(data_dir, "enqueue", "shell", shell_job(pid_file), "--timeout", "300")

    first = Runner(data_dir, pool)
    try:
        wait_until(lambda: len(pids_in(pid_file)) == 2, "attempt 1's processes")
        attempt_1 = pids_in(pid_file)
        assert all(alive(pid) for pid in attempt_1)
    finally:
        first.kill()
    wait_until(lambda: not any(alive(pid) for pid in attempt_1), "attempt 1's processes to die")

    second = Runner(data_dir, pool)
    try:
        wait_until(lambda: len(pids_in(pid_file)) == 4, "attempt 2's processes")
        attempt_2 = pids_in(pid_file)[2:]
        assert not any(alive(pid) for pid in attempt_1)
        assert all(alive(pid) for pid in attempt_2)
    finally:
        assert second.stop() == 0
    assert [pid for pid in attempt_2 if alive(pid)] == []


ORPHANING = """\
import pathlib, subprocess, threading, time
from beaverq.impl.runtime.handlers import handler

@handler("orphan")
def orphan(args, context):
    # A background process that outlives its shell and ends at once: an orphan that
    # comes to the worker process (a subreaper) and exits there.  Return once it has
    # (a zombie, or already reaped), so that what the test sees does not race it.
    done = subprocess.run(["sh", "-c", "true & echo $!"], capture_output=True, check=True)
    stat = pathlib.Path(f"/proc/{int(done.stdout)}/stat")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            text = stat.read_bytes()
        except OSError:
            break
        if text[text.rfind(b")") + 2 :].split()[0] == b"Z":
            break
        threading.Event().wait(0.01)
    return {}
"""


def zombie_descendants(pid: int) -> int:
    """How many of ``pid``'s descendants are zombies (/proc)."""
    parents: dict[int, int] = {}
    zombies: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_bytes()
        except OSError:
            continue  # gone meanwhile
        fields = stat[stat.rfind(b")") + 2 :].split()
        parents[int(entry.name)] = int(fields[1])
        if fields[0] == b"Z":
            zombies.add(int(entry.name))
    descendants = {pid}
    for _ in range(len(parents)):  # each round adds a generation; bounded by the count
        more = {child for child, parent in parents.items() if parent in descendants}
        if more <= descendants:
            break
        descendants |= more
    return len(zombies & (descendants - {pid}))


def test_a_worker_process_reaps_the_orphans_that_end(tmp_path: Path) -> None:
    """Goal: a process-pool worker, a child subreaper, reaps the orphans of its Python
    handlers that end; it used to keep each as a zombie (a pid) for as long as it
    lived, 20 after 20 such jobs.  Method: 20 jobs whose handler leaves a background
    ``true`` behind; a long-lived ``beaverq run --pool processes``; once they are all
    completed, the zombies among the runner's descendants (/proc)."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "orphaning.py").write_text(ORPHANING)
    data_dir = tmp_path / "data"
    jobs = 20
    for _ in range(jobs):
        beaverq(data_dir, "enqueue", "orphan", "{}")
    runner = subprocess.Popen(
        [*CLI, "--data-dir", str(data_dir), "run", "--pool", "processes", "--import", "orphaning"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=project,
        env=dict(os.environ, PYTHONPATH="."),
    )
    try:

        def all_completed() -> bool:
            done = json.loads(beaverq(data_dir, "status", "--json").stdout)
            return bool(done["completed"] == jobs)

        wait_until(all_completed, "the jobs to complete")
        assert zombie_descendants(runner.pid) == 0
    finally:
        runner.send_signal(signal.SIGTERM)
        runner.communicate(timeout=WAIT_S)


@pytest.mark.parametrize("pool", ["threads", "processes"])
def test_an_attempt_keeper_reaps_the_orphans_that_end_while_its_program_runs(
    tmp_path: Path, pool: str
) -> None:
    """Goal: a long shell attempt whose program leaves background processes behind
    that end (``(true &)``: each an orphan, re-parented to the keeper) costs no pid per
    orphan: the keeper reaps them as they end, not only when the attempt ends (it used
    to keep 10 zombies for the attempt's whole life).  Method: a shell job that makes
    10 such orphans, then says it is ready and sleeps; a long-lived runner; the zombies
    among the runner's descendants (/proc) must go within a few REAP_S."""
    from beaverq.impl.runtime.attempt_keeper import REAP_S

    ready = tmp_path / "ready"
    script = f"for i in 1 2 3 4 5 6 7 8 9 10; do (true &); done; echo > {ready}; sleep 300"
    data_dir = tmp_path / "data"
    beaverq(data_dir, "enqueue", "shell", json.dumps({"argv": ["sh", "-c", script]}))
    runner = subprocess.Popen(
        [*CLI, "--data-dir", str(data_dir), "run", "--allow-shell", "--pool", pool, "--grace", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(ready.exists, "the job's orphans")
        wait_until(lambda: zombie_descendants(runner.pid) == 0, "no zombie", 5 * REAP_S)
    finally:
        runner.send_signal(signal.SIGTERM)
        runner.communicate(timeout=WAIT_S)
