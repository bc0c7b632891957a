"""The queue's CLI contract (issue 4), through real processes: every command with and
without a runner, bad input that changes no byte, two runners, signals, --until-idle.

No test sleeps: a test waits on a condition (the control socket appearing, a job's
state) with a deadline, or on a process's exit with a timeout.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

WAIT_S = 30.0
CLI = [sys.executable, "-m", "beaverq.impl.frontends.cli"]


def wait_until(predicate: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        threading.Event().wait(0.01)


def beaverq(
    data_dir: Path, *argv: str, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [*CLI, "--data-dir", str(data_dir), *argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )
    if check:
        assert done.returncode == 0, (argv, done.stdout, done.stderr)
    return done


def dir_bytes(data_dir: Path) -> dict[str, bytes]:
    """Every file's bytes, by name (the control socket aside: it is not data)."""
    return {
        path.name: path.read_bytes()
        for path in sorted(data_dir.iterdir())
        if path.name != "control.sock"
    }


class RunningRunner:
    def __init__(self, data_dir: Path, *extra: str) -> None:
        self.data_dir = data_dir
        self.process = subprocess.Popen(
            [*CLI, "--data-dir", str(data_dir), "run", "--workers", "2", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        socket = data_dir / "control.sock"
        wait_until(lambda: socket.exists() or self.process.poll() is not None)
        assert self.process.poll() is None, self.process.communicate()

    def stop(self, signal_number: int = signal.SIGTERM) -> tuple[int, str]:
        self.process.send_signal(signal_number)
        _out, err = self.process.communicate(timeout=WAIT_S)
        return self.process.returncode, err


@pytest.fixture
def runner_factory(tmp_path: Path) -> Iterator[Callable[..., RunningRunner]]:
    started: list[RunningRunner] = []

    def start(*extra: str) -> RunningRunner:
        runner = RunningRunner(tmp_path / "data", *extra)
        started.append(runner)
        return runner

    yield start
    for runner in started:  # a failed test leaves no process behind
        if runner.process.poll() is None:
            runner.process.kill()
            runner.process.communicate()


def state_of(data_dir: Path, job_id: str) -> str:
    detail = json.loads(beaverq(data_dir, "show", job_id, "--json").stdout)
    status: str = detail["status"]
    return status


def exercise_every_command(data_dir: Path, *, running: bool) -> None:
    """The same script, with or without a runner; only job execution differs."""
    one = beaverq(data_dir, "enqueue", "noop", '{"x": 1}', "--queue", "q1").stdout
    job_id = one.strip()
    assert one == f"{job_id}\n" and job_id  # the id alone on stdout
    named = beaverq(
        data_dir, "enqueue", "fail", '{"message": "boom"}', "--id", "doomed",
        "--priority", "5", "--max-attempts", "1", "--timeout", "2.5",
        "--idempotency-key", "k1",
    ).stdout  # fmt: skip
    assert named == "doomed\n"
    again = beaverq(data_dir, "enqueue", "fail", "--idempotency-key", "k1").stdout
    assert again == "doomed\n"  # a known key answers the first job's id
    delayed = beaverq(data_dir, "enqueue", "noop", "--delay", "3600", "--id", "later").stdout
    assert delayed == "later\n"
    batch = "\n".join(
        json.dumps(job)
        for job in (
            {"handler": "noop", "queue": "q2"},
            {"handler": "noop", "args": {"a": [1]}, "id": "b2", "priority": -3},
        )
    )
    ids = beaverq(data_dir, "enqueue", "--batch", "-", stdin=batch).stdout.split()
    assert len(ids) == 2 and ids[1] == "b2"

    if running:
        wait_until(lambda: state_of(data_dir, "doomed") == "dead")
        wait_until(lambda: state_of(data_dir, "b2") == "completed")
        assert beaverq(data_dir, "requeue", "doomed").stdout.strip() in (
            "pending",
            "in_flight",
            "dead",
        )
    else:
        assert state_of(data_dir, "doomed") == "pending"
        failed = beaverq(data_dir, "requeue", "doomed", check=False)
        assert failed.returncode == 1 and "rejected" in failed.stderr  # not dead
    assert beaverq(data_dir, "cancel", "later").stdout == "cancelled\n"

    status = json.loads(beaverq(data_dir, "status", "--json").stdout)
    for key in ("pending", "in_flight", "completed", "dead", "cancelled"):
        assert isinstance(status[key], int)
    assert status["total"] == 5 and status["cancelled"] == 1
    assert set(status["queues"]) == {"default", "q1", "q2"}
    assert (status["runtime"] is not None) == running
    text = beaverq(data_dir, "status").stdout
    assert "pending" in text and "queue q1" in text

    listed = json.loads(beaverq(data_dir, "jobs", "--json").stdout)
    assert [job["job_id"] for job in listed][:2] == [job_id, "doomed"]
    only = json.loads(beaverq(data_dir, "jobs", "--queue", "q2", "--json").stdout)
    assert [job["queue"] for job in only] == ["q2"]
    cancelled = beaverq(data_dir, "jobs", "--state", "cancelled").stdout
    assert cancelled.startswith("later\tcancelled")

    shown = beaverq(data_dir, "show", "doomed").stdout
    assert "handler: fail" in shown
    detail = json.loads(beaverq(data_dir, "show", "doomed", "--json").stdout)
    assert detail["timeout_ms"] == 2500 and detail["priority"] == 5
    if running:
        assert any(record["error"] == "boom" for record in detail["attempts"])

    assert beaverq(data_dir, "pause", "q9").stdout == ""
    assert json.loads(beaverq(data_dir, "status", "--json").stdout)["paused"] == ["q9"]
    assert beaverq(data_dir, "resume", "q9").stdout == ""
    assert json.loads(beaverq(data_dir, "status", "--json").stdout)["paused"] == []


def test_every_command_without_a_runner(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    exercise_every_command(data_dir, running=False)
    assert beaverq(data_dir, "verify").returncode == 0


def test_every_command_with_a_runner(runner_factory: Callable[..., RunningRunner]) -> None:
    runner = runner_factory()
    socket = runner.data_dir / "control.sock"
    assert socket.stat().st_mode & 0o777 == 0o600
    exercise_every_command(runner.data_dir, running=True)
    code, err = runner.stop()
    assert code == 0, err
    assert not socket.exists()  # removed on exit
    # What the runner acknowledged is there after it stopped.
    assert state_of(runner.data_dir, "b2") == "completed"


def test_until_idle_exits_zero_once_the_jobs_are_done(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    jobs = "".join(json.dumps({"handler": "noop", "args": {"n": n}}) + "\n" for n in range(50))
    with (tmp_path / "jobs.jsonl").open("w") as file:
        file.write(jobs)
    ids = beaverq(data_dir, "enqueue", "--batch", str(tmp_path / "jobs.jsonl")).stdout.split()
    assert len(ids) == 50
    done = beaverq(data_dir, "run", "--workers", "4", "--until-idle")
    assert done.returncode == 0
    status = json.loads(beaverq(data_dir, "status", "--json").stdout)
    assert status["completed"] == 50 and status["pending"] == 0


def test_until_idle_with_the_process_pool(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    jobs = "".join(json.dumps({"handler": "noop"}) + "\n" for _ in range(5))
    jobs += json.dumps({"handler": "fail", "max_attempts": 1, "id": "bad"}) + "\n"
    assert len(beaverq(data_dir, "enqueue", "--batch", "-", stdin=jobs).stdout.split()) == 6
    beaverq(data_dir, "run", "--pool", "processes", "--workers", "2", "--until-idle")
    status = json.loads(beaverq(data_dir, "status", "--json").stdout)
    assert (status["completed"], status["dead"]) == (5, 1)


def test_metrics_port_serves_prometheus_text(
    runner_factory: Callable[..., RunningRunner],
) -> None:
    runner = runner_factory("--metrics-port", "0")
    assert runner.process.stderr is not None
    lines = [runner.process.stderr.readline() for _ in range(2)]
    url = next(line.split("metrics on ")[1].strip() for line in lines if "metrics on" in line)
    beaverq(runner.data_dir, "enqueue", "noop", "--id", "m1")
    wait_until(lambda: state_of(runner.data_dir, "m1") == "completed")
    with urllib.request.urlopen(url, timeout=WAIT_S) as response:
        text = response.read().decode()
    assert "queue_jobs_completed_total" in text and "queue_depth_pending" in text
    assert runner.stop()[0] == 0


def test_concurrent_commands_without_a_runner_take_turns(tmp_path: Path) -> None:
    """Each holds the lock only for its own command; the others wait their turn."""
    data_dir = tmp_path / "data"
    processes = [
        subprocess.Popen(
            [*CLI, "--data-dir", str(data_dir), "enqueue", "noop", "--id", f"c{n}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    outputs = [process.communicate(timeout=WAIT_S) for process in processes]
    assert [process.returncode for process in processes] == [0] * 4, outputs
    assert sorted(out for out, _err in outputs) == [f"c{n}\n" for n in range(4)]
    assert json.loads(beaverq(data_dir, "status", "--json").stdout)["pending"] == 4


def test_two_runners_the_second_fails_clearly(
    runner_factory: Callable[..., RunningRunner],
) -> None:
    runner = runner_factory()
    second = beaverq(runner.data_dir, "run", "--until-idle", check=False)
    assert second.returncode == 1
    assert f"in use by process {runner.process.pid}" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    assert runner.stop()[0] == 0


def test_sigint_stops_gracefully_and_returns_unfinished_jobs(
    runner_factory: Callable[..., RunningRunner],
) -> None:
    runner = runner_factory("--grace", "0.2")
    data_dir = runner.data_dir
    beaverq(data_dir, "enqueue", "sleep", '{"seconds": 60}', "--id", "long")
    wait_until(lambda: state_of(data_dir, "long") == "in_flight")
    code, err = runner.stop(signal.SIGINT)
    assert code == 0, err
    assert "1 unfinished jobs released back to the queue (attempts not counted)" in err
    # Released by the stop itself (LeaseReleased): pending on disk, the interrupted
    # attempt recorded as released and not counted against max_attempts.
    detail = json.loads(beaverq(data_dir, "show", "long", "--json").stdout)
    assert detail["status"] == "pending"
    assert detail["attempts_used"] == 0
    assert [attempt["outcome"] for attempt in detail["attempts"]] == ["released"]


def test_a_second_signal_ends_the_grace(runner_factory: Callable[..., RunningRunner]) -> None:
    runner = runner_factory("--grace", "600")
    data_dir = runner.data_dir
    beaverq(data_dir, "enqueue", "sleep", '{"seconds": 600}', "--id", "long")
    wait_until(lambda: state_of(data_dir, "long") == "in_flight")
    runner.process.send_signal(signal.SIGTERM)
    # Stopping: enqueues are refused, yet the socket still answers reads.
    wait_until(
        lambda: beaverq(data_dir, "enqueue", "noop", check=False).returncode == 1,
    )
    started = time.monotonic()
    code, err = runner.stop(signal.SIGTERM)
    assert code == 0, err
    assert time.monotonic() - started < WAIT_S
    assert "ending the grace now" in err


# -- Bad input: a one-line error, a non-zero status, and no byte changed. ----------------

BAD_INPUTS = [
    ["enqueue", "noop", "{not json"],
    ["enqueue", "noop", "--priority", "11"],
    ["enqueue", "noop", "--priority", "high"],
    ["enqueue", "noop", "--max-attempts", "0"],
    ["enqueue", "noop", "--timeout", "-1"],
    ["enqueue", "noop", "--timeout", "nan"],
    ["enqueue", "noop", "--delay", "1e30"],
    ["enqueue", "noop", "--id", "j1"],  # a duplicate id
    ["enqueue"],
    ["cancel", "no-such-job"],
    ["requeue", "no-such-job"],
    ["requeue", "j1"],  # pending, not dead
    ["show", "no-such-job"],
    ["jobs", "--state", "sideways"],
    ["run", "--workers", "0"],
    ["run", "--lease-ahead", "-1"],
    ["run", "--lease-ahead", "inf"],
    ["status", "--bogus"],
]


@pytest.fixture(scope="module")
def seeded_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("bad") / "data"
    assert beaverq(data_dir, "enqueue", "noop").stdout == "j1\n"
    return data_dir


@pytest.mark.parametrize("argv", BAD_INPUTS, ids=" ".join)
def test_bad_input_fails_in_one_line_and_changes_nothing(seeded_dir: Path, argv: list[str]) -> None:
    before = dir_bytes(seeded_dir)
    done = beaverq(seeded_dir, *argv, check=False)
    assert done.returncode != 0
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert dir_bytes(seeded_dir) == before


def test_bad_batches_change_nothing(seeded_dir: Path) -> None:
    before = dir_bytes(seeded_dir)
    for text in (
        '{"handler": "noop"}\nnot json\n',
        '{"handler": "noop"}\n{"handler": "noop", "priority": 50}\n',
        '{"handler": "noop", "colour": "red"}\n',
        "[1, 2]\n",
        "",
    ):
        done = beaverq(seeded_dir, "enqueue", "--batch", "-", stdin=text, check=False)
        assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert dir_bytes(seeded_dir) == before


def test_unreadable_data_dirs_fail_clearly(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    for argv in (["status"], ["jobs"], ["show", "x"], ["cancel", "x"], ["pause", "q"]):
        done = beaverq(missing, *argv, check=False)
        assert done.returncode == 1 and "no such data directory" in done.stderr
    assert not missing.exists()  # only an enqueue creates a data directory
    a_file = tmp_path / "file"
    a_file.write_text("not a directory")
    for argv in (["status"], ["enqueue", "noop"]):
        done = beaverq(a_file, *argv, check=False)
        assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1
    assert a_file.read_text() == "not a directory"


def test_data_dir_from_the_environment_or_after_the_command(tmp_path: Path) -> None:
    env = {**os.environ, "BEAVERQ_DATA_DIR": str(tmp_path / "env")}
    done = subprocess.run(
        [*CLI, "enqueue", "noop"], capture_output=True, text=True, env=env, timeout=WAIT_S
    )
    assert done.returncode == 0 and done.stdout == "j1\n"
    after = subprocess.run(
        [*CLI, "status", "--json", "--data-dir", str(tmp_path / "env")],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )
    assert json.loads(after.stdout)["pending"] == 1


@pytest.mark.parametrize(
    "command", ["enqueue", "run", "status", "show", "jobs", "cancel", "requeue", "pause", "resume"]
)
def test_help_on_every_queue_command(command: str) -> None:
    done = subprocess.run([*CLI, command, "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith(f"usage: beaverq {command}")
