"""The controller: the model driven by requests, results and time, over real storage.

Three kinds of test:

* deterministic (``step()`` with a ``FakeClock``, a ``FakePool`` and ``InlineCommit``
  over the crashable file system): every rule of impl/runtime/controller.py checked one at a
  time, then a Hypothesis run of random workloads with crashes, whose log must be a
  history the spec accepts and whose final state must be the model's fold of it;
* the original design's integration test, in process, on a real data directory:
  100 jobs, crash after 50 completions, recovery under 3 s, the rest complete;
* a stress test in threaded mode: many producers, workers, snapshots under load.

Nothing here sleeps: threaded tests wait on the controller's own conditions
(``until_idle``) or on a predicate with a deadline.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from sim.crashfs import NOTHING_UNSYNCED, CrashFS, CrashPolicy, HypothesisChooser, crash_policies

from beaverq.impl.runtime.clock import SystemClock
from beaverq.impl.runtime.committers import InlineCommit, group_commit_factory
from beaverq.impl.runtime.controller import Controller
from beaverq.impl.runtime.errors import ControllerFailed, ControllerStopped
from beaverq.impl.runtime.handlers import HandlerContext, HandlerRegistry, Outcome
from beaverq.impl.runtime.job_request import JobRequest
from beaverq.impl.runtime.options import ControllerOptions
from beaverq.impl.runtime.process_pool import ProcessPool
from beaverq.impl.runtime.workers import (
    PoolClosed,
    PoolFull,
    Task,
    TaskResult,
    ThreadPool,
)
from beaverq.impl.storage.fs import RealFileSystem
from beaverq.impl.storage.group_commit import GroupCommit
from beaverq.impl.storage.storage import Storage
from beaverq.impl.storage.wal import WalFailed
from beaverq.model import (
    FINISHED,
    Event,
    JobStatus,
    Rejected,
    initial_state,
    replay,
)
from beaverq.spec.history import check_history
from beaverq.spec.invariants import check_all
from beaverq.teaching.fake_clock import FakeClock

DIRECTORY = "/data"
WAIT_S = 30.0


def wait_until(predicate: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        threading.Event().wait(0.005)


# -- Test doubles. -----------------------------------------------------------------------


class FakePool:
    """A pool whose tasks run only when the test says how they end."""

    def __init__(
        self,
        workers: int = 2,
        check_durable: Callable[[Task], None] | None = None,
        room: int = 0,  # tasks it holds beyond one per worker (a real pool's queue_max)
    ):
        self._workers = workers
        self._room = room
        self.running: list[Task] = []
        self.on_result: Callable[[TaskResult], None] | None = None
        self.closed = False
        self.check_durable = check_durable

    @property
    def workers(self) -> int:
        return self._workers

    @property
    def capacity(self) -> int:
        return self._workers + self._room

    def start(self, on_result: Callable[[TaskResult], None]) -> None:
        self.on_result = on_result

    def submit(self, task: Task) -> None:
        if self.closed:
            raise PoolClosed("closed")
        if len(self.running) >= self.capacity:
            raise PoolFull("full")
        if self.check_durable is not None:
            self.check_durable(task)
        self.running.append(task)

    def finish(self, index: int, outcome: Outcome) -> Task:
        task = self.running.pop(index)
        assert self.on_result is not None
        self.on_result(TaskResult(task.job_id, task.attempt, outcome, task.worker_id))
        return task

    def shutdown(self, grace_s: float) -> list[str]:
        self.closed = True
        unfinished = [task.job_id for task in self.running]
        self.running.clear()
        return unfinished

    def end_grace(self) -> None:
        """Nothing to end: this pool's shutdown never waits."""

    def withdraw_waiting(self, fraction: float) -> list[Task]:
        """Nothing waits here: every task runs until the test finishes it."""
        return []


class RecordingCommit(InlineCommit):
    """InlineCommit that also keeps every appended event (in LSN order: appends are
    made under the controller's lock)."""

    def __init__(self, storage: Storage, log: list[Event]) -> None:
        super().__init__(storage)
        self.log = log

    def append(self, events: Iterable[Event]) -> int:
        events = list(events)
        self.log.extend(events)
        return super().append(events)


class RecordingGroupCommit(GroupCommit):
    def __init__(self, storage: Storage, log: list[Event]) -> None:
        super().__init__(storage)
        self.log = log

    def append(self, events: Iterable[Event]) -> int:
        events = list(events)
        self.log.extend(events)
        return super().append(events)


OK = Outcome.success("null")
FAILED = Outcome.failure("it broke")


