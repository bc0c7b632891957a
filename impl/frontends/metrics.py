"""Prometheus metrics of a running controller, served on ``127.0.0.1:PORT/metrics``.

Two kinds of figures, read in two ways so that nothing is counted twice:

* **Read on scrape** (a custom collector): the job counters, the depth gauges and the
  recovery figures are the controller's own (``controller.stats``, the published
  state's counts, ``controller.recovery``).  The controller already counts each
  event exactly once, under its lock, as it appends it; this module only *reads*
  those numbers when Prometheus asks, so there is no second count to drift.
* **Observed as they happen** (histograms): a histogram needs every observation,
  which a scrape cannot rebuild, so :class:`Metrics` is a ``ControllerObserver``
  (``Controller.add_observer``) and is told of:

  - job results: each result the pool reports carries ``duration_s``;
  - durable WAL batches: the batch's event count and its write+fsync seconds.

The names of the original design are kept exactly (queue_jobs_dispatched_total,
queue_jobs_completed_total, queue_jobs_retried_total, queue_jobs_dead_total,
queue_job_duration_seconds, queue_depth_pending, queue_depth_in_flight,
queue_recovery_duration_seconds); docs/metrics.md explains every metric.

Every metric lives in the :class:`Metrics` object's own ``CollectorRegistry``, never
in prometheus_client's global one: two controllers in one process (tests do that)
must not share, or collide on, their series.

Counters restart at zero with each runner process (``controller.stats`` is per
process), as Prometheus counters do after a restart; ``rate()`` handles that.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

if TYPE_CHECKING:
    from beaverq.impl.runtime.controller import Controller
    from beaverq.impl.runtime.workers import TaskResult

# Buckets: jobs range from a no-op (microseconds) to long sleeps and timeouts.
JOB_DURATION_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0, 300.0,
)  # fmt: skip
# One write + fsync: from a fast NVMe (~50 µs) to a struggling disk (seconds).
FSYNC_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip
# Events per group-commit batch: 1 when idle, up to events_max (1,000) under load.
BATCH_EVENT_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)

#: Every metric name this module exposes (the tests check each is served).
METRIC_NAMES = (
    "queue_jobs_dispatched_total",
    "queue_jobs_completed_total",
    "queue_jobs_retried_total",
    "queue_jobs_dead_total",
    "queue_job_duration_seconds",
    "queue_depth_pending",
    "queue_depth_in_flight",
    "queue_recovery_duration_seconds",
    "queue_depth_delayed",
    "queue_jobs",
    "queue_jobs_expired_total",
    "queue_jobs_released_total",
    "queue_tasks_withdrawn_total",
    "queue_jobs_cancelled_total",
    "queue_results_stale_total",
    "queue_wal_fsync_seconds",
    "queue_wal_batch_events",
    "queue_wal_events_appended_total",
    "queue_snapshot_duration_seconds",
    "queue_snapshots_total",
    "queue_snapshot_failures_total",
    "queue_recovery_records_replayed",
    "queue_recovery_bytes_truncated",
    "queue_recovery_leases_abandoned",
)

_STATES = ("pending", "delayed", "in_flight", "completed", "dead", "cancelled")


class Metrics:
    """The metrics of one controller: its registry, its histograms, and an observer.

    Usage::

        controller = Controller.open(dir, pool)
        metrics = Metrics(controller)       # before controller.start(): sees everything
        stop = serve_metrics(metrics, port)

    ``serve_metrics(controller, port)`` does ``Metrics(controller)`` for you.  Counters
    and gauges are read from the controller on scrape; the histograms (job durations,
    WAL batches) see what happens after :meth:`attach`.
    """

    def __init__(self, controller: Controller | None = None) -> None:
        self.registry = CollectorRegistry()
        self.job_duration = Histogram(
            "queue_job_duration_seconds",
            "How long a handler ran, per attempt that reported a result (success or failure).",
            buckets=JOB_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.wal_fsync = Histogram(
            "queue_wal_fsync_seconds",
            "Time to write and fsync one group-commit batch of the WAL.",
            buckets=FSYNC_BUCKETS,
            registry=self.registry,
        )
        self.wal_batch_events = Histogram(
            "queue_wal_batch_events",
            "Events made durable by one fsync (group-commit batch size).",
            buckets=BATCH_EVENT_BUCKETS,
            registry=self.registry,
        )
        self._controller: Controller | None = None
        self.registry.register(_ControllerCollector(self))
        if controller is not None:
            self.attach(controller)

    # -- The observations: a ControllerObserver (impl/runtime/observers.py). ------------

    def result_received(self, result: TaskResult) -> None:
        self.job_duration.observe(max(0.0, result.duration_s))

    def batch_durable(self, events: int, seconds: float) -> None:
        """Runs on the group commit's flusher thread, after the batch is durable.  It
        must not take the controller's lock: a snapshot holds that lock while it
        closes the group commit and waits for this very thread."""
        self.wal_fsync.observe(max(0.0, seconds))
        self.wal_batch_events.observe(events)

    # -- Attaching to a controller. --------------------------------------------------------

    def attach(self, controller: Controller) -> None:
        """Read ``controller`` on scrape, and observe its job results and WAL batches
        from now on (``Controller.add_observer``)."""
        if self._controller is not None:
            raise ValueError("these metrics are already attached to a controller")
        self._controller = controller
        controller.add_observer(self)

    @property
    def controller(self) -> Controller | None:
        return self._controller

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class _ControllerCollector:
    """Reads the controller's counters and state on each scrape (nothing stored here)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        # Without describe(), registering would call collect() once, before any
        # controller is attached; the names are fixed, so the families are empty here.
        return list(self._families(None))

    def collect(self) -> Iterator[Metric]:
        yield from self._families(self._metrics.controller)

    def _families(self, controller: Controller | None) -> Iterator[Metric]:
        # Plain reads of ints the controller updates under its lock: each read is
        # atomic, and a scrape racing an event sees it now or on the next scrape.
        stats = None if controller is None else controller.stats
        counts = None if controller is None else controller.state.counts
        recovery = None if controller is None else controller.recovery

        def counter(name: str, documentation: str, field: str) -> CounterMetricFamily:
            if stats is None:
                return CounterMetricFamily(name, documentation)
            return CounterMetricFamily(name, documentation, value=getattr(stats, field))

        def gauge(name: str, documentation: str, value: float | None) -> GaugeMetricFamily:
            if value is None:
                return GaugeMetricFamily(name, documentation)
            return GaugeMetricFamily(name, documentation, value=value)

        yield counter(
            "queue_jobs_dispatched_total", "Leases granted (attempts leased to a worker slot).",
            "dispatched",
        )  # fmt: skip
        yield counter("queue_jobs_completed_total", "Jobs completed.", "completed")
        yield counter(
            "queue_jobs_retried_total",
            "Attempts that ended in a retry (failed, timed out or abandoned by a crash).",
            "retried",
        )
        yield counter("queue_jobs_dead_total", "Jobs that used up their attempts (DEAD).", "dead")
        yield counter("queue_jobs_cancelled_total", "Jobs that reached CANCELLED.", "cancelled")
        yield counter(
            "queue_jobs_released_total",
            "Leases given back unstarted or at a graceful stop (the attempt not counted).",
            "released",
        )
        yield counter(
            "queue_tasks_withdrawn_total",
            "Tasks leased ahead that waited half their timeout unstarted and were taken "
            "back (the dispatch window's safety net).",
            "withdrawn",
        )
        yield counter(
            "queue_jobs_expired_total", "Leases that passed their deadline (timeouts).", "expired"
        )
        yield counter(
            "queue_results_stale_total",
            "Results refused by the attempt fence (their lease was no longer live).",
            "stale_results",
        )
        yield counter(
            "queue_wal_events_appended_total", "Events appended to the WAL.", "events_appended"
        )
        yield counter("queue_snapshots_total", "Snapshots taken.", "snapshots")
        yield counter(
            "queue_snapshot_failures_total",
            "Snapshots that failed (the WAL kept everything; retried later).",
            "snapshot_failures",
        )
        yield gauge(
            "queue_snapshot_duration_seconds",
            "Duration of the last snapshot (pause appends, flush, write, rotate, compact).",
            None if stats is None else stats.snapshot_seconds_last,
        )
        yield gauge(
            "queue_depth_pending",
            "Jobs ready to run now.",
            None if counts is None else counts.pending,
        )
        yield gauge(
            "queue_depth_in_flight",
            "Jobs leased to a worker.",
            None if counts is None else counts.in_flight,
        )
        yield gauge(
            "queue_depth_delayed",
            "Jobs waiting for their delay or retry backoff.",
            None if counts is None else counts.delayed,
        )
        by_state = GaugeMetricFamily(
            "queue_jobs", "Jobs the state holds, by status.", labels=["state"]
        )
        if counts is not None:
            for name in _STATES:
                by_state.add_metric([name], getattr(counts, name))
        yield by_state
        yield gauge(
            "queue_recovery_duration_seconds",
            "Time this runner took to recover at start (snapshot load + WAL replay + Recover).",
            None if recovery is None else recovery.seconds,
        )
        yield gauge(
            "queue_recovery_records_replayed",
            "WAL records replayed after the snapshot at the last start.",
            None if recovery is None else recovery.records_replayed,
        )
        yield gauge(
            "queue_recovery_bytes_truncated",
            "Bytes of torn WAL tail cut at the last start.",
            None if recovery is None else recovery.bytes_truncated,
        )
        yield gauge(
            "queue_recovery_leases_abandoned",
            "Leases a previous process left live, abandoned (and retried) at the last start.",
            None if recovery is None else recovery.leases_abandoned,
        )


