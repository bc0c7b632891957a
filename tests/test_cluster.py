"""The cluster's parts against a real etcd (one member): the fenced log, the follower,
nodes in one process, the client's identities, the RPC's refusals.

Goal: each rule docs/cluster.md states is upheld by the code that claims it:
an append is refused when the head moved or the epoch is no longer current, and a
refused append writes nothing; every node folds the same state; a retried enqueue
after a lost answer finds the job instead of enqueuing it twice; a departed node's
leases, and only its, are abandoned; the RPC refuses what it must.

Method: one etcd member per module (``etcd``), a fresh cluster name per test (the
keys of clusters do not meet).  Waits are conditions with deadlines.  The fault tests
with processes, partitions and clock skew are in test_cluster_nemesis.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beaverq.impl.cluster.audit import audit
from beaverq.impl.cluster.cluster_client import execute, with_identity
from beaverq.impl.cluster.etcd_client import EtcdClient
from beaverq.impl.cluster.etcd_log import (
    ENTRY_BYTES_MAX,
    ClusterKeys,
    EtcdLog,
    LogCorrupt,
    LogRefused,
    decode_entry,
    encode_entry,
    fold_entry,
    pack,
    split,
)
from beaverq.impl.cluster.etcd_members import EtcdMembers
from beaverq.impl.cluster.follower import LogFollower
from beaverq.impl.cluster.membership import NodeNameTaken, registered_nodes
from beaverq.impl.cluster.node import ClusterNode, NodeOptions
from beaverq.impl.cluster.node_metrics import CLUSTER_METRIC_NAMES, NodeMetrics
from beaverq.impl.cluster.rpc import NotLeader
from beaverq.impl.frontends.metrics import METRIC_NAMES
from beaverq.impl.runtime.handlers import HandlerRegistry
from beaverq.model import Enqueue, Event, State, decide, evolve, initial_state

pytestmark = pytest.mark.skipif(
    shutil.which("etcd") is None,
    reason="etcd is not on PATH: install it with 'apt-get install etcd-server'",
)


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ...]]:
    with EtcdMembers.start(1, tmp_path_factory.mktemp("etcd")) as members:
        members.wait_ready(30.0)
        yield members.client_urls


@pytest.fixture
def log(etcd: tuple[str, ...]) -> Iterator[EtcdLog]:
    with EtcdClient(etcd) as client:
        yield EtcdLog(client, ClusterKeys(f"t{uuid.uuid4().hex[:10]}"))


def until(condition: Callable[[], Any], timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def enqueued(state: State, count: int, at_ms: int = 1_000) -> tuple[State, list[Event]]:
    events: list[Event] = []
    for _ in range(count):
        for event in decide(state, Enqueue(now_ms=at_ms, handler="noop")):
            state = evolve(state, event)
            events.append(event)
    return state, events


# -- the log and its fences -----------------------------------------------------------------


def test_an_append_is_fenced_by_the_head_and_by_the_epoch(log: EtcdLog) -> None:
    client, keys = log.client, log.keys
    first = client.lease_grant(10)
    leader = client.campaign(keys.election, first, b"a", timeout_s=5)
    state, events = enqueued(initial_state(), 3)
    log.append(events, leader=leader, timeout_s=5)
    assert log.head()[0] == 3

    # The head moved (this appender's events were already appended): refused.
    with pytest.raises(LogRefused, match="head moved"):
        log.append(events, leader=leader, timeout_s=5)

    # A new leader: the old one's epoch is over, even with the right head.
    client.lease_revoke(first)
    second = client.lease_grant(10)
    client.campaign(keys.election, second, b"b", timeout_s=5)
    _state, more = enqueued(state, 2)
    with pytest.raises(LogRefused, match="leadership lost"):
        log.append(more, leader=leader, timeout_s=5)
    # A refused append wrote nothing.
    assert log.head()[0] == 3
    assert sum(1 for _ in log.entries_after(0)) == 1


@settings(max_examples=25, deadline=None)
@given(count=st.integers(1, 40), size=st.integers(0, 40_000))
def test_entries_round_trip_and_stay_under_the_request_limit(count: int, size: int) -> None:
    state = initial_state()
    events: list[Event] = []
    for _ in range(count):
        command = Enqueue(now_ms=5, handler="noop", args_json=f'"{"x" * size}"')
        for event in decide(state, command):
            state = evolve(state, event)
            events.append(event)
    runs = list(split(events))
    assert [event for run in runs for event in run] == events
    for run in runs:
        data = encode_entry(pack(run))
        assert len(run) == 1 or len(data) <= ENTRY_BYTES_MAX + 4096
        entry = decode_entry(b"k", data)
        assert (entry.first_lsn, entry.last_lsn) == (run[0].lsn, run[-1].lsn)


def test_a_follower_folds_what_the_leader_appends_and_a_corrupt_entry_is_loud(
    log: EtcdLog,
) -> None:
    client, keys = log.client, log.keys
    leader = client.campaign(keys.election, client.lease_grant(10), b"a", timeout_s=5)
    follower = LogFollower(log)
    follower.start()
    try:
        state = initial_state()
        for _round in range(5):
            state, events = enqueued(state, 7)
            log.append(events, leader=leader, timeout_s=5)
        assert follower.wait_for(state.last_lsn, 10.0)
        assert follower.state == state
        fresh = LogFollower(log)
        fresh.catch_up()
        assert fresh.state == state
    finally:
        follower.stop()
    client.put(keys.log_key(state.last_lsn + 1), b"not an entry")
    with pytest.raises(LogCorrupt, match="does not hold an entry"):
        LogFollower(log).catch_up()


# -- nodes in one process --------------------------------------------------------------------


@pytest.fixture
def cluster(etcd: tuple[str, ...]) -> Iterator[tuple[str, list[ClusterNode]]]:
    name = f"c{uuid.uuid4().hex[:10]}"
    nodes = [
        ClusterNode(
            etcd, HandlerRegistry(), NodeOptions(node=f"n{i}", cluster=name, workers=2, queue_max=1)
        )
        for i in range(3)
    ]
    for node in nodes:
        node.start()
    try:
        until(lambda: any(node.is_leader for node in nodes))
        yield name, nodes
    finally:
        for node in nodes:
            if not node._stop.is_set():
                node.stop(1.0)


def _finished(urls: tuple[str, ...], name: str, ids: list[str]) -> bool:
    status = execute(urls, name, "status", {})
    return bool(status["total"] >= len(ids) and status["pending"] + status["in_flight"] == 0)


def test_any_node_takes_jobs_and_every_node_folds_the_same_log(
    etcd: tuple[str, ...], cluster: tuple[str, list[ClusterNode]]
) -> None:
    name, nodes = cluster
    ids: list[str] = []
    for node in nodes:  # through each node: followers forward to the leader
        request = {"op": "enqueue_batch", "params": {"jobs": [{"handler": "noop"}] * 50}}
        reply = node.answer_op(json.dumps(request).encode())
        assert reply["ok"], reply
        ids += reply["result"]
    until(lambda: _finished(etcd, name, ids))
    report = audit(etcd, name, ids)
    assert report.ok, report.lines()
    head = report.state.last_lsn
    for node in nodes:
        if node.is_leader:  # its follower pauses: the controller folds (follower.py)
            assert until(lambda n=node: n._leading().state.last_lsn == head)
            assert node._leading().state == report.state
        else:
            assert node.follower.wait_for(head, 10.0)
            assert node.follower.state == report.state


def test_a_stopped_leader_hands_over_and_jobs_keep_flowing(
    etcd: tuple[str, ...], cluster: tuple[str, list[ClusterNode]]
) -> None:
    name, nodes = cluster
    first = execute(etcd, name, "enqueue_batch", {"jobs": [{"handler": "noop"}] * 30})
    leader = next(node for node in nodes if node.is_leader)
    leader.stop(1.0)
    until(lambda: any(node.is_leader for node in nodes if node is not leader))
    second = execute(etcd, name, "enqueue_batch", {"jobs": [{"handler": "noop"}] * 30})
    until(lambda: _finished(etcd, name, first + second))
    assert audit(etcd, name, first + second).ok


def test_a_departed_nodes_leases_and_only_its_are_abandoned(
    etcd: tuple[str, ...], cluster: tuple[str, list[ClusterNode]]
) -> None:
    name, nodes = cluster
    victim = next(node for node in nodes if not node.is_leader)
    ids = execute(
        etcd,
        name,
        "enqueue_batch",
        {"jobs": [{"handler": "sleep", "args": {"seconds": 0.3}} for _ in range(40)]},
    )

    def victim_holds_a_lease() -> bool:
        leader = next(node for node in nodes if node.is_leader)
        state = leader._leading().state
        return any(
            state.jobs[job].history[-1].worker_id.startswith(victim.options.node)
            for job in state.in_flight
        )

    until(victim_holds_a_lease)
    victim.kill()  # its lease expires by itself (LEASE_TTL_S)
    until(lambda: victim.options.node not in registered_nodes(victim.client, victim.keys))
    until(lambda: _finished(etcd, name, ids), timeout_s=30.0)
    report = audit(etcd, name, ids)
    assert report.ok, report.lines()
    abandoned = [e for e in _events(etcd, name) if type(e).__name__ == "LeaseAbandoned"]
    assert abandoned, "the departed node held leases: they must be abandoned"
    holders = {report.state.jobs[e.job_id].history[e.attempt - 1].worker_id for e in abandoned}
    assert all(worker.startswith(victim.options.node + "-") for worker in holders)


def _events(urls: tuple[str, ...], name: str) -> list[Event]:
    with EtcdClient(urls) as client:
        state, found = initial_state(), []
        for entry in EtcdLog(client, ClusterKeys(name)).entries_after(0):
            state, events = fold_entry(state, entry)
            found += events
        return found


# -- the client: identities for unknown outcomes ---------------------------------------------


def test_a_retried_enqueue_finds_the_committed_job(
    etcd: tuple[str, ...], cluster: tuple[str, list[ClusterNode]]
) -> None:
    """The answer of a committed enqueue is lost; the client asks again with the same
    request (the identity given once, before the first attempt): one job, same id."""
    name, _nodes = cluster
    params = with_identity("enqueue", {"job": {"handler": "noop"}})
    assert params["job"]["idempotency_key"].startswith("auto-")
    first = execute(etcd, name, "enqueue", params)
    again = execute(etcd, name, "enqueue", params)
    assert first == again
    enqueues = [e for e in _events(etcd, name) if type(e).__name__ == "JobEnqueued"]
    assert len(enqueues) == 1


def test_the_rpc_refuses_what_it_must(cluster: tuple[str, list[ClusterNode]]) -> None:
    _name, nodes = cluster
    follower = next(node for node in nodes if not node.is_leader)
    with httpx.Client() as http:
        not_leader = http.post(follower.rpc.url + "/v1/lease", json={"worker_ids": ["x-w0"]})
        assert not_leader.status_code == 409
        assert http.post(follower.rpc.url + "/v1/nothing", json={}).status_code == 404
        bad = http.post(follower.rpc.url + "/v1/op", content=b'{"op": "explode"}')
        assert bad.json()["ok"] is False and "unknown operation" in bad.json()["error"]


# -- metrics ------------------------------------------------------------------------------


def test_a_nodes_metrics_carry_its_name_and_the_leader_adds_the_runners(
    etcd: tuple[str, ...], cluster: tuple[str, list[ClusterNode]]
) -> None:
    name, nodes = cluster
    ids = execute(etcd, name, "enqueue_batch", {"jobs": [{"handler": "noop"}] * 5})
    until(lambda: _finished(etcd, name, ids))
    for node in nodes:
        text = NodeMetrics(node).render().decode()
        label = f'node="{node.options.node}"'
        for metric in CLUSTER_METRIC_NAMES:
            assert f"{metric}{{{label}}}" in text, (metric, text)
        assert (f"queue_jobs_completed_total{{{label}}}" in text) == node.is_leader
    leader = next(node for node in nodes if node.is_leader)
    assert (
        f'queue_node_leader{{node="{leader.options.node}"}} 1.0'
        in NodeMetrics(leader).render().decode()
    )


def test_the_dashboard_names_only_metrics_that_exist() -> None:
    """Every ``queue_*`` series the Grafana dashboard queries is one beaverq serves."""
    dashboard = json.loads(
        (Path(__file__).parent.parent / "docs/grafana-dashboard.json").read_text()
    )
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    named = set(re.findall(r"\bqueue_[a-z_]+", " ".join(exprs)))
    served = set(METRIC_NAMES) | set(CLUSTER_METRIC_NAMES)
    unknown = {n for n in named if re.sub(r"_(bucket|sum|count)$", "", n) not in served}
    assert unknown == set()
    assert any("queue_node_lag_events" in expr for expr in exprs)  # the cluster row is there


# -- the command line against a cluster -------------------------------------------------------


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "beaverq.impl.frontends.cli", *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_every_queue_command_works_against_a_cluster(
    etcd: tuple[str, ...], cluster: tuple[str, list[ClusterNode]]
) -> None:
    name, _nodes = cluster
    where = ["--cluster", ",".join(etcd), "--cluster-name", name]
    assert _cli(*where, "pause", "q2").returncode == 0  # its jobs stay pending
    enqueued = _cli(*where, "enqueue", "noop", "--queue", "q2", "--id", "long")
    assert enqueued.returncode == 0 and enqueued.stdout.strip() == "long", enqueued.stderr
    status = _cli(*where, "status")
    assert status.returncode == 0, status.stderr
    assert "queue q2 (paused)" in status.stdout and f"cluster {name}: 3 nodes" in status.stdout
    assert "long" in _cli(*where, "jobs").stdout
    assert "handler: noop" in _cli(*where, "show", "long").stdout
    cancelled = _cli(*where, "cancel", "long")
    assert cancelled.returncode == 0 and cancelled.stdout.strip() == "cancelled"
    refused = _cli(*where, "requeue", "long")
    assert refused.returncode == 1 and "requeue" in refused.stderr.lower()
    report = json.loads(_cli(*where, "cluster", "status").stdout)
    assert report["leader"]["node"] in {"n0", "n1", "n2"}
    assert {node["node"] for node in report["nodes"]} == {"n0", "n1", "n2"}


def test_a_cluster_with_no_node_is_a_clear_error(etcd: tuple[str, ...]) -> None:
    done = _cli("--cluster", ",".join(etcd), "--cluster-name", "nobody-here", "status")
    assert done.returncode == 1
    assert "no beaverq node is registered in cluster 'nobody-here'" in done.stderr


def test_a_second_node_of_the_same_name_is_refused_and_a_ghost_gets_no_lease(
    etcd: tuple[str, ...], cluster: tuple[str, list[ClusterNode]]
) -> None:
    """Two nodes of one name would share worker ids (the second's start would abandon
    the first's running leases); a node whose registration is gone gets no lease."""
    name, nodes = cluster
    twin = ClusterNode(etcd, HandlerRegistry(), NodeOptions(node="n1", cluster=name))
    with pytest.raises(NodeNameTaken, match="'n1' is registered in this cluster already"):
        twin.start()
    twin.kill()
    leader = next(node for node in nodes if node.is_leader)
    with pytest.raises(NotLeader, match="not registered"):
        leader.lease(["ghost-w0"])
    assert leader.lease(["n1-w7"]) == []  # registered, nothing ready: no task, no error