class World:
    """One data directory on a CrashFS, one controller at a time, and the full log."""

    def __init__(
        self, options: ControllerOptions | None = None, workers: int = 2, room: int = 0
    ) -> None:
        self.fs = CrashFS()
        self.clock = FakeClock(start_ms=1_000_000)
        self.log: list[Event] = []  # every event ever appended, trimmed by crashes
        self.options = options or ControllerOptions(
            runner_id="t", jitter_seed=7, tick_interval_s=0.1, snapshot_interval_s=1e9
        )
        self.workers = workers
        self.room = room
        self.ids: list[str] = []  # every acknowledged enqueue
        self.durable_before_crash = 0
        self.crashes = 0
        self._open()

    def _open(self) -> None:
        storage, state, report = Storage.open(self.fs, DIRECTORY)
        # Recovery keeps everything that was durable, invents nothing, and is the
        # model's fold of what survived.
        k = state.last_lsn
        assert self.durable_before_crash <= k <= len(self.log)
        del self.log[k:]
        assert state == replay(initial_state(), self.log)
        self.storage = storage
        self.pool = FakePool(self.workers, check_durable=self._check_lease_durable, room=self.room)
        self.controller = Controller(
            storage,
            state,
            self.clock,
            self.pool,
            options=self.options,
            report=report,
            committer_factory=lambda s: RecordingCommit(s, self.log),
        )
        assert self.storage.durable_lsn == self.controller.state.last_lsn  # Recover durable

    def _check_lease_durable(self, task: Task) -> None:
        # R2: a worker gets a job only once its LeaseGranted is durable.
        job = self.controller.state.jobs[task.job_id]
        assert job.attempt == task.attempt
        assert self.storage.durable_lsn >= job.last_lsn

    def restart(self) -> list[str]:
        """A graceful stop (grace 0: every running job is released), then a fresh start."""
        released = self.controller.stop(grace_s=0)
        # Everything appended is durable after a stop, and no lease is left live.
        assert self.storage.durable_lsn == len(self.log)
        self.durable_before_crash = len(self.log)
        self._open()
        assert self.controller.recovery.leases_abandoned == 0
        return released

    def crash(self, policy: CrashPolicy = NOTHING_UNSYNCED, chooser: object = None) -> None:
        self.durable_before_crash = self.storage.durable_lsn
        self.fs = self.fs.crash(policy, chooser)  # type: ignore[arg-type]
        self.crashes += 1
        self._open()

    def enqueue(self, handler: str = "work", **fields: object) -> str:
        job_id = self.controller.enqueue(handler, **fields)
        # R2: acknowledged only once durable.
        assert self.storage.durable_lsn >= self.controller.state.jobs[job_id].enqueued_lsn
        self.ids.append(job_id)
        return job_id

    def step_until_quiet(self, limit: int = 50) -> None:
        for _ in range(limit):
            if not self.controller.step():
                return
        raise AssertionError("the controller kept finding work")

    def drain(self, rounds: int = 500) -> None:
        """Run every job to its end: all queues resumed, every attempt succeeds."""
        for queue_name in sorted(self.controller.state.paused):
            self.controller.resume(queue_name)
        for _ in range(rounds):
            while self.pool.running:
                self.pool.finish(0, OK)
            self.step_until_quiet()
            if self.controller.is_idle() and not self.pool.running:
                return
            self.clock.advance(1_000)
        raise AssertionError("jobs still unfinished after the drain")

    def check(self) -> None:
        state = self.controller.state
        assert state == replay(initial_state(), self.log)
        check_history(self.log)
        check_all(state)


# -- Deterministic: one rule at a time. --------------------------------------------------


def test_enqueue_lease_complete_and_the_recover_at_open() -> None:
    world = World()
    job_id = world.enqueue(args=None)
    assert job_id == "j1"
    world.step_until_quiet()
    assert [task.job_id for task in world.pool.running] == ["j1"]
    world.pool.finish(0, Outcome.success('{"answer":42}'))
    world.step_until_quiet()
    job = world.controller.state.jobs["j1"]
    assert job.status is JobStatus.COMPLETED
    assert job.result_json == '{"answer":42}'
    assert world.controller.stats.completed == 1
    assert world.controller.recovery.leases_abandoned == 0
    world.check()


def test_leases_only_for_idle_workers() -> None:
    world = World(workers=2)
    for _ in range(5):
        world.enqueue()
    world.step_until_quiet()
    assert len(world.pool.running) == 2
    assert world.controller.state.counts.in_flight == 2
    world.pool.finish(1, OK)
    world.step_until_quiet()
    assert len(world.pool.running) == 2
    assert world.controller.state.counts.completed == 1
    world.check()


@pytest.mark.parametrize(("horizon_s", "held_at_most"), [(0.05, 2 + 8), (0.0, 2)])
def test_the_dispatch_window_leases_ahead_only_when_asked(
    horizon_s: float, held_at_most: int
) -> None:
    options = ControllerOptions(runner_id="t", jitter_seed=1, dispatch_horizon_s=horizon_s)
    world = World(options=options, workers=2, room=8)
    for _ in range(30):
        world.enqueue()
    world.step_until_quiet()
    assert len(world.pool.running) == 2  # nothing known about running times: cautious
    world.pool.finish(0, OK)  # an instant handler: a mean running time of 0
    world.step_until_quiet()
    assert len(world.pool.running) == held_at_most
    assert world.controller.state.counts.in_flight == held_at_most
    world.check()


