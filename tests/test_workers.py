"""The thread worker pool: execution, backpressure, graceful shutdown, no leaked threads.

Handlers that must stay busy wait on a test-owned ``threading.Event`` (or their
context's ``cancelled``), never on a timer, so each test is as fast as its
conditions allow.
"""

from __future__ import annotations

import json
import queue
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from beaverq.impl.runtime.handlers import HandlerContext, HandlerRegistry, Outcome
from beaverq.impl.runtime.process_pool import ProcessPool
from beaverq.impl.runtime.workers import (
    PoolClosed,
    PoolFull,
    Task,
    TaskResult,
    ThreadPool,
)

RESULT_WAIT_S = 10.0


def task(job_id: str, handler: str = "noop", args_json: str = "null", timeout_s: float = 30.0):
    return Task(job_id=job_id, attempt=1, handler=handler, args_json=args_json, timeout_s=timeout_s)


class Gate:
    """A handler that blocks until the test opens the gate (or the attempt is cancelled)."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.entered: queue.Queue[str] = queue.Queue()

    def __call__(self, args: object, context: HandlerContext) -> str:
        self.entered.put(context.job_id)
        while not self.opened.wait(0.01):
            if context.cancelled.is_set():
                return "cancelled"
        return "passed"


@pytest.fixture
def threads_checked() -> Iterator[None]:
    """Fails the test if it leaves a thread behind (the original design's leak check)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + RESULT_WAIT_S
    while True:
        extra = [thread for thread in threading.enumerate() if thread not in before]
        # Threads from threading.Timer or the like finish on their own; pool threads
        # must be gone already, since shutdown joins them.
        leaked = [thread.name for thread in extra if thread.name.startswith("beaverq")]
        if not leaked:
            break
        assert time.monotonic() < deadline, f"leaked threads: {leaked}"
        threading.Event().wait(0.01)
    assert threading.active_count() <= len(before) + len(extra)


def started_pool(registry: HandlerRegistry, workers: int = 2, **kwargs: object):
    return started_pool_of(ThreadPool(registry, workers, **kwargs))  # type: ignore[arg-type]


def started_pool_of(pool: ThreadPool | ProcessPool):
    results: queue.Queue[TaskResult] = queue.Queue()
    pool.start(results.put)
    return pool, results


def process_gone(pid: int) -> bool:
    """True once ``pid`` no longer runs (a zombie waiting to be reaped counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def test_runs_tasks_and_reports_each_outcome(threads_checked: None) -> None:
    pool, results = started_pool(HandlerRegistry(), workers=3)
    pool.submit(task("a"))
    pool.submit(task("b", "fail", '{"message":"no"}'))
    pool.submit(task("c", "sleep", '{"seconds":0.01}'))
    got = {}
    for _ in range(3):
        result = results.get(timeout=RESULT_WAIT_S)
        got[result.job_id] = result.outcome
    assert got == {
        "a": Outcome.success("null"),
        "b": Outcome.failure("no"),
        "c": Outcome.success('{"slept":0.01}'),
    }
    assert pool.shutdown(1.0) == []
    assert pool.stuck_threads == []


def test_a_failing_handler_does_not_cost_a_worker(threads_checked: None) -> None:
    registry = HandlerRegistry()

    def crash(args: object, context: HandlerContext) -> None:
        raise RuntimeError("bug in handler")

    registry.add("crash", crash)
    pool, results = started_pool(registry, workers=1)
    for index in range(5):
        pool.submit(task(f"x{index}", "crash"))
        assert results.get(timeout=RESULT_WAIT_S).outcome == Outcome.failure(
            "crash: RuntimeError: bug in handler"
        )
    pool.submit(task("after", "noop"))
    assert results.get(timeout=RESULT_WAIT_S).outcome.ok
    assert pool.shutdown(1.0) == []


def test_unknown_handler_fails_the_task_not_the_pool(threads_checked: None) -> None:
    pool, results = started_pool(HandlerRegistry(), workers=1)
    pool.submit(task("u", "mystery"))
    outcome = results.get(timeout=RESULT_WAIT_S).outcome
    assert not outcome.ok
    assert "unknown handler 'mystery'" in (outcome.error or "")
    pool.submit(task("v"))
    assert results.get(timeout=RESULT_WAIT_S).outcome.ok
    pool.shutdown(1.0)


def test_bounded_queue_refuses_instead_of_blocking(threads_checked: None) -> None:
    gate = Gate()
    registry = HandlerRegistry()
    registry.add("gate", gate)
    pool, results = started_pool(registry, workers=1, queue_max=2)
    assert pool.capacity == 3
    for index in range(3):
        pool.submit(task(f"g{index}", "gate"))
    gate.entered.get(timeout=RESULT_WAIT_S)
    started = time.monotonic()
    with pytest.raises(PoolFull, match="holds 3 tasks"):
        pool.submit(task("overflow", "gate"))
    assert time.monotonic() - started < 1.0  # refused at once, never blocked
    gate.opened.set()
    done = sorted(results.get(timeout=RESULT_WAIT_S).job_id for _ in range(3))
    assert done == ["g0", "g1", "g2"]
    pool.submit(task("room-again"))  # the pool took work again once it drained
    assert results.get(timeout=RESULT_WAIT_S).job_id == "room-again"
    pool.shutdown(1.0)


def test_graceful_shutdown_waits_for_quick_jobs_and_abandons_slow_ones(
    threads_checked: None,
) -> None:
    gate = Gate()
    registry = HandlerRegistry()
    registry.add("gate", gate)
    quick_entered = threading.Event()

    def quick(args: object, context: HandlerContext) -> str:
        quick_entered.set()
        context.wait(0.05)
        return "quick done"

    registry.add("quick", quick)
    pool, results = started_pool(registry, workers=2, queue_max=1)
    pool.submit(task("slow", "gate"))
    pool.submit(task("quick", "quick"))
    pool.submit(task("never-started", "noop"))  # waits: both workers are busy
    assert gate.entered.get(timeout=RESULT_WAIT_S) == "slow"
    assert quick_entered.wait(RESULT_WAIT_S)
    started = time.monotonic()
    unfinished = pool.shutdown(grace_s=0.5)
    elapsed = time.monotonic() - started
    assert sorted(unfinished) == ["never-started", "slow"]
    assert 0.5 <= elapsed < 5.0
    # The quick job finished within the grace and was reported; the abandoned one,
    # which returned "cancelled" once told, was not (it is listed as unfinished).
    reported = []
    while not results.empty():
        reported.append(results.get_nowait())
    assert [(result.job_id, result.outcome) for result in reported] == [
        ("quick", Outcome.success('"quick done"'))
    ]
    assert pool.stuck_threads == []
    with pytest.raises(PoolClosed):
        pool.submit(task("late"))


def test_shutdown_kills_running_shell_jobs(threads_checked: None, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    pool, results = started_pool(HandlerRegistry(allow_shell=True), workers=1)
    argv = ["sh", "-c", f"echo $$ > {pid_file}; exec sleep 300"]
    pool.submit(task("sh", "shell", f'{{"argv": ["{argv[0]}", "{argv[1]}", "{argv[2]}"]}}'))
    deadline = time.monotonic() + RESULT_WAIT_S
    while not (pid_file.exists() and pid_file.read_text().strip()):
        assert time.monotonic() < deadline
        threading.Event().wait(0.01)
    assert pool.shutdown(grace_s=0.0) == ["sh"]
    assert results.empty()
    assert pool.stuck_threads == []


def test_no_leaked_threads_after_many_tasks(threads_checked: None) -> None:
    before = threading.active_count()
    pool, results = started_pool(HandlerRegistry(), workers=8, queue_max=100)
    assert threading.active_count() == before + 8
    for index in range(100):
        pool.submit(task(f"n{index}"))
    assert len({results.get(timeout=RESULT_WAIT_S).job_id for _ in range(100)}) == 100
    assert pool.shutdown(1.0) == []
    assert threading.active_count() == before


def test_a_handler_that_ignores_cancellation_is_reported_stuck() -> None:
    release = threading.Event()
    registry = HandlerRegistry()
    registry.add("stubborn", lambda args, context: release.wait(RESULT_WAIT_S))
    results: queue.Queue[TaskResult] = queue.Queue()
    pool = ThreadPool(registry, 1, cancel_wait_s=0.05)
    pool.start(results.put)
    pool.submit(task("s", "stubborn"))
    deadline = time.monotonic() + RESULT_WAIT_S
    while not pool.running():
        assert time.monotonic() < deadline
        threading.Event().wait(0.01)
    assert pool.shutdown(grace_s=0.0) == ["s"]
    assert pool.stuck_threads == ["beaverq-worker-0"]
    release.set()  # let it end, so this test leaks nothing either
    for thread in threading.enumerate():
        if thread.name == "beaverq-worker-0":
            thread.join(RESULT_WAIT_S)
    assert results.empty()  # its late result was dropped


# -- The process pool. -------------------------------------------------------------------


@pytest.fixture
def process_handlers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> HandlerRegistry:
    """A registry whose user handlers come from an import, as a process pool needs."""
    (tmp_path / "pooltasks.py").write_text(
        textwrap.dedent(
            """
            import os, time
            from beaverq.impl.runtime.handlers import handler

            @handler("stubborn")
            def stubborn(args, context):
                time.sleep(300)  # ignores its deadline and any cancel

            @handler("exit")
            def exit_now(args, context):
                os._exit(3)

            @handler("chatty")
            def chatty(args, context):
                print("this goes to stderr, not into the protocol")
                return {"pid": os.getpid()}
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "pooltasks", raising=False)
    registry = HandlerRegistry(allow_shell=True)
    registry.import_module("pooltasks")
    return registry


