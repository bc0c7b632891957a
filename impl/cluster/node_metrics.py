"""A cluster node's Prometheus metrics: the runner's, labelled ``node``, and the cluster's.

Every node serves ``/metrics`` (``run --cluster --metrics-port``):

* the cluster's own figures, labelled ``node``: whether it leads
  (``queue_node_leader``), how often it became leader (``queue_node_leaderships_total``),
  its position in the log and its lag behind the head (``queue_node_log_lsn``,
  ``queue_node_lag_events``), and the results its workers had recorded
  (``queue_node_results_total``: per-node throughput);
* while it leads, every metric of the single-node runner (impl/frontends/metrics.py,
  the design's names: ``queue_jobs_completed_total``...) read from its controller,
  with the ``node`` label added, so a dashboard sums or splits them by node.

etcd's own metrics (WAL fsync latency, leader changes, database size) are scraped from
each member's ``/metrics`` directly (docs/cluster.md, "Watching a cluster").
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from beaverq.impl.frontends.metrics import Metrics, MetricsServer

from .etcd_client import EtcdError

if TYPE_CHECKING:
    from .node import ClusterNode

CLUSTER_METRIC_NAMES = (
    "queue_node_leader",
    "queue_node_leaderships_total",
    "queue_node_log_lsn",
    "queue_node_lag_events",
    "queue_node_results_total",
)


class NodeMetrics:
    """What ``MetricsServer`` serves for a node: ``render()`` on each scrape."""

    def __init__(self, node: ClusterNode) -> None:
        self._node = node
        self.registry = CollectorRegistry()
        self.registry.register(_NodeCollector(self))
        self._leader_metrics: Metrics | None = None
        self._leader_controller: object | None = None

    def leader_metrics(self) -> Metrics | None:
        """The runner's metrics of the controller this node leads with (a new one
        after each takeover: counters restart, as after a runner's restart)."""
        controller = self._node.controller
        if controller is None:
            return None
        if controller is not self._leader_controller:
            self._leader_controller = controller
            self._leader_metrics = Metrics(controller)
        return self._leader_metrics

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _NodeCollector:
    def __init__(self, metrics: NodeMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        return []  # names vary with leadership: collected on each scrape

    def collect(self) -> Iterator[Metric]:
        node = self._metrics._node
        name = node.options.node
        lsn = node.position()

        def gauge(metric: str, documentation: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(metric, documentation, labels=["node"])
            family.add_metric([name], value)
            return family

        yield gauge("queue_node_leader", "1 while this node leads the cluster.", node.is_leader)
        leaderships = CounterMetricFamily(
            "queue_node_leaderships_total", "Times this node became leader.", labels=["node"]
        )
        leaderships.add_metric([name], node.leaderships)
        yield leaderships
        yield gauge("queue_node_log_lsn", "The last LSN this node's state reflects.", lsn)
        try:
            head, _revision = node.log.head()
            yield gauge(
                "queue_node_lag_events",
                "Events in the log this node has not folded.",
                max(0, head - lsn),
            )
        except EtcdError:
            pass  # etcd unreachable: no lag to report, the other figures still are
        results = CounterMetricFamily(
            "queue_node_results_total",
            "Results of this node's workers the leader recorded (per-node throughput).",
            labels=["node"],
        )
        results.add_metric([name], node.workers.completed)
        yield results
        leader_metrics = self._metrics.leader_metrics()
        if leader_metrics is not None:
            for family in leader_metrics.registry.collect():
                yield _with_node(family, name)


def _with_node(family: Metric, node: str) -> Metric:
    labelled = Metric(family.name, family.documentation, family.type, family.unit)
    labelled.samples = [
        sample._replace(labels={**sample.labels, "node": node}) for sample in family.samples
    ]
    return labelled


def serve_node_metrics(node: ClusterNode, port: int, host: str = "127.0.0.1") -> MetricsServer:
    return MetricsServer(NodeMetrics(node), port, host)