def test_a_late_result_is_fenced_and_counted() -> None:
    world = World(workers=2)
    job_id = world.enqueue(timeout_ms=500)
    world.step_until_quiet()
    world.clock.advance(600)
    world.step_until_quiet()  # the tick expires attempt 1; attempt 2 is leased
    attempts = sorted(task.attempt for task in world.pool.running)
    assert attempts == [1, 2]
    first = next(i for i, task in enumerate(world.pool.running) if task.attempt == 1)
    world.pool.finish(first, OK)  # too late
    world.step_until_quiet()
    assert world.controller.stats.stale_results == 1
    assert world.controller.state.jobs[job_id].status is JobStatus.IN_FLIGHT
    world.pool.finish(0, OK)
    world.step_until_quiet()
    job = world.controller.state.jobs[job_id]
    assert (job.status, job.attempt) == (JobStatus.COMPLETED, 2)
    world.check()


class Recorder:
    """A ControllerObserver that keeps what it is told."""

    def __init__(self) -> None:
        self.results: list[tuple[str, int]] = []
        self.batches: list[tuple[int, float]] = []

    def result_received(self, result: TaskResult) -> None:
        self.results.append((result.job_id, result.attempt))

    def batch_durable(self, events: int, seconds: float) -> None:
        self.batches.append((events, seconds))


def test_an_observer_is_told_of_every_result_and_every_durable_event() -> None:
    world = World(workers=2)
    recorder = Recorder()
    world.controller.add_observer(recorder)
    durable_before = world.storage.durable_lsn
    for _ in range(5):
        world.enqueue()
    world.drain()
    assert sorted(recorder.results) == [(job_id, 1) for job_id in sorted(world.ids)]
    # Every event made durable since, in batches of at least one, each timed.
    assert (
        sum(events for events, _ in recorder.batches) == world.storage.durable_lsn - durable_before
    )
    assert all(events >= 1 and seconds >= 0 for events, seconds in recorder.batches)
    world.check()


class Raising(Recorder):
    def batch_durable(self, events: int, seconds: float) -> None:
        raise RuntimeError("an onlooker's bug")


def test_an_observer_that_raises_is_dropped_and_the_queue_goes_on(threads_checked: None) -> None:
    """A raising observer on the flusher thread used to end that thread: every later
    durable wait then blocked forever."""
    controller = Controller.open(DIRECTORY, ThreadPool(HandlerRegistry(), workers=1), fs=CrashFS())
    healthy, broken = Recorder(), Raising()
    controller.add_observer(broken)
    controller.add_observer(healthy)
    try:
        controller.start()
        producer = threading.Thread(
            target=lambda: [controller.enqueue("noop") for _ in range(3)], daemon=True
        )
        producer.start()
        producer.join(WAIT_S)  # each enqueue waits for a durable batch
        assert not producer.is_alive(), "a durable wait hung: the flusher thread died"
        assert controller.until_idle(WAIT_S)
        assert controller.stats.observer_errors == 1
        assert controller.stats.observer_error_last == "RuntimeError: an onlooker's bug"
        assert len(healthy.results) == 3 and healthy.batches
    finally:
        controller.stop()


def test_failure_retries_with_backoff_then_dies() -> None:
    world = World()
    job_id = world.enqueue(max_attempts=2, backoff_base_ms=100, backoff_cap_ms=100)
    world.step_until_quiet()
    world.pool.finish(0, FAILED)
    world.step_until_quiet()
    assert world.controller.state.jobs[job_id].status is JobStatus.DELAYED
    world.clock.advance(200)
    world.step_until_quiet()
    world.pool.finish(0, FAILED)
    world.step_until_quiet()
    job = world.controller.state.jobs[job_id]
    assert (job.status, job.error) == (JobStatus.DEAD, "it broke")
    assert (world.controller.stats.retried, world.controller.stats.dead) == (1, 1)
    assert world.controller.requeue(job_id) == "pending"
    world.check()


def test_a_result_the_model_refuses_fails_the_attempt() -> None:
    world = World()
    job_id = world.enqueue(max_attempts=1)
    world.step_until_quiet()
    world.pool.finish(0, Outcome.success("{not json"))
    world.step_until_quiet()
    job = world.controller.state.jobs[job_id]
    assert job.status is JobStatus.DEAD
    assert (job.error or "").startswith("the result was refused: result_json is not valid JSON")
    assert world.controller.stats.results_refused == 1
    world.check()