def test_process_pool_runs_builtins_shell_and_imported_handlers(
    threads_checked: None, process_handlers: HandlerRegistry
) -> None:
    pool, results = started_pool_of(ProcessPool(process_handlers, 2))
    pool.submit(task("a", "noop"))
    pool.submit(task("b", "shell", '{"argv": ["sh", "-c", "echo $BEAVERQ_JOB_ID"]}'))
    got = {}
    for _ in range(2):
        result = results.get(timeout=RESULT_WAIT_S)
        got[result.job_id] = result.outcome
    assert got == {
        "a": Outcome.success("null"),
        "b": Outcome.success('{"exit_status":0,"stdout":"b"}'),
    }
    pool.submit(task("c", "chatty"))
    outcome = results.get(timeout=RESULT_WAIT_S).outcome
    assert outcome.ok
    assert json.loads(outcome.result_json or "")["pid"] in pool.child_pids()
    assert pool.shutdown(1.0) == []


def test_process_pool_kills_and_replaces_a_handler_past_its_deadline(
    threads_checked: None, process_handlers: HandlerRegistry
) -> None:
    pool, results = started_pool_of(ProcessPool(process_handlers, 1, kill_margin_s=0.2))
    pool.submit(task("warm", "noop"))
    results.get(timeout=RESULT_WAIT_S)
    (old_pid,) = pool.child_pids()
    started = time.monotonic()
    pool.submit(task("s", "stubborn", timeout_s=0.2))
    result = results.get(timeout=RESULT_WAIT_S)
    assert result.outcome == Outcome.failure(
        "stubborn: still running 0.2 s after its deadline; its worker process was killed "
        "and replaced"
    )
    assert time.monotonic() - started < 5.0
    assert pool.processes_killed == 1
    assert process_gone(old_pid)
    pool.submit(task("next", "noop"))
    assert results.get(timeout=RESULT_WAIT_S).outcome.ok
    assert pool.child_pids() != [old_pid]
    assert pool.shutdown(1.0) == []


