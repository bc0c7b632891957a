"""Crash recovery with real processes and SIGKILL.

1. The original design's integration test, literally: add 100 jobs, wait for 50 to
   complete, crash (SIGKILL of a real runner process), restart, recovery under 3 s,
   the remaining jobs complete.
2. A kill -9 campaign: producers enqueue while a runner is SIGKILLed at random
   moments, over ``BEAVERQ_KILL9_ROUNDS`` rounds (default 3, for CI; set it higher for
   a long hunt).  After each kill, offline: every acknowledged enqueue is in the log
   and the state's invariants hold.  At the end: every job ended completed, dead or
   cancelled; no completion was recorded twice in the whole log; every completed
   ``shell`` job's side effect (a line appended to a file) happened at least once.

The runners are watched through their metrics endpoint (``impl/frontends/metrics.py``); the
whole WAL is kept by hard links while they run (``teaching/demo_runner.py``, ``WalArchive``), so
the history is checked from LSN 1 although snapshots compact the live directory.

Producers.  An acknowledged enqueue needs a runner-side path while a runner holds
the data dir's lock.  Until the CLI's control socket lands, the campaign's producers
are threads *inside* the runner process: each writes a job's id to an acks file
only after ``enqueue_batch`` returned (durable), and SIGKILL takes them down with
the runner, at any point of that sequence.

This file is also the campaign runner's program: ``python tests/test_kill9.py runner ...``.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from beaverq.teaching.demo_runner import WalArchive, scrape

THIS_FILE = os.path.abspath(__file__)
WAIT_S = 60.0
RECOVERY_MAX_S = 3.0  # the original design's goal
ROUNDS = int(os.environ.get("BEAVERQ_KILL9_ROUNDS", "3"))
FINISHED = {"completed", "dead", "cancelled"}


def wait_for(predicate: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        threading.Event().wait(0.02)  # polling another process: a short pause, bounded


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Proc:
    """A runner subprocess in its own session (SIGKILL reaches all of it)."""

    def __init__(self, argv: list[str], port: int, log: Path) -> None:
        self.port = port
        self._log = open(log, "ab")  # noqa: SIM115 (closed by wait)
        self.log = log
        self.process = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def samples(self) -> dict[str, float]:
        found = scrape(self.port)
        if found is None:
            assert self.process.poll() is None, f"runner exited:\n{self.log.read_text()}"
            return {}
        return found

    def wait_serving(self) -> dict[str, float]:
        found: dict[str, float] = {}

        def serving() -> bool:
            nonlocal found
            found = self.samples()
            return "queue_recovery_duration_seconds" in found

        wait_for(serving, "the runner's metrics")
        return found

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.wait()

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.wait()

    def wait(self) -> int:
        try:
            return self.process.wait(WAIT_S)
        finally:
            self._log.close()


def count(samples: dict[str, float], state: str) -> int:
    return int(samples.get(f"queue_jobs{{state={state}}}", 0))


def whole_log(archive: WalArchive) -> list:
    from beaverq.impl.storage.codec import decode_event
    from beaverq.impl.storage.fs import RealFileSystem
    from beaverq.impl.storage.wal_reader import read_wal

    contents = read_wal(RealFileSystem(), archive.directory, after_lsn=0, after_chain_crc=0)
    events = [decode_event(record.payload) for record in contents.records]
    assert [e.lsn for e in events] == list(range(1, len(events) + 1)), "the archive has a gap"
    return events


def open_offline(data_dir: Path):
    """The state as recovery sees it (no runner holds the directory).

    Right after a SIGKILL the data dir's flock can still be held for a moment: a
    ``shell`` job's child caught between fork and exec shares the runner's open file
    description of LOCK (flock locks belong to it, not to a process) until its exec
    closes it (O_CLOEXEC).  So the lock is waited for, with a deadline."""
    from beaverq.impl.storage.fs import DataDirLocked, RealFileSystem
    from beaverq.impl.storage.storage import Storage

    opened = None

    def lock_free() -> bool:
        nonlocal opened
        try:
            opened = Storage.open(RealFileSystem(), str(data_dir))
        except DataDirLocked:
            return False
        return True

    wait_for(lock_free, "the data dir's lock", timeout_s=10.0)
    assert opened is not None
    storage, state, _report = opened
    storage.close()
    return state


def check_log(archive: WalArchive, state) -> list:
    from beaverq.model import JobCompleted
    from beaverq.spec.history import check_history

    events = whole_log(archive)
    check_history(events)
    completions = Counter(e.job_id for e in events if isinstance(e, JobCompleted))
    assert [job for job, n in completions.items() if n > 1] == []
    assert events[-1].lsn == state.last_lsn
    return events


# -- 1. The original design's integration test. ----------------------------------------


def test_add_100_wait_50_sigkill_restart_recover_under_3s_rest_complete(tmp_path):
    from beaverq.impl.runtime.controller import Controller
    from beaverq.impl.runtime.handlers import HandlerRegistry
    from beaverq.impl.runtime.workers import ThreadPool
    from beaverq.teaching.demo_runner import Runner

    data_dir = tmp_path / "data"
    archive = WalArchive(str(data_dir), str(tmp_path / "archive"))
    with Controller.open(str(data_dir), ThreadPool(HandlerRegistry(), 1)) as producer:
        ids = producer.enqueue_batch([{"handler": "sleep", "args": {"seconds": 0.05}}] * 100)
    archive.sync()

    runner = Runner(str(data_dir), 2, str(tmp_path / "runner-1.log"))
    try:
        runner.wait_serving(time.monotonic() + WAIT_S)
        at_kill: dict[str, float] = {}

        def fifty_done() -> bool:
            nonlocal at_kill
            archive.sync()
            at_kill = scrape(runner.port) or {}
            return count(at_kill, "completed") >= 50

        wait_for(fifty_done, "50 completions")
    finally:
        runner.kill()  # the crash
    archive.sync()
    assert runner.process.returncode == -signal.SIGKILL
    assert count(at_kill, "completed") < 100, "the crash came too late to test anything"

    runner = Runner(str(data_dir), 2, str(tmp_path / "runner-2.log"))
    try:
        samples = runner.wait_serving(time.monotonic() + WAIT_S)
        assert samples["queue_recovery_duration_seconds"] < RECOVERY_MAX_S

        def all_done() -> bool:
            archive.sync()
            found = scrape(runner.port) or {}
            return count(found, "completed") == 100 and count(found, "in_flight") == 0

        wait_for(all_done, "the remaining jobs")
        assert runner.terminate(WAIT_S) == 0
    finally:
        if runner.process.poll() is None:
            runner.kill()
    archive.sync()
    state = open_offline(data_dir)
    assert {state.jobs[job_id].status.value for job_id in ids} == {"completed"}
    check_log(archive, state)


# -- 2. The kill -9 campaign. ------------------------------------------------------------


def _runner_argv(data_dir: Path, work: Path, port: int, seed: int, produce: bool) -> list[str]:
    return [
        sys.executable, THIS_FILE, "runner", str(data_dir), str(work / "acks"),
        str(work / "effects"), str(seed), str(port), "produce" if produce else "drain",
    ]  # fmt: skip


def read_acks(work: Path) -> tuple[dict[str, str], set[str]]:
    """Acknowledged job ids -> kind, and the ids a producer asked to cancel.  A line
    cut by the SIGKILL (no newline yet) is not an acknowledgement."""
    kinds: dict[str, str] = {}
    cancels: set[str] = set()
    path = work / "acks"
    if not path.exists():
        return kinds, cancels
    for line in path.read_text().splitlines(keepends=True):
        if not line.endswith("\n"):
            continue
        verb, job_id, *rest = line.split()
        if verb == "ack":
            kinds[job_id] = rest[0]
        elif verb == "cancel":
            cancels.add(job_id)
    return kinds, cancels


def test_kill9_campaign(tmp_path):
    from beaverq.spec.invariants import check_all

    rng = random.Random(int(os.environ.get("BEAVERQ_KILL9_SEED", "0")) or None)
    data_dir, work = tmp_path / "data", tmp_path
    archive = WalArchive(str(data_dir), str(tmp_path / "archive"))
    recoveries: list[float] = []
    acked = 0
    for round_number in range(ROUNDS):
        port = free_port()
        argv = _runner_argv(data_dir, work, port, rng.getrandbits(32), produce=True)
        runner = Proc(argv, port, tmp_path / f"runner-{round_number}.log")
        try:
            recoveries.append(runner.wait_serving()["queue_recovery_duration_seconds"])
            # A random moment: after a random number of new acknowledged enqueues.
            target = acked + rng.randint(10, 300)

            def enough(target: int = target) -> bool:
                archive.sync()
                return len(read_acks(work)[0]) >= target

            wait_for(enough, f"{target} acknowledged enqueues")
        finally:
            runner.kill()
        assert runner.process.returncode == -signal.SIGKILL
        archive.sync()
        # After the crash: every acknowledged enqueue is in the recovered state.
        state = open_offline(data_dir)
        archive.sync()
        kinds, _cancels = read_acks(work)
        missing = [job_id for job_id in kinds if job_id not in state.jobs]
        assert missing == [], f"round {round_number}: acknowledged but lost: {missing[:5]}"
        check_all(state)
        acked = len(kinds)

    # Drain: a last runner without producers runs everything to the end.
    port = free_port()
    runner = Proc(
        _runner_argv(data_dir, work, port, 0, produce=False), port, tmp_path / "drain.log"
    )
    try:
        recoveries.append(runner.wait_serving()["queue_recovery_duration_seconds"])

        def drained() -> bool:
            archive.sync()
            found = runner.samples()
            return bool(found) and all(
                count(found, state) == 0 for state in ("pending", "delayed", "in_flight")
            )

        wait_for(drained, "the queue to drain")
        assert runner.terminate() == 0
    finally:
        if runner.process.poll() is None:
            runner.kill()
    archive.sync()

    assert max(recoveries) < RECOVERY_MAX_S, recoveries
    state = open_offline(data_dir)
    check_all(state)
    kinds, cancels = read_acks(work)
    assert len(kinds) >= ROUNDS * 10
    statuses = {job_id: state.jobs[job_id].status.value for job_id in kinds}
    assert set(statuses.values()) <= FINISHED, Counter(statuses.values())
    for job_id, kind in kinds.items():
        if job_id in cancels:
            continue  # cancelled, or finished before the cancel arrived: all allowed
        expected = "dead" if kind == "fail" else "completed"
        assert statuses[job_id] == expected, (job_id, kind, statuses[job_id])
    check_log(archive, state)
    # Shell side effects: at least once for every completed shell job (at-least-once
    # execution; a line per attempt that ran, so more than one is allowed).
    effects = Counter(
        line.split()[0] for line in (work / "effects").read_text().splitlines() if line.strip()
    )
    shell_completed = [j for j, k in kinds.items() if k == "shell" and statuses[j] == "completed"]
    assert shell_completed, "the campaign ran no shell job"
    assert [job_id for job_id in shell_completed if effects[job_id] < 1] == []
    print(
        f"kill -9 campaign: {ROUNDS} rounds, {len(kinds)} acknowledged jobs, "
        f"{Counter(statuses.values())}, recovery max {max(recoveries) * 1000:.1f} ms"
    )


# -- The campaign's runner program. -----------------------------------------------------


def campaign_runner(argv: list[str]) -> int:
    """``runner DATA_DIR ACKS EFFECTS SEED PORT produce|drain``: a runner (shell allowed)
    with metrics; with ``produce``, two producer threads enqueue mixed jobs and log each
    acknowledged id.  Runs until SIGTERM (graceful stop, exit 0) or SIGKILL."""
    from beaverq.impl.frontends.metrics import Metrics, serve_metrics
    from beaverq.impl.runtime.controller import Controller
    from beaverq.impl.runtime.handlers import HandlerRegistry
    from beaverq.impl.runtime.job_request import JobRequest
    from beaverq.impl.runtime.workers import ThreadPool
    from beaverq.model import Rejected

    data_dir, acks_path, effects_path, seed, port, mode = argv
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    controller = Controller.open(data_dir, ThreadPool(HandlerRegistry(allow_shell=True), 4))
    metrics = Metrics(controller)
    server = serve_metrics(metrics, int(port))
    controller.start()
    acks_lock = threading.Lock()
    acks = open(acks_path, "a")  # noqa: SIM115 (closed below; SIGKILL needs no close)
    shell = [
        "sh", "-c", f'echo "$BEAVERQ_JOB_ID $BEAVERQ_ATTEMPT" >> "{effects_path}"',
    ]  # fmt: skip
    # Enough attempts that crashes alone (one abandoned attempt per round) never kill a job.
    attempts = min(100, ROUNDS + 5)

    def produce(index: int) -> None:
        rng = random.Random(int(seed) * 7 + index)
        while not stop.is_set():
            kinds = [rng.choice(("noop", "noop", "shell", "shell", "fail")) for _ in range(5)]
            requests = []
            for kind in kinds:
                if kind == "noop":
                    requests.append(JobRequest.of("noop", max_attempts=attempts))
                elif kind == "shell":
                    requests.append(JobRequest.of("shell", {"argv": shell}, max_attempts=attempts))
                else:
                    requests.append(JobRequest.of("fail", max_attempts=2, backoff_base_ms=10))
            try:
                ids = controller.enqueue_batch(requests)
            except Exception:
                return  # stopping
            with acks_lock:
                # Written only now: the enqueue is durable.
                acks.write("".join(f"ack {i} {k}\n" for i, k in zip(ids, kinds, strict=True)))
                acks.flush()
            if rng.random() < 0.2:
                # The intent is logged first: a kill right after a durable cancel must
                # not leave a cancelled job that the test believes nobody cancelled.
                with acks_lock:
                    acks.write(f"cancel {ids[0]}\n")
                    acks.flush()
                try:
                    controller.cancel(ids[0])
                except Rejected:
                    pass  # it finished already: nothing to cancel
                except Exception:
                    return  # stopping
            stop.wait(0.01)  # a producer's pace, not a test's wait

    producers = []
    if mode == "produce":
        producers = [
            threading.Thread(target=produce, args=(index,), daemon=True) for index in range(2)
        ]
        for thread in producers:
            thread.start()
    try:
        while not stop.wait(0.5):
            if controller.failure is not None:
                break
        stop.set()
        for thread in producers:
            thread.join()
        controller.stop(grace_s=5.0)
    finally:
        server()
        acks.close()
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["runner"]:
        pytest.exit("usage: test_kill9.py runner DATA_DIR ACKS EFFECTS SEED PORT MODE")
    raise SystemExit(campaign_runner(sys.argv[2:]))