def test_rejections_change_nothing_and_batches_are_all_or_nothing() -> None:
    world = World()
    with pytest.raises(Rejected, match="priority_out_of_range"):
        world.controller.enqueue("work", priority=99)
    lsn = world.controller.state.last_lsn
    with pytest.raises(Rejected, match="max_attempts"):
        world.controller.enqueue_batch([{"handler": "a"}, {"handler": "b", "max_attempts": 0}])
    assert world.controller.state.last_lsn == lsn
    ids = world.controller.enqueue_batch(
        [JobRequest(handler="a"), {"handler": "b", "args": {"x": 1}, "job_id": "bee"}]
    )
    assert ids == [f"j{lsn + 1}", "bee"]
    assert world.controller.state.jobs["bee"].spec.args_json == '{"x":1}'
    assert world.storage.durable_lsn == lsn + 2  # one commit, durable on return
    with pytest.raises(ValueError, match="unknown job fields: colour"):
        world.controller.enqueue_batch([{"handler": "a", "colour": "red"}])
    world.check()


def test_idempotency_key_returns_the_first_job() -> None:
    world = World()
    first = world.enqueue(idempotency_key="k1")
    again = world.controller.enqueue("other", idempotency_key="k1")
    assert again == first
    assert world.controller.state.counts.total == 1


def test_cancel_pause_resume_and_reads() -> None:
    world = World(workers=1)
    running = world.enqueue(queue="a")
    waiting = world.enqueue(queue="a")
    held = world.enqueue(queue="b")
    world.controller.pause("b")
    world.step_until_quiet()
    assert world.controller.cancel(waiting) == "cancelled"
    assert world.controller.cancel(running) == "in_flight"  # takes effect at its result
    world.pool.finish(0, FAILED)
    world.step_until_quiet()
    assert world.controller.state.jobs[running].status is JobStatus.CANCELLED
    assert world.pool.running == []  # queue b is paused
    assert world.controller.is_idle()  # paused queues aside
    status = world.controller.status()
    assert (status["pending"], status["cancelled"], status["paused"]) == (1, 2, ["b"])
    assert status["queues"]["b"]["pending"] == 1
    assert status["recovery"]["leases_abandoned"] == 0
    assert [job["job_id"] for job in world.controller.jobs(status="cancelled")] == [
        running,
        waiting,
    ]
    assert world.controller.jobs(queue="b")[0]["job_id"] == held
    with pytest.raises(ValueError, match="unknown state"):
        world.controller.jobs(status="sleeping")
    detail = world.controller.show(running)
    assert detail is not None
    assert detail["attempts"][0]["outcome"] == "failed"
    assert world.controller.show("nope") is None
    world.controller.resume("b")
    world.step_until_quiet()
    assert [task.job_id for task in world.pool.running] == [held]
    with pytest.raises(Rejected, match="job_not_found"):
        world.controller.cancel("nope")
    world.check()


def test_tick_releases_delayed_jobs_on_the_fake_clock() -> None:
    world = World()
    job_id = world.enqueue(delay_ms=5_000)
    world.step_until_quiet()
    assert world.pool.running == [] and not world.controller.is_idle()
    world.clock.advance(4_999)
    world.step_until_quiet()
    assert world.pool.running == []
    world.clock.advance(100)  # the next tick is due one tick interval later
    world.step_until_quiet()
    assert [task.job_id for task in world.pool.running] == [job_id]


def test_snapshot_every_n_events_and_recovery_from_it() -> None:
    options = ControllerOptions(
        runner_id="t", jitter_seed=1, snapshot_every_events=10, snapshot_interval_s=1e9
    )
    world = World(options=options)
    for _ in range(12):
        world.enqueue()
    world.step_until_quiet()
    assert world.controller.stats.snapshots >= 1
    world.crash()
    assert world.controller.recovery.snapshot_lsn >= 10
    world.drain()
    world.check()


def test_an_interval_snapshot_waits_for_a_tail_worth_writing_every_job_for() -> None:
    options = ControllerOptions(
        runner_id="t",
        jitter_seed=1,
        snapshot_interval_s=1.0,
        snapshot_every_events=1_000_000,
        snapshot_tail_per_job=0.1,
    )
    world = World(options=options)
    world.controller.pause("default")  # no leases: the only events are the enqueues
    world.controller.enqueue_batch([{"handler": "w"} for _ in range(100)])
    world.clock.advance(1_000)
    world.step_until_quiet()
    assert world.controller.stats.snapshots == 1  # 100+ new events for 100 jobs
    world.controller.enqueue_batch([{"handler": "w"} for _ in range(5)])
    world.clock.advance(5_000)
    world.step_until_quiet()
    # 5 new events for 105 jobs: replaying them is cheaper than loading a snapshot.
    assert world.controller.stats.snapshots == 1
    world.controller.enqueue_batch([{"handler": "w"} for _ in range(10)])
    world.clock.advance(1_000)
    world.step_until_quiet()
    assert world.controller.stats.snapshots == 2  # 15 new events >= 0.1 x 115 jobs
    world.check()