def test_process_pool_survives_a_dying_handler(
    threads_checked: None, process_handlers: HandlerRegistry
) -> None:
    pool, results = started_pool_of(ProcessPool(process_handlers, 1))
    pool.submit(task("x", "exit"))
    assert results.get(timeout=RESULT_WAIT_S).outcome == Outcome.failure(
        "exit: its worker process died (exit status 3) while running it; a fresh process "
        "takes the next task"
    )
    pool.submit(task("y", "noop"))
    assert results.get(timeout=RESULT_WAIT_S).outcome.ok
    assert pool.shutdown(1.0) == []


def test_process_pool_shutdown_leaves_no_process_or_thread(
    threads_checked: None, process_handlers: HandlerRegistry
) -> None:
    pool, results = started_pool_of(ProcessPool(process_handlers, 2, kill_margin_s=0.2))
    pool.submit(task("sleeper", "sleep", '{"seconds": 300}'))
    pool.submit(task("stuck", "stubborn"))
    deadline = time.monotonic() + RESULT_WAIT_S
    # A task counts as running just before its worker starts (or reuses) a process:
    # wait for both processes too, or the check below races their start.
    while len(pool.running()) < 2 or len(pool.child_pids()) < 2:
        assert time.monotonic() < deadline
        threading.Event().wait(0.01)
    pids = pool.child_pids()
    assert len(pids) == 2
    started = time.monotonic()
    assert sorted(pool.shutdown(grace_s=0.1)) == ["sleeper", "stuck"]
    assert time.monotonic() - started < 5.0
    assert pool.stuck_threads == []
    assert all(process_gone(pid) for pid in pids)
    assert pool.child_pids() == []
    assert results.empty()


def test_process_pool_needs_handlers_it_can_rebuild() -> None:
    registry = HandlerRegistry()
    registry.add("local", lambda args, context: None)
    with pytest.raises(ValueError, match="added directly and cannot be: local"):
        ProcessPool(registry, 1)


