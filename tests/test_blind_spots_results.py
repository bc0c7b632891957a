"""Issue 15, kinds 3 and 5: results the tests' fake pool never sent.

Kind 3, *a task that never started*.  A pool reports ``started=False`` when a task's
lease ran out while it waited in the queue (impl/workers.py); the controller must then
give the lease back uncounted (``Release``: docs/semantics.md, "the attempt does not
count"), or find it stale if it has ended meanwhile.  The fake pool of
tests/test_controller.py only ever reports started tasks, so what the controller does
with an unstarted one was untested: counting it as a failure would let a job die of
attempts that never ran.

Kind 5, *a result that cannot be encoded*.  A handler may return anything; a value JSON
cannot encode (nested too deeply, a NaN, a container whose iteration raises) must end
the attempt as a failure, the model deciding its fate as for any failed attempt, and
never escape into the worker thread: a worker thread that dies takes its task with it,
no result is ever reported, and the lease hangs until it expires (counted).

Method: kind 3, a property test in step mode (fake clock, fake pool, inline commit, the
crashable file system): any mix of unstarted reports and failures, checked after each
against the promise (only started attempts count; an unstarted one leaves the job
pending with its attempt recorded as released); kind 5, a property test of
``HandlerRegistry.run`` over hostile values (it must return a failure, never raise), and
a threaded run on a one-worker ``ThreadPool`` where a hostile job is followed by a plain
one: both must end, as the model decides.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sim.crashfs import CrashFS
from test_controller import DIRECTORY, World

from beaverq.impl.runtime.controller import Controller
from beaverq.impl.runtime.handlers import HandlerContext, HandlerRegistry, Outcome
from beaverq.impl.runtime.options import ControllerOptions
from beaverq.impl.runtime.workers import TaskResult, ThreadPool
from beaverq.model import JobStatus

# -- Kind 3: tasks that never started. ---------------------------------------------------

NOT_STARTED = Outcome.failure("not started: its lease ran out while it waited")


def report(world: World, *, started: bool) -> None:
    """The pool reports its one running task: failed, or never started."""
    task = world.pool.running.pop(0)
    assert world.pool.on_result is not None
    outcome = Outcome.failure("it broke") if started else NOT_STARTED
    world.pool.on_result(
        TaskResult(task.job_id, task.attempt, outcome, task.worker_id, 0.0, started=started)
    )


@given(
    max_attempts=st.integers(1, 3),
    reports=st.lists(st.booleans(), min_size=1, max_size=12),  # True: started (failed)
)
def test_an_unstarted_task_gives_its_lease_back_uncounted(
    max_attempts: int, reports: list[bool]
) -> None:
    world = World(workers=1)
    job_id = world.enqueue(max_attempts=max_attempts, backoff_base_ms=0, backoff_cap_ms=0)
    world.step_until_quiet()
    started_failures = unstarted = 0
    for started in reports:
        if world.controller.state.jobs[job_id].status is JobStatus.DEAD:
            break
        report(world, started=started)
        world.step_until_quiet()  # decides the result, and leases the job again if it can
        started_failures += started
        unstarted += not started
        job = world.controller.state.jobs[job_id]
        # Only attempts that ran are counted; every lease moved the fence.
        assert job.attempt == started_failures + unstarted + (job.status is JobStatus.IN_FLIGHT)
        assert job.attempts_used == started_failures + (job.status is JobStatus.IN_FLIGHT)
        assert world.controller.stats.released == unstarted
        ended = [record.outcome for record in job.history if record.outcome is not None]
        assert ended.count("released") == unstarted
        assert ended.count("failed") == started_failures
        # Dead exactly when the attempts that ran are used up; never by unstarted ones.
        assert (job.status is JobStatus.DEAD) == (started_failures == max_attempts)
        if not started:
            # Handed back, and (backoff or not) ready at once: leased again already.
            assert job.status is JobStatus.IN_FLIGHT
    world.check()


def test_an_unstarted_task_whose_lease_has_expired_is_stale() -> None:
    """The lease expired (and was counted) while the task waited: the late unstarted
    report finds the fence moved, and changes nothing."""
    world = World(workers=2)  # the held-back task keeps its slot: attempt 2 takes the other
    job_id = world.enqueue(timeout_ms=500, max_attempts=3)
    world.step_until_quiet()
    waiting = world.pool.running.pop(0)  # held back: reported only after the expiry
    world.clock.advance(600)
    world.step_until_quiet()  # the tick expires attempt 1; attempt 2 is leased
    before = world.controller.state.jobs[job_id]
    assert (before.status, before.attempt, before.attempts_used) == (JobStatus.IN_FLIGHT, 2, 2)
    assert world.pool.on_result is not None
    world.pool.on_result(
        TaskResult(job_id, waiting.attempt, NOT_STARTED, waiting.worker_id, 0.0, started=False)
    )
    world.step_until_quiet()
    assert world.controller.stats.stale_results == 1
    assert world.controller.stats.released == 0
    assert world.controller.state.jobs[job_id] == before
    world.check()


# -- Kind 5: results that cannot be encoded. ---------------------------------------------


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


class ItemsRaise(dict):  # type: ignore[type-arg]
    """A mapping whose items cannot be read: the encoder's call raises."""

    def items(self) -> Any:
        raise KeyError("no items today")


