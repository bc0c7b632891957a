"""The Prometheus endpoint: every name served with its type, counters that move, a clean stop.

A real controller (real files, a thread pool) runs a few jobs; the test scrapes
``127.0.0.1:PORT/metrics`` over HTTP and parses the text with prometheus_client's own
parser, so a name or type that Prometheus would read differently fails here.
Waits are on conditions with deadlines, never fixed sleeps.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from beaverq.impl.frontends.metrics import METRIC_NAMES, Metrics, serve_metrics
from beaverq.impl.runtime.controller import Controller
from beaverq.impl.runtime.handlers import HandlerRegistry
from beaverq.impl.runtime.options import ControllerOptions
from beaverq.impl.runtime.workers import ThreadPool

WAIT_S = 20.0

# The original design's names and their types, exactly.
DESIGN_TYPES = {
    "queue_jobs_dispatched_total": "counter",
    "queue_jobs_completed_total": "counter",
    "queue_jobs_retried_total": "counter",
    "queue_jobs_dead_total": "counter",
    "queue_job_duration_seconds": "histogram",
    "queue_depth_pending": "gauge",
    "queue_depth_in_flight": "gauge",
    "queue_recovery_duration_seconds": "gauge",
}
OPERATOR_TYPES = {
    "queue_results_stale_total": "counter",
    "queue_wal_fsync_seconds": "histogram",
    "queue_wal_batch_events": "histogram",
    "queue_snapshot_duration_seconds": "gauge",
    "queue_recovery_records_replayed": "gauge",
    "queue_recovery_bytes_truncated": "gauge",
}


def wait_until(predicate: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        # Polling an HTTP endpoint: a short pause between scrapes, bounded by the deadline.
        threading.Event().wait(0.02)


def scrape(url: str) -> dict[str, tuple[str, dict[str, float]]]:
    """name -> (type, {sample name with labels: value})."""
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    found: dict[str, tuple[str, dict[str, float]]] = {}
    for family in text_string_to_metric_families(text):
        samples = {}
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        # The parser names a counter family without "_total"; its sample keeps it.
        name = family.name + "_total" if family.type == "counter" else family.name
        found[name] = (family.type, samples)
    return found


def value(found: dict[str, tuple[str, dict[str, float]]], sample: str) -> float:
    for _type, samples in found.values():
        if sample in samples:
            return samples[sample]
    raise KeyError(sample)


@pytest.fixture
def running(tmp_path) -> Iterator[tuple[Controller, str]]:
    threads_before = set(threading.enumerate())
    registry = HandlerRegistry()
    pool = ThreadPool(registry, 4)
    controller = Controller.open(
        str(tmp_path / "data"), pool, options=ControllerOptions(snapshot_interval_s=0.2)
    )
    metrics = Metrics(controller)
    server = serve_metrics(metrics, 0)
    controller.start()
    try:
        yield controller, server.url
    finally:
        controller.stop(grace_s=5.0)
        server()
        server()  # stopping twice is harmless
    # No leaked threads: the endpoint's, the pool's and the controller's are all gone.
    leaked = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
    assert leaked == []


def test_every_name_is_served_with_its_type(running):
    _controller, url = running
    found = scrape(url)
    for name, kind in (DESIGN_TYPES | OPERATOR_TYPES).items():
        assert name in found, name
        assert found[name][0] == kind, (name, found[name][0])
    for name in METRIC_NAMES:
        assert name in found, name
    assert "queue_job_duration_seconds_bucket{le=+Inf}" in found["queue_job_duration_seconds"][1]


def test_counters_move_after_jobs_run(running):
    controller, url = running
    ids = [controller.enqueue("noop") for _ in range(20)]
    ids.append(controller.enqueue("fail", {"message": "no"}, max_attempts=2, backoff_base_ms=1))
    ids.append(controller.enqueue("sleep", {"seconds": 0.01}))
    assert controller.until_idle(WAIT_S)

    def settled() -> bool:
        found = scrape(url)
        return value(found, "queue_jobs_completed_total") == 21 and (
            value(found, "queue_job_duration_seconds_count") >= 23
        )

    wait_until(settled)
    found = scrape(url)
    assert value(found, "queue_jobs_dispatched_total") == 23  # 21 + 2 attempts of "fail"
    assert value(found, "queue_jobs_retried_total") == 1
    assert value(found, "queue_jobs_dead_total") == 1
    assert value(found, "queue_depth_pending") == 0
    assert value(found, "queue_depth_in_flight") == 0
    assert value(found, "queue_jobs{state=completed}") == 21
    assert value(found, "queue_jobs{state=dead}") == 1
    assert value(found, "queue_wal_batch_events_count") >= 1
    assert value(found, "queue_wal_batch_events_sum") >= 22  # every event went through a batch
    assert value(found, "queue_wal_fsync_seconds_sum") > 0
    assert value(found, "queue_recovery_duration_seconds") > 0
    # The same numbers the controller reports itself: nothing counted twice.
    runtime = controller.status()["runtime"]
    assert value(found, "queue_jobs_dispatched_total") == runtime["dispatched"]
    assert value(found, "queue_jobs_completed_total") == runtime["completed"]


def test_recovery_figures_after_a_restart(tmp_path):
    directory = str(tmp_path / "data")
    with Controller.open(directory, ThreadPool(HandlerRegistry(), 1)) as first:
        for _ in range(5):
            first.enqueue("noop")
    second = Controller.open(
        directory, ThreadPool(HandlerRegistry(), 1), options=ControllerOptions(final_snapshot=False)
    )
    try:
        server = serve_metrics(second, 0)  # a controller, wrapped in its own Metrics
        try:
            found = scrape(server.url)
        finally:
            server()
    finally:
        second.stop()
    assert value(found, "queue_recovery_duration_seconds") > 0
    assert value(found, "queue_recovery_records_replayed") == second.recovery.records_replayed
    assert value(found, "queue_recovery_bytes_truncated") == 0
    assert value(found, "queue_depth_pending") == 5


def test_the_endpoint_stops_and_frees_its_port():
    threads_before = set(threading.enumerate())
    server = serve_metrics(Metrics(), 0)
    found = scrape(server.url)
    assert found["queue_depth_pending"][1] == {}  # no controller: names, no samples
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(server.url.replace("/metrics", "/nope"), timeout=5)
    server()
    with pytest.raises(OSError):
        urllib.request.urlopen(server.url, timeout=2)
    assert [t for t in threading.enumerate() if t not in threads_before] == []
    # The port is free again: a new server can bind it.
    again = serve_metrics(Metrics(), server.port)
    again()


def test_registries_are_separate():
    # Two sets of metrics in one process do not collide (nothing in the global registry).
    first, second = Metrics(), Metrics()
    first.job_duration.observe(1.0)
    assert b"queue_job_duration_seconds_count 1.0" in first.render()
    assert b"queue_job_duration_seconds_count 0.0" in second.render()