def test_crash_returns_in_flight_jobs_through_recover() -> None:
    world = World(workers=2)
    for _ in range(3):
        world.enqueue()
    world.step_until_quiet()
    in_flight = sorted(task.job_id for task in world.pool.running)
    world.crash()
    assert world.controller.recovery.leases_abandoned == 2
    for job_id in in_flight:
        job = world.controller.state.jobs[job_id]
        # Returned to the queue, the lost attempt counted.
        assert (job.status, job.attempts_used, job.history[-1].outcome) == (
            JobStatus.PENDING,
            1,
            "abandoned",
        )
    world.drain()
    world.check()


def test_graceful_stop_releases_running_jobs_uncounted() -> None:
    world = World(workers=2)
    for _ in range(3):
        world.enqueue()
    world.step_until_quiet()
    assert sorted(world.controller.stop(grace_s=0)) == ["j1", "j2"]
    assert world.controller.stats.released == 2
    with pytest.raises(ControllerStopped):
        world.controller.enqueue("late")
    # The final snapshot holds them pending again, their attempt given back: the next
    # start has no lease to abandon and nothing counted against max_attempts.
    storage, state, report = Storage.open(world.fs, DIRECTORY)
    assert report.records_replayed == 0 and report.snapshot_lsn == state.last_lsn
    assert (state.counts.in_flight, state.counts.pending) == (0, 3)
    for job_id in ("j1", "j2"):
        job = state.jobs[job_id]
        assert (job.status, job.attempt, job.attempts_used, job.history[-1].outcome) == (
            JobStatus.PENDING,
            1,
            0,
            "released",
        )
    assert state == replay(initial_state(), world.log)
    check_history(world.log)
    controller = Controller(storage, state, world.clock, FakePool(), committer_factory=InlineCommit)
    assert controller.recovery.leases_abandoned == 0
    controller.stop()


def test_a_result_reported_before_the_stop_is_recorded_not_released() -> None:
    world = World(workers=2)
    for _ in range(2):
        world.enqueue()
    world.step_until_quiet()
    world.pool.finish(0, OK)  # reported before the stop: the result loop records it
    assert world.controller.stop(grace_s=0) == ["j2"]
    storage, state, _report = Storage.open(world.fs, DIRECTORY)
    assert state.jobs["j1"].status is JobStatus.COMPLETED
    assert state.jobs["j2"].status is JobStatus.PENDING
    storage.close()


def test_same_seed_same_run() -> None:
    def run(seed: int) -> list[Event]:
        rng = random.Random(seed)
        world = World(workers=3)
        for _ in range(300):
            action = rng.randrange(6)
            if action == 0:
                world.enqueue(
                    max_attempts=rng.randint(1, 3),
                    timeout_ms=rng.choice([300, 3_000]),
                    delay_ms=rng.choice([0, 0, 500]),
                    backoff_base_ms=100,
                    backoff_cap_ms=400,
                )
            elif action == 1 and world.pool.running:
                index = rng.randrange(len(world.pool.running))
                world.pool.finish(index, OK if rng.random() < 0.7 else FAILED)
            elif action == 2:
                world.clock.advance(rng.randint(0, 400))
            elif action == 3 and rng.random() < 0.05:
                world.crash()
            world.controller.step()
        world.drain()
        world.check()
        return world.log

    assert run(3) == run(3)
    assert run(3) != run(4)


# -- Deterministic, under Hypothesis: random workloads with crashes. ---------------------

QUEUES = ("a", "b")

_ENQUEUE = st.tuples(
    st.just("enqueue"),
    st.sampled_from(QUEUES),
    st.sampled_from([0, 0, 700, 3_000]),  # delay
    st.integers(1, 3),  # max attempts
    st.sampled_from([500, 5_000]),  # timeout
    st.integers(-1, 1),  # priority
)
_FINISH = st.tuples(st.just("finish"), st.integers(0, 7), st.booleans())
_ADVANCE = st.tuples(st.just("advance"), st.integers(0, 2_000))
# The common actions appear more than once: one_of picks a branch uniformly.
ACTIONS = st.one_of(
    _ENQUEUE,
    _ENQUEUE,
    _FINISH,
    _FINISH,
    _ADVANCE,
    _ADVANCE,
    st.tuples(st.just("batch"), st.integers(1, 4)),
    st.tuples(st.just("cancel"), st.integers(0, 30)),
    st.tuples(st.just("requeue"), st.integers(0, 30)),
    st.tuples(st.just("pause"), st.sampled_from(QUEUES)),
    st.tuples(st.just("resume"), st.sampled_from(QUEUES)),
    st.tuples(st.just("snapshot")),
    st.tuples(st.just("restart")),
    st.tuples(st.just("crash"), crash_policies()),
)


