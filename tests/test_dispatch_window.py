"""The dispatch window: how far ahead of its workers the controller leases.

Properties, not examples: whatever running times it has seen, the window holds one
task per worker at least and the pool's capacity at most, and it never widens when
the handlers get slower.  Plus the pool's side of the bargain: a task that waited
in the pool's queue does not get a longer deadline than its lease.
"""

from __future__ import annotations

import queue
import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from beaverq.impl.runtime.dispatch_window import DispatchWindow
from beaverq.impl.runtime.handlers import HandlerRegistry
from beaverq.impl.runtime.workers import Task, ThreadPool

durations = st.floats(min_value=0.0, max_value=3600.0, allow_nan=False)


@st.composite
def windows(draw: st.DrawFn) -> DispatchWindow:
    workers = draw(st.integers(1, 64))
    capacity = draw(st.integers(workers, workers + 512))
    horizon = draw(st.floats(min_value=0.0, max_value=10.0, allow_nan=False))
    return DispatchWindow(workers=workers, capacity=capacity, horizon_s=horizon)


@given(windows(), st.lists(durations, max_size=50))
def test_the_window_stays_between_one_per_worker_and_the_capacity(
    window: DispatchWindow, seen: list[float]
) -> None:
    assert window.size() == window.workers  # nothing seen yet: cautious
    for duration in seen:
        window.observe(duration)
        assert window.workers <= window.size() <= window.capacity


@given(windows(), durations, durations)
def test_slower_handlers_never_widen_the_window(
    window: DispatchWindow, one: float, other: float
) -> None:
    fast, slow = sorted((one, other))
    window.mean_duration_s = fast
    wide = window.size()
    window.mean_duration_s = slow
    assert window.size() <= wide


@given(st.integers(1, 64), st.integers(0, 512), st.lists(durations, max_size=20))
def test_a_zero_horizon_never_leases_ahead(workers: int, room: int, seen: list[float]) -> None:
    window = DispatchWindow(workers=workers, capacity=workers + room, horizon_s=0.0)
    for duration in seen:  # even instant handlers (duration 0)
        window.observe(duration)
        assert window.size() == workers


def test_instant_handlers_open_the_whole_capacity_and_slow_ones_none_ahead() -> None:
    window = DispatchWindow(workers=4, capacity=260, horizon_s=0.05)
    window.observe(0.0)
    assert window.size() == 260
    window.mean_duration_s = 1.0  # one second per job: nothing starts within 50 ms
    assert window.size() == 4


@pytest.mark.parametrize(
    ("workers", "capacity", "horizon"),
    [(0, 4, 0.05), (5, 4, 0.05), (1, 4, -1.0), (1, 4, float("nan")), (1, 4, float("inf"))],
)
def test_a_window_refuses_impossible_bounds(workers: int, capacity: int, horizon: float) -> None:
    with pytest.raises(ValueError, match=r"must be|need"):
        DispatchWindow(workers=workers, capacity=capacity, horizon_s=horizon)


def test_a_task_that_waited_in_the_queue_keeps_the_deadline_of_its_lease() -> None:
    """Upholds: a handler never gets more time than its lease (impl/runtime/workers.py)."""
    seen: queue.Queue[tuple[float, float]] = queue.Queue()
    release = threading.Event()
    registry = HandlerRegistry()
    registry.add("blocker", lambda args, context: release.wait(10))
    registry.add("report", lambda args, context: seen.put((context.deadline, context.timeout_s)))
    pool = ThreadPool(registry, 1)
    pool.start(lambda result: None)
    try:
        pool.submit(Task(job_id="a", attempt=1, handler="blocker", args_json="null", timeout_s=30))
        before = time.monotonic()
        pool.submit(Task(job_id="b", attempt=1, handler="report", args_json="null", timeout_s=30))
        after = time.monotonic()
        # "b" waits behind "a" until the clock has moved past its handover, so a
        # deadline counted from its start would be later than ``after + timeout``.
        while time.monotonic() <= after:
            threading.Event().wait(0.001)
        release.set()
        deadline, timeout_s = seen.get(timeout=10)
        assert before <= deadline - timeout_s <= after
    finally:
        release.set()
        pool.shutdown(1.0)


def test_the_deadline_counts_from_the_grant_of_the_lease_when_the_task_says_when() -> None:
    """The lease's clock starts before the fsync that makes it durable (R2)."""
    seen: queue.Queue[float] = queue.Queue()
    registry = HandlerRegistry()
    registry.add("report", lambda args, context: seen.put(context.deadline))
    pool = ThreadPool(registry, 1)
    pool.start(lambda result: None)
    leased_at = time.monotonic() - 5.0  # e.g. a long fsync, or a snapshot's pause
    try:
        pool.submit(
            Task(
                job_id="a",
                attempt=1,
                handler="report",
                args_json="null",
                timeout_s=30,
                leased_at=leased_at,
            )
        )
        assert seen.get(timeout=10) == leased_at + 30
    finally:
        pool.shutdown(1.0)
