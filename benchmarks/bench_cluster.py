"""Benchmark of the cluster: end-to-end jobs/s, failover time, catch-up rate.

Not a test: it measures and prints (docs/performance.md, "Cluster", records the
figures by hand with the command that made them).  Goals from the cluster issue:
at least 3,000 durable no-op jobs/s with 3 etcd members on 2 cores; a killed leader
node replaced with jobs flowing again in under 3 s.

Method (everything real: etcd processes, ``beaverq run --cluster`` processes):

1. **Throughput.**  3 etcd members (``EtcdMembers``), 3 nodes with ``--workers``
   each.  ``--producers`` threads enqueue ``--jobs`` no-op jobs in batches of
   ``--batch`` through the nodes' RPC, round robin.  Time from the first enqueue to
   the moment the leader's status shows every job completed; jobs/s is jobs over that
   time.  Every event of every job (enqueue, lease, completion) is one of the leader's
   fenced etcd txns, quorum-fsynced.
2. **Failover.**  With jobs flowing, SIGKILL the leader node; the time from the kill to
   the first event a new leader appends.  ``--failovers`` times, median and max.
3. **Catch-up.**  A fresh ``LogFollower`` in this process reads the whole log built by
   1 and 2: events/s of range + decode + ``evolve``.
4. The checker (impl/cluster/audit.py) over the final log, on every member.

Run: ``python benchmarks/bench_cluster.py [--jobs 20000] [--workers 4] [--failovers 3]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from beaverq.impl.cluster.audit import audit
from beaverq.impl.cluster.cluster_client import with_identity
from beaverq.impl.cluster.etcd_client import EtcdClient
from beaverq.impl.cluster.etcd_log import ClusterKeys, EtcdLog
from beaverq.impl.cluster.etcd_members import EtcdMembers
from beaverq.impl.cluster.follower import LogFollower
from beaverq.impl.cluster.membership import current_leader, registered_nodes
from beaverq.impl.cluster.node_workers import LeaderUnreachable
from beaverq.impl.cluster.rpc import RpcClient
from beaverq.impl.cluster.snapshots import CheckpointSource
from beaverq.teaching.cluster_demo import NodeProcess, _head_and_epoch, _status, _wait

CLUSTER = "bench"


def _produce(urls: list[str], jobs: int, batch: int, acked: list[str]) -> None:
    sent = 0
    index = 0
    clients = [RpcClient(url, timeout_s=30.0) for url in urls]
    try:
        while sent < jobs:
            size = min(batch, jobs - sent)
            params = with_identity("enqueue_batch", {"jobs": [{"handler": "noop"}] * size})
            while True:  # through a failover: the same identities, so never twice
                index += 1
                try:
                    reply = clients[index % len(clients)].call(
                        "/v1/op", {"op": "enqueue_batch", "params": params}
                    )
                except LeaderUnreachable:
                    continue
                if reply.get("ok"):
                    break
                if not reply.get("retry"):
                    raise SystemExit(f"enqueue refused: {reply}")
                time.sleep(0.05)
            acked.extend(reply["result"])
            sent += size
    finally:
        for client in clients:
            client.close()


def throughput(client: EtcdClient, args: argparse.Namespace, acked: list[str]) -> float:
    keys = ClusterKeys(CLUSTER)
    urls = [info.rpc_url for info in registered_nodes(client, keys).values()]
    per = args.jobs // args.producers
    started = time.monotonic()
    threads = [
        threading.Thread(target=_produce, args=(urls[i:] + urls[:i], per, args.batch, acked))
        for i in range(args.producers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    enqueued_s = time.monotonic() - started
    total = per * args.producers

    def all_done() -> bool:
        status = _status(client, CLUSTER)
        return status is not None and status["completed"] >= total

    _wait("every job completed", all_done, 600.0, poll_s=0.2)
    elapsed = time.monotonic() - started
    print(
        f"throughput: {total} no-op jobs enqueued in {enqueued_s:.2f} s, all completed in "
        f"{elapsed:.2f} s: {total / elapsed:,.0f} jobs/s end to end "
        f"({3 * total / elapsed:,.0f} events/s through etcd)"
    )
    return total / elapsed


def failover(client: EtcdClient, nodes: list[NodeProcess], acked: list[str]) -> float:
    keys = ClusterKeys(CLUSTER)
    flowing = threading.Thread(
        target=_produce,
        args=(
            [
                info.rpc_url
                for info in registered_nodes(client, keys).values()
                if info.node != current_leader(client, keys)[0]
            ],
            2000,
            20,
            acked,
        ),  # type: ignore[index]
        daemon=True,
    )
    flowing.start()
    leader_name, epoch = _wait("a leader", lambda: current_leader(client, keys), 10.0)
    head, _ = _wait("the head", lambda: _head_and_epoch(client, CLUSTER), 10.0)
    victim = next(node for node in nodes if node.name == leader_name)
    victim.kill()
    killed = time.monotonic()

    def moved() -> bool:
        now = _head_and_epoch(client, CLUSTER)
        return now is not None and now[1] != epoch and now[0] > head

    _wait("a new leader appending", moved, 30.0, poll_s=0.002)
    seconds = time.monotonic() - killed
    victim.start()
    flowing.join(120)
    print(f"failover: leader {leader_name} SIGKILLed; a new leader appended {seconds:.2f} s later")
    return seconds


def catch_up(client: EtcdClient) -> None:
    keys = ClusterKeys(CLUSTER)
    # As a restarting node does: from the checkpoint in etcd, then the log after it.
    source = CheckpointSource(client, keys)
    follower = LogFollower(EtcdLog(client, keys), restore=source.restore_if_behind)
    started = time.monotonic()
    follower.catch_up()
    seconds = time.monotonic() - started
    lsn = follower.state.last_lsn
    how = "from the checkpoint in etcd, then the log" if source.loads else "from the log alone"
    print(
        f"catch-up: a fresh node reached LSN {lsn} {how} in {seconds:.2f} s "
        f"({lsn / seconds:,.0f} LSNs/s)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--producers", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--failovers", type=int, default=3)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="beaverq-bench-cluster-"))
    print(
        f"machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; {sys.version.split()[0]}"
    )
    nodes: list[NodeProcess] = []
    with EtcdMembers.start(3, base / "etcd") as members:
        members.wait_ready(30.0)
        client = EtcdClient(members.client_urls)
        keys = ClusterKeys(CLUSTER)
        nodes += [
            NodeProcess(
                members.client_urls, f"n{i}", base, cluster=CLUSTER, workers=args.workers, extra=()
            )
            for i in range(1, 4)
        ]
        try:
            _wait("3 nodes", lambda: len(registered_nodes(client, keys)) == 3, 30.0)
            _wait("a leader", lambda: current_leader(client, keys), 30.0)
            acked: list[str] = []
            throughput(client, args, acked)
            times = [failover(client, nodes, acked) for _ in range(args.failovers)]
            if times:
                print(
                    f"failover over {len(times)} kills: median {statistics.median(times):.2f} s, "
                    f"max {max(times):.2f} s (goal < 3 s)"
                )
            _wait("quiet", lambda: (_status(client, CLUSTER) or {}).get("pending") == 0, 120.0)
            catch_up(client)
            report = audit(members.client_urls, CLUSTER, acked)
            for line in report.lines():
                print(f"audit: {line}")
            return 0 if report.ok else 1
        finally:
            for node in nodes:
                node.kill()


if __name__ == "__main__":
    raise SystemExit(main())