@settings(max_examples=40)
@given(actions=st.lists(ACTIONS, min_size=10, max_size=80), data=st.data())
def test_random_workloads_with_crashes_match_the_model(
    actions: list[tuple[object, ...]], data: st.DataObject
) -> None:
    options = ControllerOptions(
        runner_id="h", jitter_seed=11, tick_interval_s=0.2, snapshot_every_events=25
    )
    # Room in the pool: with instant fake results the dispatch window leases ahead, so
    # the model comparison covers leases that wait in the pool too.
    world = World(options=options, workers=3, room=data.draw(st.sampled_from([0, 5])))
    controller = lambda: world.controller  # noqa: E731 (it changes at each crash)
    released = 0
    for action in actions:
        kind = action[0]
        if kind == "enqueue":
            _, queue_name, delay, attempts, timeout, priority = action
            world.enqueue(
                queue=queue_name,
                delay_ms=delay,
                max_attempts=attempts,
                timeout_ms=timeout,
                priority=priority,
                backoff_base_ms=200,
                backoff_cap_ms=800,
            )
        elif kind == "batch":
            ids = controller().enqueue_batch([{"handler": "w"} for _ in range(action[1])])
            world.ids.extend(ids)
        elif kind == "advance":
            world.clock.advance(action[1])
        elif kind == "finish" and world.pool.running:
            index = action[1] % len(world.pool.running)
            world.pool.finish(index, OK if action[2] else FAILED)
        elif kind in ("cancel", "requeue") and world.ids:
            job_id = world.ids[action[1] % len(world.ids)]
            with contextlib.suppress(Rejected):
                getattr(controller(), kind)(job_id)
        elif kind == "pause":
            controller().pause(action[1])
        elif kind == "resume":
            controller().resume(action[1])
        elif kind == "snapshot":
            controller().snapshot()
        elif kind == "crash":
            world.crash(action[1], HypothesisChooser(data))
        elif kind == "restart":
            released += len(world.restart())
        controller().step()
    world.check()
    world.drain()
    stats = world.controller.stats
    event(f"crashes: {min(world.crashes, 2)}+")
    event(f"jobs: {min(len(world.ids) // 10 * 10, 30)}+")
    event(f"stale results seen: {stats.stale_results > 0}")
    event(f"retries seen: {stats.retried > 0}")
    event(f"leases released at a stop: {released > 0}")
    for job_id in world.ids:
        assert world.controller.state.jobs[job_id].status in FINISHED, job_id
    world.check()
    final = world.controller.state
    world.controller.stop()
    storage, recovered, _report = Storage.open(world.fs, DIRECTORY)
    assert recovered == final
    storage.close()


def test_a_failed_wal_fails_the_controller_loudly(threads_checked: None) -> None:
    fs = CrashFS()
    controller = Controller.open(DIRECTORY, ThreadPool(HandlerRegistry(), workers=1), fs=fs)
    controller.start()
    controller.enqueue("noop")
    fs.fail_next_fsync()
    with pytest.raises(WalFailed):
        controller.enqueue("noop")  # never acknowledged: its fsync failed
    assert isinstance(controller.failure, WalFailed)
    with pytest.raises(ControllerFailed, match="controller failed"):
        controller.enqueue("noop")
    with pytest.raises(ControllerFailed):
        controller.stop()
    # The next process recovers what was durable: the first job, not the second.
    storage, state, _report = Storage.open(fs.crash(NOTHING_UNSYNCED), DIRECTORY)
    assert state.counts.total == 1
    storage.close()


def test_threaded_run_on_a_process_pool(tmp_path: Path, threads_checked: None) -> None:
    pool = ProcessPool(HandlerRegistry(allow_shell=True), workers=2, kill_margin_s=0.2)
    controller = Controller.open(
        str(tmp_path / "data"), pool, options=ControllerOptions(tick_interval_s=0.02)
    )
    controller.start()
    marker = tmp_path / "ran"
    append_id = ["sh", "-c", f"echo $BEAVERQ_JOB_ID >> {marker}"]
    ids = controller.enqueue_batch(
        [{"handler": "noop"} for _ in range(20)]
        + [{"handler": "shell", "args": {"argv": append_id}}]
    )
    timed_out = controller.enqueue("sleep", {"seconds": 30}, timeout_ms=100, max_attempts=1)
    assert controller.until_idle(WAIT_S)
    status = controller.status()
    assert (status["completed"], status["dead"]) == (21, 1)
    assert marker.read_text().split() == [ids[-1]]
    assert controller.show(timed_out)["status"] == "dead"  # type: ignore[index]
    pids = pool.child_pids()
    assert controller.stop(grace_s=1.0) == []
    assert pool.child_pids() == [] and pids


# -- The original design's integration test, in process, on a real data directory. -----


@pytest.fixture
def threads_checked() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + WAIT_S
    while True:
        leaked = [
            thread.name
            for thread in threading.enumerate()
            if thread not in before and thread.name.startswith("beaverq")
        ]
        if not leaked:
            return
        assert time.monotonic() < deadline, f"leaked threads: {leaked}"
        threading.Event().wait(0.01)