def test_end_grace_stops_a_long_grace_at_once_and_the_job_is_unfinished(
    threads_checked: None,
) -> None:
    gate = Gate()  # never opened: only cancellation lets the handler return
    registry = HandlerRegistry()
    registry.add("gate", gate)
    pool, results = started_pool(registry, workers=1)
    pool.submit(task("held", "gate"))
    assert gate.entered.get(timeout=RESULT_WAIT_S) == "held"
    answer: queue.Queue[list[str]] = queue.Queue()
    stopper = threading.Thread(target=lambda: answer.put(pool.shutdown(grace_s=3600.0)))
    stopper.start()
    # Wait until the shutdown has begun (submit refuses), then end its grace.
    deadline = time.monotonic() + RESULT_WAIT_S
    while True:
        try:
            pool.submit(task("probe"))  # the queue has room for 256: never PoolFull here
        except PoolClosed:
            break
        assert time.monotonic() < deadline
        threading.Event().wait(0.01)
    pool.end_grace()
    # Probes that got in before the shutdown began are dropped unstarted (unfinished).
    unfinished = answer.get(timeout=RESULT_WAIT_S)
    assert [job_id for job_id in unfinished if job_id != "probe"] == ["held"]
    stopper.join()
    assert results.empty()  # abandoned: its late "cancelled" return is not reported


def test_end_grace_does_not_wait_out_a_handler_that_ignores_cancel() -> None:
    release = threading.Event()
    registry = HandlerRegistry()
    registry.add("stubborn", lambda args, context: release.wait(RESULT_WAIT_S))
    pool = ThreadPool(registry, 1, cancel_wait_s=0.05)
    results: queue.Queue[TaskResult] = queue.Queue()
    pool.start(results.put)
    pool.submit(task("stubborn", "stubborn"))
    deadline = time.monotonic() + RESULT_WAIT_S
    while not pool.running():
        assert time.monotonic() < deadline
        threading.Event().wait(0.005)
    answer: queue.Queue[list[str]] = queue.Queue()
    stopper = threading.Thread(target=lambda: answer.put(pool.shutdown(grace_s=3600.0)))
    started = time.monotonic()
    stopper.start()
    pool.end_grace()
    try:
        assert answer.get(timeout=RESULT_WAIT_S) == ["stubborn"]
        assert time.monotonic() - started < RESULT_WAIT_S
        assert pool.stuck_threads  # it ignored cancel: listed, not waited for
    finally:
        release.set()
        stopper.join()
    assert results.empty()


def test_end_grace_before_shutdown_makes_its_grace_zero(threads_checked: None) -> None:
    gate = Gate()
    registry = HandlerRegistry()
    registry.add("gate", gate)
    pool, results = started_pool(registry, workers=1)
    pool.submit(task("held", "gate"))
    assert gate.entered.get(timeout=RESULT_WAIT_S) == "held"
    pool.end_grace()  # a second signal that came before the stop reached the pool
    started = time.monotonic()
    assert pool.shutdown(grace_s=3600.0) == ["held"]
    assert time.monotonic() - started < RESULT_WAIT_S
    assert results.empty()


def test_a_task_whose_lease_ran_out_while_it_waited_is_reported_unstarted(
    threads_checked: None,
) -> None:
    gate = Gate()
    called: list[str] = []
    registry = HandlerRegistry()
    registry.add("gate", gate)
    registry.add("record", lambda args, context: called.append(context.job_id))
    pool, results = started_pool(registry, workers=1)
    pool.submit(task("first", "gate"))
    assert gate.entered.get(timeout=RESULT_WAIT_S) == "first"
    pool.submit(task("late", "record", timeout_s=0.01))
    deadline = time.monotonic() + 0.01
    while time.monotonic() <= deadline:  # its lease runs out while "first" runs
        threading.Event().wait(0.005)
    gate.opened.set()
    first, late = results.get(timeout=RESULT_WAIT_S), results.get(timeout=RESULT_WAIT_S)
    assert (first.job_id, first.started) == ("first", True)
    assert (late.job_id, late.started, late.outcome.ok) == ("late", False, False)
    assert called == []  # never run: it would race the lease's next attempt
    assert pool.shutdown(1.0) == []


def test_withdraw_takes_back_only_tasks_that_waited_long_enough(threads_checked: None) -> None:
    gate = Gate()
    registry = HandlerRegistry()
    registry.add("gate", gate)
    pool, results = started_pool(registry, workers=1)
    pool.submit(task("running", "gate"))
    assert gate.entered.get(timeout=RESULT_WAIT_S) == "running"
    pool.submit(task("short", "noop", timeout_s=0.02))
    pool.submit(task("long", "noop", timeout_s=3600.0))
    deadline = time.monotonic() + 0.01
    while time.monotonic() <= deadline:  # "short" has waited half its timeout
        threading.Event().wait(0.005)
    assert [withdrawn.job_id for withdrawn in pool.withdraw_waiting(0.5)] == ["short"]
    assert pool.queued == 1  # "long" stays; "running" was never in the queue
    gate.opened.set()
    finished = {results.get(timeout=RESULT_WAIT_S).job_id for _ in range(2)}
    assert finished == {"running", "long"}
    assert pool.shutdown(1.0) == []