class IterRaises(list):  # type: ignore[type-arg]
    def __iter__(self) -> Any:
        raise LookupError("no iteration today")


HOSTILE: dict[str, Any] = {
    "nested too deeply": nested(100_000),
    "a mapping whose items raise": ItemsRaise(a=1),
    "a list whose iteration raises": IterRaises([1]),
    "NaN": math.nan,
    "an object": object(),
    "a lone surrogate": "\ud800",
    "larger than 64 KiB": "x" * 70_000,
}


@given(
    name=st.sampled_from(sorted(HOSTILE)),
    wrap=st.sampled_from(["bare", "in a list", "in a dict"]),
)
def test_a_result_hostile_to_the_encoder_is_a_failure_never_an_exception(
    name: str, wrap: str
) -> None:
    value = HOSTILE[name]
    result = {"bare": value, "in a list": [1, value], "in a dict": {"k": value}}[wrap]
    registry = HandlerRegistry()
    registry.add("hostile", lambda args, context: result)
    context = HandlerContext(job_id="j", attempt=1, timeout_s=1.0, deadline=math.inf)
    outcome = registry.run("hostile", "null", context)
    assert not outcome.ok
    assert outcome.error is not None and outcome.error.startswith("hostile: the result ")


@pytest.fixture
def controller() -> Iterator[Controller]:
    registry = HandlerRegistry()
    registry.add("hostile", lambda args, context: HOSTILE[args])
    ran = threading.Event()
    registry.add("plain", lambda args, context: ran.set())
    pool = ThreadPool(registry, workers=1)  # one worker: it must survive the first job
    options = ControllerOptions(runner_id="t", jitter_seed=3, snapshot_interval_s=1e9)
    opened = Controller.open(DIRECTORY, pool, fs=CrashFS(), options=options)
    try:
        yield opened
    finally:
        opened.stop(grace_s=0)


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_result_ends_the_attempt_and_the_worker_runs_on(
    controller: Controller, name: str
) -> None:
    """A timeout of an hour: the job can end in time only by its reported result, not
    by its lease expiring.  Two attempts: the first failure retries (backoff 0), the
    second is the last, so the model decides dead; the plain job behind it runs."""
    controller.start()
    hostile = controller.enqueue(
        "hostile", name, max_attempts=2, timeout_ms=3_600_000, backoff_base_ms=0, backoff_cap_ms=0
    )
    plain = controller.enqueue("plain", priority=-1)  # after both attempts of the first
    assert controller.until_idle(10.0), "a job never ended: a worker thread died"
    job = controller.state.jobs[hostile]
    assert (job.status, job.attempt, job.attempts_used) == (JobStatus.DEAD, 2, 2)
    assert [record.outcome for record in job.history] == ["failed", "failed"]
    assert job.error is not None and job.error.startswith("hostile: the result ")
    assert controller.state.jobs[plain].status is JobStatus.COMPLETED