def test_crash_after_50_of_100_jobs_recovers_in_under_3_s(
    tmp_path: Path, threads_checked: None
) -> None:
    directory = str(tmp_path / "data")
    runs: dict[str, int] = {}
    runs_lock = threading.Lock()
    hold_after = threading.Event()  # set: attempts after the 50th wait for cancellation

    def job(args: object, context: HandlerContext) -> None:
        with runs_lock:
            runs[context.job_id] = runs.get(context.job_id, 0) + 1
            held = hold_after.is_set() and sum(runs.values()) > 50
        if held:
            context.wait(WAIT_S)  # a job still running at the crash
            return None
        return None

    def pool() -> ThreadPool:
        registry = HandlerRegistry()
        registry.add("job", job)
        return ThreadPool(registry, workers=4)

    hold_after.set()
    fs = RealFileSystem()
    first = Controller.open(directory, pool(), fs=fs)
    ids = first.enqueue_batch([{"handler": "job"} for _ in range(100)])
    first.start()
    wait_until(lambda: first.state.counts.completed >= 50)
    in_flight_at_crash = first.state.counts.in_flight
    # The crash: no grace, no result processed, no snapshot; the files are dropped.
    first.halt()
    fs.close()

    hold_after.clear()
    started = time.monotonic()
    second = Controller.open(directory, pool(), fs=RealFileSystem())
    recovery_s = time.monotonic() - started
    assert recovery_s < 3.0
    assert second.recovery.seconds < 3.0
    assert second.recovery.snapshot_lsn == 0  # no snapshot was taken: all from the WAL
    assert second.recovery.leases_abandoned == in_flight_at_crash > 0
    completed_before = second.state.counts.completed
    assert 50 <= completed_before < 100
    second.start()
    assert second.until_idle(WAIT_S)
    status = second.status()
    assert status["completed"] == 100
    assert second.stop(grace_s=1.0) == []
    # Completed jobs were not run again; abandoned ones ran again (at least once).
    assert all(runs[job_id] >= 1 for job_id in ids)
    assert sum(1 for job_id in ids if runs[job_id] == 1) >= completed_before


# -- Stress: many producers, workers, snapshots under load. -------------------------------