# -- The HTTP endpoint. ----------------------------------------------------------------------


class Exposition(Protocol):
    """What the endpoint serves: a ``Metrics``, or a cluster node's (impl/cluster)."""

    def render(self) -> bytes: ...


class _Server(http.server.ThreadingHTTPServer):
    # Request threads are joined by server_close(): none outlives stop().
    daemon_threads = False
    block_on_close = True
    metrics: Exposition


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body, content_type, status = self.server.metrics.render(), CONTENT_TYPE_LATEST, 200
        elif path == "/":
            body = b'beaverq metrics: <a href="/metrics">/metrics</a>\n'
            content_type, status = "text/html; charset=utf-8", 200
        else:
            body, content_type, status = b"not found\n", "text/plain; charset=utf-8", 404
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: a scrape every few seconds is not news."""


class MetricsServer:
    """A running endpoint.  Calling it stops it (idempotent); ``port`` is the bound port
    (useful with port 0)."""

    def __init__(self, metrics: Exposition, port: int, host: str) -> None:
        self.metrics = metrics
        self._server = _Server((host, port), _Handler)
        self._server.metrics = metrics
        self.host = host
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="beaverq-metrics",
            daemon=True,
        )
        self._stopped = False
        self._lock = threading.Lock()
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def __call__(self) -> None:
        self.stop()

    def stop(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._server.shutdown()  # returns once serve_forever has
        self._server.server_close()  # closes the socket, joins request threads
        self._thread.join()


def serve_metrics(
    target: Metrics | Controller, port: int, host: str = "127.0.0.1"
) -> MetricsServer:
    """Serve ``target``'s metrics as Prometheus text on ``http://host:port/metrics``.

    ``target`` is a :class:`Metrics`, or a controller (wrapped in a new ``Metrics``).
    Returns the running server; call it (or its ``stop``) to stop serving and join
    its threads.  Raises ``OSError`` if the port cannot be bound."""
    metrics = target if isinstance(target, Metrics) else Metrics(target)
    return MetricsServer(metrics, port, host)
