"""Never stop answering (issue 11): a real ``beaverq run`` against stuck and hostile
clients (impl/frontends/control_server.py), and a real CLI against a stuck or killed
runner (impl/frontends/control.py, the client's side).

Every load here is bounded (a fixed number of connections, a fixed number of bytes),
every wait is on a condition with a deadline, and every runner is killed at the end
whatever happens.  Sockets are Unix sockets in the test's tmp directory.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from beaverq.impl.frontends.control import ANSWER_WAIT_VARIABLE, CommandFailed, execute
from beaverq.impl.frontends.control_server import (
    CONNECTIONS_MAX,
    REQUEST_BYTES_MAX,
    REQUEST_S_MAX,
    REQUESTS_BUFFERED_BYTES_MAX,
)

WAIT_S = 60.0  # generous: only a broken test waits this long
CLI = [sys.executable, "-m", "beaverq.impl.frontends.cli"]


def wait_until(predicate: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        threading.Event().wait(0.01)


def beaverq(
    data_dir: Path, *argv: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "--data-dir", str(data_dir), *argv],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        env=None if env is None else {**os.environ, **env},
    )


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    """The command failed with exit 1 and exactly one line on stderr, no traceback."""
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


class RunningRunner:
    """A ``beaverq run`` in a child process, once its socket is served."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.socket_path = str(data_dir / "control.sock")
        self.process = subprocess.Popen(
            [*CLI, "--data-dir", str(data_dir), "run", "--workers", "2"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_until(lambda: os.path.exists(self.socket_path) or self.process.poll() is not None)
        assert self.process.poll() is None, self.process.communicate()

    @property
    def pid(self) -> int:
        return self.process.pid

    def descriptors(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def peak_memory_bytes(self) -> int:
        """The runner's resident set's high-water mark (VmHWM)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM in /proc/PID/status")

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        self.process.communicate(timeout=WAIT_S)
        return self.process.returncode


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[RunningRunner]:
    started = RunningRunner(tmp_path / "data")
    try:
        yield started
    finally:  # a failed test leaves no process behind, stopped or not
        if started.process.poll() is None:
            started.process.send_signal(signal.SIGCONT)
            started.process.kill()
            started.process.communicate()


def connect(path: str, timeout_s: float = 5.0) -> socket.socket:
    """A connection, once the runner's backlog has room for it (a full backlog refuses
    a connect at once, EAGAIN)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.settimeout(timeout_s)
        try:
            client.connect(path)
            return client
        except BlockingIOError:
            client.close()
            assert time.monotonic() < deadline, "the backlog stayed full"
            threading.Event().wait(0.01)


def read_answer(client: socket.socket) -> dict[str, object] | None:
    """The answer line (None if the runner hung up without one)."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = client.recv(65536)
        if not chunk:
            return None
        data += chunk
    answer: dict[str, object] = json.loads(data)
    return answer


def status_answers(data_dir: Path) -> None:
    """``beaverq status`` answers, from the runner."""
    done = beaverq(data_dir, "status", "--json", env={ANSWER_WAIT_VARIABLE: "20"})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["runtime"] is not None


# -- The accept loop outlives EMFILE. ------------------------------------------------------


def test_the_runner_accepts_again_after_running_out_of_descriptors(
    runner: RunningRunner,
) -> None:
    """Goal: an ``accept`` that fails with EMFILE does not end the accept loop: once
    descriptors are free again, commands are answered (they used to hang forever).

    Method: lower the runner's RLIMIT_NOFILE to a few descriptors above what it holds
    (prlimit), open idle connections until its descriptor count reaches the limit (so
    its accept fails), close them all, then ask ``status`` and run a job."""
    limit = runner.descriptors() + 6
    hard = resource.prlimit(runner.pid, resource.RLIMIT_NOFILE)[1]
    resource.prlimit(runner.pid, resource.RLIMIT_NOFILE, (limit, hard))
    idle = []
    try:
        for _ in range(limit):  # bounded: more than enough to run the runner out
            idle.append(connect(runner.socket_path))
        wait_until(lambda: runner.descriptors() >= limit)  # accept now fails: EMFILE
    finally:
        for client in idle:
            client.close()
    status_answers(runner.data_dir)
    done = beaverq(runner.data_dir, "enqueue", "noop", "--id", "after-emfile")
    assert done.returncode == 0, done.stderr
    wait_until(
        lambda: '"completed"' in beaverq(runner.data_dir, "show", "after-emfile", "--json").stdout
    )
    assert runner.stop() == 0


# -- Connections and the time a client may hold one. ---------------------------------------


def test_idle_clients_are_refused_over_the_limit_and_dropped_after_the_hold_time(
    runner: RunningRunner,
) -> None:
    """Goal: at most CONNECTIONS_MAX connections are served; one more is told "busy"
    at once; an idle client is hung up on after REQUEST_S_MAX; a command that meets a
    full runner waits its turn and is answered.

    Method: open CONNECTIONS_MAX idle connections, then a few more (each must read a
    "busy" answer); run ``status`` meanwhile (it must succeed once the idle ones are
    dropped); each idle connection must then read the runner's hang-up."""
    idle = [connect(runner.socket_path) for _ in range(CONNECTIONS_MAX)]
    try:
        extra = [connect(runner.socket_path) for _ in range(4)]
        for client in extra:
            answer = read_answer(client)
            assert answer is not None and answer["ok"] is False
            assert str(answer["error"]).startswith("busy: the runner serves"), answer
            client.close()
        started = time.monotonic()
        status_answers(runner.data_dir)  # refused as busy, asked again, then answered
        assert time.monotonic() - started < REQUEST_S_MAX + 10.0
        for client in idle:
            client.settimeout(REQUEST_S_MAX + 10.0)
            answer = read_answer(client)
            assert answer is not None and "not received within" in str(answer["error"])
            assert client.recv(1) == b""  # and then hung up on
    finally:
        for client in idle:
            client.close()
    assert runner.stop() == 0


def test_a_client_that_sends_no_newline_costs_bounded_memory(runner: RunningRunner) -> None:
    """Goal: a request line is at most REQUEST_BYTES_MAX bytes, and what the runner
    buffers for all its clients together is bounded: two clients that send three times
    that without a newline are refused, and the runner's peak memory grows by less
    than REQUESTS_BUFFERED_BYTES_MAX (it grew by 400 MB before).

    Method: two threads each send up to 3 * REQUEST_BYTES_MAX bytes without a newline
    (they stop when the runner hangs up); read each answer; compare VmHWM before and
    after; ``status`` still answers."""
    before = runner.peak_memory_bytes()
    clients = [connect(runner.socket_path, timeout_s=WAIT_S) for _ in range(2)]
    block = b"x" * (1024 * 1024)

    def flood(client: socket.socket) -> None:
        try:
            for _ in range(3 * REQUEST_BYTES_MAX // len(block)):
                client.sendall(block)
        except OSError:
            pass  # the runner hung up on us: what we expect

    threads = [threading.Thread(target=flood, args=(client,)) for client in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S)
        assert not thread.is_alive()
    for client in clients:
        with client:
            answer = read_answer(client)
        assert answer is not None and answer["ok"] is False
        assert str(answer["error"]).startswith(("request too large", "busy")), answer
    grown = runner.peak_memory_bytes() - before
    assert grown < REQUESTS_BUFFERED_BYTES_MAX + 16 * 1024 * 1024, grown
    status_answers(runner.data_dir)
    assert runner.stop() == 0


# -- The client's side: a stuck runner, a killed runner. -----------------------------------


def test_a_stuck_runner_gives_the_client_a_timeout_and_a_clear_message(
    runner: RunningRunner,
) -> None:
    """Goal: a client does not wait forever for a runner that does not answer; it
    fails in one line that says what may have happened: an enqueue may or may not have
    been stored (say how to check); a read changed nothing.

    Method: SIGSTOP the runner; run ``enqueue`` and ``status`` with a one-second answer
    wait; each must exit 1 within the deadline with its message; SIGCONT, and the
    message's advice works (``show ID`` answers)."""
    runner.process.send_signal(signal.SIGSTOP)
    try:
        wait = {ANSWER_WAIT_VARIABLE: "1"}
        enqueued = beaverq(runner.data_dir, "enqueue", "noop", "--id", "maybe", env=wait)
        message = one_line_error(enqueued)
        assert "did not answer within 1 s" in message
        assert "may or may not have been stored; check with the id or the idempotency key" in (
            message
        )
        status = one_line_error(beaverq(runner.data_dir, "status", env=wait))
        assert "did not answer within 1 s" in status and "changed nothing" in status
        bad_wait = one_line_error(
            beaverq(runner.data_dir, "status", env={ANSWER_WAIT_VARIABLE: "soon"})
        )
        assert f"{ANSWER_WAIT_VARIABLE}='soon'" in bad_wait
    finally:
        runner.process.send_signal(signal.SIGCONT)
    shown = beaverq(runner.data_dir, "show", "maybe", "--json")
    assert shown.returncode == 0 or "unknown job" in shown.stderr, shown.stderr
    assert runner.stop() == 0


def test_a_stuck_runner_s_pause_or_cancel_says_where_to_check(runner: RunningRunner) -> None:
    """Goal: when a pause or a cancel went out and no answer came, the message names
    a check that can show its effect: ``status`` for a queue's pause (it said ``show``,
    which takes a job id and knows nothing of queues), ``show ID`` for a job's cancel.
    Method: SIGSTOP the runner; ``pause`` and ``cancel`` with a one-second answer wait;
    each one-line message."""
    runner.process.send_signal(signal.SIGSTOP)
    try:
        wait = {ANSWER_WAIT_VARIABLE: "1"}
        paused = one_line_error(beaverq(runner.data_dir, "pause", "default", env=wait))
        assert "may or may not have taken effect (check with 'beaverq status')" in paused
        cancelled = one_line_error(beaverq(runner.data_dir, "cancel", "j1", env=wait))
        assert "may or may not have taken effect (check with 'beaverq show ID')" in cancelled
    finally:
        runner.process.send_signal(signal.SIGCONT)
    assert runner.stop() == 0


def pending_connections(runner: RunningRunner) -> int:
    """Connections waiting in the runner's backlog, from /proc/net/unix: each shows
    the name the listener was bound to (a temporary name, renamed into place)."""
    bound = f"{runner.socket_path}.{runner.pid}.tmp"
    lines = Path("/proc/net/unix").read_text().splitlines()
    return sum(1 for line in lines if line.endswith(" " + bound)) - 1  # - the listener


def test_a_runner_killed_mid_request_gives_may_or_may_not_not_a_traceback(
    runner: RunningRunner,
) -> None:
    """Goal: when the runner dies after the CLI's enqueue went out and before its
    answer (ConnectionResetError), the CLI says in one line that the job may or may
    not have been stored and how to check, never a traceback.

    Method: SIGSTOP the runner; start ``enqueue``; wait until its connection sits in
    the runner's backlog (/proc/net/unix); SIGKILL the runner (the kernel resets the
    connection); the CLI must exit 1 with the message; ``show`` then answers."""
    runner.process.send_signal(signal.SIGSTOP)
    client = subprocess.Popen(
        [*CLI, "--data-dir", str(runner.data_dir), "enqueue", "noop", "--id", "cut"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: pending_connections(runner) >= 1 or client.poll() is not None)
        assert client.poll() is None
        runner.process.kill()
        runner.process.communicate(timeout=WAIT_S)
        out, err = client.communicate(timeout=WAIT_S)
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate()
    message = one_line_error(subprocess.CompletedProcess(client.args, client.returncode, out, err))
    assert "may or may not have been stored; check with the id or the idempotency key" in message
    shown = beaverq(runner.data_dir, "show", "cut", "--json")
    assert shown.returncode == 0 or "unknown job" in shown.stderr, shown.stderr


# -- A runner starts while producers enqueue without one. ----------------------------------

PRODUCER_ENQUEUES_MAX = 400  # per producer loop: the loops stop themselves
RUNNER_STARTS = 3
STOPPING_REFUSALS = ("the controller is stopping", "the controller is closed")


def produce(data_dir: Path, name: str, stop: threading.Event, failures: list[str]) -> None:
    """Enqueue jobs one call at a time until told to stop (or the bound), through
    ``control.execute``, the CLI's road: without a runner each call holds the lock for
    its turn, back to back (a loop of ``beaverq enqueue`` adds a process start between
    turns, so it leaves the lock free more often)."""
    for number in range(PRODUCER_ENQUEUES_MAX):
        if stop.is_set():
            return
        try:
            execute(
                str(data_dir), "enqueue", {"job": {"handler": "noop", "id": f"{name}-{number}"}}
            )
        except CommandFailed as failure:
            # A runner that is stopping refuses new jobs (ControllerStopped), clearly
            # and storing nothing: that is no failure to start; anything else is.
            if not str(failure).startswith(STOPPING_REFUSALS):
                failures.append(str(failure))


def test_a_runner_starts_while_producers_enqueue_without_one(tmp_path: Path) -> None:
    """Goal: producers that enqueue without a runner hold the data directory's lock
    for each command; a runner starting meanwhile waits for such a short hold instead
    of failing with "another runner holds the data directory" (10 of 10 starts failed
    with two producer loops).  No enqueue fails either.

    Method: two producer loops (threads here); start ``beaverq run`` several
    times meanwhile: each must serve its socket (and stop with 0 on SIGTERM)."""
    data_dir = tmp_path / "data"
    stop = threading.Event()
    failures: list[str] = []
    producers = [
        threading.Thread(target=produce, args=(data_dir, f"p{n}", stop, failures)) for n in range(2)
    ]
    for producer in producers:
        producer.start()
    try:
        wait_until(lambda: (data_dir / "LOCK").exists())
        for _ in range(RUNNER_STARTS):
            started = RunningRunner(data_dir)  # fails if the run exits instead
            assert started.stop() == 0
    finally:
        stop.set()
        for producer in producers:
            producer.join(WAIT_S)
    assert not any(producer.is_alive() for producer in producers)
    assert failures == []


HOLDER = r"""
import sys
from beaverq.impl.storage.fs import RealFileSystem
from beaverq.impl.storage.storage import Storage

fs = RealFileSystem()
storage, state, report = Storage.open(fs, sys.argv[1])
print("locked", flush=True)
sys.stdin.readline()  # hold the lock until the parent says otherwise
storage.close()
"""


def test_a_lock_holder_that_is_not_a_runner_is_not_named_a_runner(tmp_path: Path) -> None:
    """Goal: a runner waits a bounded time for a holder that is not a runner, and then
    names it by its pid without calling it a runner; a real runner is named at once.

    Method: a child process opens the data directory and holds it (no socket);
    ``beaverq run`` must exit 1 after RUNNER_LOCK_WAIT_S with one line naming the
    child's pid and not "another runner".  Then, with a real runner holding it, a
    second ``run`` is refused at once as "another runner"."""
    from beaverq.impl.frontends.api import RUNNER_LOCK_WAIT_S

    data_dir = tmp_path / "data"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(data_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        started = time.monotonic()
        message = one_line_error(beaverq(data_dir, "run", "--until-idle"))
        assert time.monotonic() - started >= RUNNER_LOCK_WAIT_S
        assert f"in use by process {holder.pid}" in message
        assert "runner holds" not in message and "not a runner" in message
    finally:
        holder.communicate("release\n", timeout=WAIT_S)
    running = RunningRunner(data_dir)
    try:
        started = time.monotonic()
        message = one_line_error(beaverq(data_dir, "run", "--until-idle"))
        assert time.monotonic() - started < RUNNER_LOCK_WAIT_S
        assert f"another runner holds the data directory: {data_dir}" in message
        assert f"in use by process {running.pid}" in message
    finally:
        assert running.stop() == 0


def test_a_starting_runner_names_a_runner_by_its_socket_alone(tmp_path: Path) -> None:
    """Goal: whether the lock's holder is a runner is judged by its socket, not by an
    answer: a client's ``$BEAVERQ_ANSWER_WAIT_S`` set wrong made a starting runner call
    a producer "another runner" at once, and a stuck runner was named only after the
    client's whole answer wait (60 s).

    Method: a child process holds the lock (no socket) and lets go after 1 s; ``beaverq
    run --until-idle`` with ``BEAVERQ_ANSWER_WAIT_S=abc`` must wait for it and exit 0.
    Then a real runner, SIGSTOPped: a second ``run`` must be refused as "another
    runner" well within RUNNER_LOCK_WAIT_S."""
    from beaverq.impl.frontends.api import RUNNER_LOCK_WAIT_S

    data_dir = tmp_path / "data"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(data_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        started = subprocess.Popen(
            [*CLI, "--data-dir", str(data_dir), "run", "--until-idle"],
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, ANSWER_WAIT_VARIABLE: "abc"},
        )
        threading.Event().wait(1.0)  # the holder's turn: the runner must wait it out
        assert started.poll() is None, started.communicate()
    finally:
        holder.communicate("release\n", timeout=WAIT_S)
    _out, err = started.communicate(timeout=WAIT_S)
    assert started.returncode == 0, err
    running = RunningRunner(data_dir)
    running.process.send_signal(signal.SIGSTOP)
    try:
        begun = time.monotonic()
        message = one_line_error(beaverq(data_dir, "run", "--until-idle"))
        assert time.monotonic() - begun < RUNNER_LOCK_WAIT_S
        assert f"another runner holds the data directory: {data_dir}" in message
    finally:
        running.process.send_signal(signal.SIGCONT)
        assert running.stop() == 0


# -- The hold time, in-process with short bounds (the real runner's are seconds). ----------


def connection_threads() -> int:
    return sum(1 for thread in threading.enumerate() if thread.name == "beaverq-control-conn")


class _ManyJobs:
    """A target whose ``jobs`` answer is far larger than a socket's buffer."""

    def jobs(self, *_: object) -> list[dict[str, str]]:
        return [{"job_id": f"job-{number}", "padding": "x" * 100} for number in range(50_000)]


def test_a_client_that_trickles_or_does_not_read_is_hung_up_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Goal: the hold time bounds the whole request, not each read (a client that
    sends one byte at a time is hung up on at REQUEST_S_MAX), and the answer
    (ANSWER_S_MAX: a client that asks for a large answer and never reads it is hung
    up on, its thread freed).

    Method: a ``ControlServer`` with both bounds at 0.5 s; one client sends a byte
    every 0.1 s (at most 100) and must read "not received within"; another asks for a
    6 MB answer, reads nothing until the server has given up, then must find the answer
    cut short."""
    from beaverq.impl.frontends import control_server

    monkeypatch.setattr(control_server, "REQUEST_S_MAX", 0.5)
    monkeypatch.setattr(control_server, "ANSWER_S_MAX", 0.5)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    server = control_server.ControlServer(_ManyJobs(), str(data_dir))
    server.start()
    try:
        with connect(server.path) as trickler:
            answer = None
            for _ in range(100):  # 10 s at most; the server gives up after 0.5 s
                try:
                    trickler.sendall(b" ")
                except OSError:
                    break  # hung up on
                threading.Event().wait(0.1)
            answer = read_answer(trickler)
            assert answer is not None and "not received within 0.5 s" in str(answer["error"])
        with connect(server.path, timeout_s=WAIT_S) as reader:
            reader.sendall(b'{"op": "jobs"}\n')
            wait_until(lambda: connection_threads() == 1)  # served, and held 0.5 s at least
            wait_until(lambda: connection_threads() == 0)  # the server gave up on us
            received = b""
            while chunk := reader.recv(1 << 20):
                received += chunk
            assert len(received) > 0 and not received.endswith(b"\n")  # cut short
    finally:
        server.close()