def test_many_producers_every_acknowledged_job_ends_and_completes_once(
    tmp_path: Path, threads_checked: None
) -> None:
    directory = str(tmp_path / "data")
    registry = HandlerRegistry()
    log: list[Event] = []
    producers, per_producer = 8, 150
    options = ControllerOptions(
        snapshot_every_events=700,  # many snapshots while producers append
        snapshot_interval_s=0.2,
        tick_interval_s=0.02,
        jitter_seed=5,
    )
    fs = RealFileSystem()
    storage, state, report = Storage.open(fs, directory)
    controller = Controller(
        storage,
        state,
        SystemClock(),
        ThreadPool(registry, workers=4, queue_max=8),
        options=options,
        report=report,
        committer_factory=lambda s: RecordingGroupCommit(s, log),
    )
    controller.start()
    acknowledged: list[str] = []
    acknowledged_lock = threading.Lock()
    errors: list[BaseException] = []

    def produce(seed: int) -> None:
        rng = random.Random(seed)
        try:
            mine: list[str] = []
            for index in range(per_producer):
                roll = rng.random()
                if roll < 0.1:
                    batch = [{"handler": "noop"} for _ in range(rng.randint(1, 5))]
                    job_ids = controller.enqueue_batch(batch)
                elif roll < 0.3:
                    job_ids = [
                        controller.enqueue(
                            "fail",
                            {"message": "flaky"},
                            max_attempts=2,
                            backoff_base_ms=1,
                            backoff_cap_ms=5,
                        )
                    ]
                else:
                    job_ids = [controller.enqueue("noop", {"n": index}, priority=rng.randint(0, 2))]
                # Acknowledged means durable: the enqueue is in the fsynced log.
                durable = storage.durable_lsn
                for job_id in job_ids:
                    assert controller.state.jobs[job_id].enqueued_lsn <= durable
                mine.extend(job_ids)
                if rng.random() < 0.05 and mine:
                    with contextlib.suppress(Rejected):  # already finished
                        controller.cancel(rng.choice(mine))
            with acknowledged_lock:
                acknowledged.extend(mine)
        except BaseException as error:  # reported below, not lost in a thread
            errors.append(error)

    threads = [threading.Thread(target=produce, args=(seed,)) for seed in range(producers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S)
    assert errors == []
    assert controller.until_idle(WAIT_S)
    final = controller.state
    snapshots = controller.stats.snapshots
    assert controller.stop(grace_s=1.0) == []
    assert controller.failure is None
    assert snapshots >= 2

    assert len(set(acknowledged)) == len(acknowledged) >= producers * per_producer
    for job_id in acknowledged:
        assert final.jobs[job_id].status in FINISHED
    # The log is a history the spec accepts (completion at most once per job, fenced
    # results, consecutive LSNs, ...), and the recovered state is its fold.
    assert [event.lsn for event in log] == list(range(1, len(log) + 1))
    check_history(log)
    storage, recovered, _report = Storage.open(RealFileSystem(), directory)
    try:
        assert recovered == final == replay(initial_state(), log)
        check_all(recovered)
    finally:
        storage.close()


def open_threaded(directory: str, **handlers: Callable[[object, HandlerContext], object]):
    """A threaded controller on the real disk: two workers, fast ticks and flushes."""
    registry = HandlerRegistry()
    for name, function in handlers.items():
        registry.add(name, function)
    return Controller.open(
        directory,
        ThreadPool(registry, workers=2),
        options=ControllerOptions(tick_interval_s=0.02),
        committer_factory=group_commit_factory(delay_s=0.001),
    )


def test_threaded_run_with_real_handlers_and_graceful_stop(
    tmp_path: Path, threads_checked: None
) -> None:
    directory = str(tmp_path / "data")
    gate = threading.Event()

    def slow(args: object, context: HandlerContext) -> str:
        gate.set()
        context.wait(WAIT_S)
        return "interrupted"

    controller = open_threaded(directory, slow=slow)
    controller.start()
    ok = controller.enqueue("noop")
    unknown = controller.enqueue("no.such:handler", max_attempts=1)
    timed_out = controller.enqueue("sleep", {"seconds": 30}, timeout_ms=100, max_attempts=1)
    controller.pause("later")
    paused = controller.enqueue("noop", queue="later")
    assert controller.until_idle(WAIT_S)
    jobs = {job["job_id"]: job for job in controller.jobs()}
    assert jobs[ok]["status"] == "completed"
    assert jobs[unknown]["status"] == "dead"
    assert "unknown handler 'no.such:handler'" in jobs[unknown]["error"]
    assert jobs[timed_out]["status"] == "dead"
    assert jobs[paused]["status"] == "pending"
    controller.resume("later")
    assert controller.until_idle(WAIT_S)
    running = controller.enqueue("slow")
    assert gate.wait(WAIT_S)
    started = time.monotonic()
    assert controller.stop(grace_s=0.2) == [running]
    assert time.monotonic() - started < 5.0
    with pytest.raises(ControllerStopped):
        controller.enqueue("noop")

    again = Controller.open(directory, ThreadPool(HandlerRegistry(), workers=1))
    try:
        # Released at the stop, not left for Recover: nothing to abandon, no attempt used.
        assert again.recovery.leases_abandoned == 0
        assert again.recovery.records_replayed == 0  # the final snapshot covered the log
        job = again.state.jobs[running]
        assert (job.status, job.attempts_used, job.history[-1].outcome) == (
            JobStatus.PENDING,
            0,
            "released",
        )
    finally:
        again.stop()


def test_slow_jobs_after_quick_ones_never_die_unstarted(
    tmp_path: Path, threads_checked: None
) -> None:
    """The review's scenario: quick jobs open the dispatch window wide, then slow jobs
    with one attempt each are leased far ahead.  Without the safety net (withdraw and
    release what waited half its timeout) most of them expired in the queue, dead
    without a handler ever running."""
    directory = str(tmp_path / "data")
    ran: list[str] = []

    def slow(args: object, context: HandlerContext) -> None:
        ran.append(context.job_id)
        context.wait(0.1)

    controller = open_threaded(directory, slow=slow)
    try:
        controller.start()
        controller.enqueue_batch([{"handler": "noop"} for _ in range(50)])
        assert controller.until_idle(WAIT_S)
        slow_ids = controller.enqueue_batch(
            [{"handler": "slow", "timeout_ms": 600, "max_attempts": 1} for _ in range(30)]
        )
        assert controller.until_idle(WAIT_S * 3)
        jobs = {job["job_id"]: job for job in controller.jobs()}
        assert all(jobs[job_id]["status"] == "completed" for job_id in slow_ids), [
            (job_id, jobs[job_id]["status"], jobs[job_id]["error"]) for job_id in slow_ids
        ]
        assert sorted(set(ran)) == sorted(slow_ids)
        # The net was needed: leases were taken back unstarted, uncounted.
        assert controller.stats.withdrawn > 0
        assert controller.stats.released >= controller.stats.withdrawn
    finally:
        controller.stop()


def test_a_bad_dispatch_horizon_is_refused_before_any_thread_starts(threads_checked: None) -> None:
    fs = CrashFS()
    for horizon in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="horizon_s must be a finite number"):
            Controller.open(
                DIRECTORY,
                ThreadPool(HandlerRegistry(), workers=1),
                fs=fs,
                options=ControllerOptions(dispatch_horizon_s=horizon),
            )
    # Nothing was left holding the directory: it opens.
    Controller.open(DIRECTORY, ThreadPool(HandlerRegistry(), workers=1), fs=fs).stop()
