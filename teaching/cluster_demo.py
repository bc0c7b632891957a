"""``beaverq demo --cluster``: three etcd members, three beaverq nodes, two crashes, checked.

1. **Start** a local etcd cluster of 3 members (the system's ``etcd``) and 3 beaverq
   nodes (``beaverq run --cluster``), each a real process with 4 workers.
2. **Enqueue** the single-node demo's job mix, a third through each node: any node
   takes a producer's jobs (a follower forwards them to the leader).
3. **Crash the leader node** with SIGKILL while jobs run, and time the failover: from
   the kill to the first event a new leader appends.  Restart the node.
4. **Crash an etcd member** (the one leading the etcd cluster) and restart it.
5. **Account** from etcd itself (impl/cluster/audit.py): the log identical on every
   member and gapless, every acknowledged job in it exactly once and finished as its
   kind must end, no completion twice, event times never going backwards.

Exit status 0 only if every check holds.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from beaverq.impl.cluster.audit import audit
from beaverq.impl.cluster.cluster_client import with_identity
from beaverq.impl.cluster.etcd_client import EtcdClient, EtcdError
from beaverq.impl.cluster.etcd_log import ClusterKeys, EtcdLog
from beaverq.impl.cluster.etcd_members import EtcdMembers, EtcdMembersError
from beaverq.impl.cluster.membership import current_leader, registered_nodes
from beaverq.impl.cluster.node_workers import LeaderUnreachable
from beaverq.impl.cluster.rpc import RpcClient

from .demo import KINDS, job_mix
from .demo_runner import DEMO_MODULE, DemoFailed

CLUSTER = "demo"
NODES = 3
BATCH = 50
DEADLINE_S = 180.0


class NodeProcess:
    """One ``beaverq run --cluster`` process, in its own session (a SIGKILL reaches all).

    ``wrap`` rewrites the whole command line (the nemesis tests run nodes inside a
    network namespace with ``Netns.hub_argv``)."""

    def __init__(
        self,
        urls: Sequence[str],
        name: str,
        log_dir: Path,
        *,
        cluster: str = CLUSTER,
        workers: int = 4,
        extra: Sequence[str] = ("--import", DEMO_MODULE),
        wrap: Callable[[Sequence[str]], list[str]] | None = None,
    ) -> None:
        self.name = name
        argv = [
            sys.executable, "-m", "beaverq.impl.frontends.cli", "run",
            "--cluster", ",".join(urls), "--cluster-name", cluster, "--node", name,
            "--workers", str(workers), "--grace", "2", *extra,
        ]  # fmt: skip
        self.argv = argv if wrap is None else wrap(argv)
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def kill(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def terminate(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.kill()


def _wait(what: str, condition: Any, timeout_s: float, poll_s: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value is not None and value is not False:  # 0 is an answer (member 0)
            return value
        if time.monotonic() > deadline:
            raise DemoFailed(f"{what}: not within {timeout_s:g} s")
        time.sleep(poll_s)


class Producer(threading.Thread):
    """Sends its share of jobs to one node, in batches, until each batch is acknowledged.
    A batch whose answer was lost is sent again with the same idempotency keys."""

    def __init__(self, client: EtcdClient, name: str, jobs: list[tuple[str, dict[str, Any]]]):
        super().__init__(name=f"producer-{name}", daemon=True)
        self._client = client
        self._node = name
        self._jobs = jobs
        self.acked: dict[str, str] = {}  # job id -> kind
        self.retries = 0
        self.failure: str | None = None

    def run(self) -> None:
        keys = ClusterKeys(CLUSTER)
        for start in range(0, len(self._jobs), BATCH):
            chunk = self._jobs[start : start + BATCH]
            params = with_identity("enqueue_batch", {"jobs": [job for _kind, job in chunk]})
            deadline = time.monotonic() + 60.0
            while True:
                reply = self._send(keys, params)
                if reply is not None and reply.get("ok"):
                    for (kind, _job), job_id in zip(chunk, reply["result"], strict=True):
                        self.acked[job_id] = kind
                    break
                if reply is not None and not reply.get("retry"):
                    self.failure = str(reply.get("error"))
                    return
                self.retries += 1
                if time.monotonic() > deadline:
                    self.failure = "a batch was not acknowledged within 60 s"
                    return
                time.sleep(0.1)

    def _send(self, keys: ClusterKeys, params: dict[str, Any]) -> dict[str, Any] | None:
        """To this producer's node; while it is down, to any node."""
        try:
            nodes = registered_nodes(self._client, keys)
        except EtcdError:
            return None
        info = nodes.get(self._node) or next(iter(nodes.values()), None)
        if info is None:
            return None
        node = RpcClient(info.rpc_url, timeout_s=15.0)
        try:
            return node.call("/v1/op", {"op": "enqueue_batch", "params": params})
        except LeaderUnreachable:
            return None
        finally:
            node.close()


def _head_and_epoch(client: EtcdClient, cluster: str = CLUSTER) -> tuple[int, int] | None:
    keys = ClusterKeys(cluster)
    try:
        head, _revision = EtcdLog(client, keys).head()
        leader = current_leader(client, keys)
    except EtcdError:
        return None
    return None if leader is None else (head, leader[1])


def _status(client: EtcdClient, cluster: str = CLUSTER) -> dict[str, Any] | None:
    """The leader node's ``status`` (None while there is none to ask)."""
    keys = ClusterKeys(cluster)
    try:
        leader = current_leader(client, keys)
        info = None if leader is None else registered_nodes(client, keys).get(leader[0])
    except EtcdError:
        return None
    if info is None:
        return None
    node = RpcClient(info.rpc_url, timeout_s=5.0)
    try:
        reply = node.call("/v1/op", {"op": "status", "params": {}})
    except LeaderUnreachable:
        return None
    finally:
        node.close()
    result = reply.get("result")
    return result if reply.get("ok") and isinstance(result, dict) else None


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="beaverq demo --cluster")
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--dir", help="keep the etcd data and node logs here")
    return parser.parse_args(argv)


def run_cluster_demo(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    base = Path(args.dir or tempfile.mkdtemp(prefix="beaverq-cluster-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    nodes: list[NodeProcess] = []
    try:
        with EtcdMembers.start(3, base / "etcd") as members:
            members.wait_ready(30.0)
            return _tell(args, base, members, nodes)
    except (DemoFailed, EtcdMembersError) as error:
        print(f"demo failed: {error}", file=sys.stderr)
        for node in nodes:
            print(f"--- {node.name}'s log: {node.log_path}", file=sys.stderr)
        return 1
    finally:
        for node in nodes:
            node.kill()


def _tell(
    args: argparse.Namespace, base: Path, members: EtcdMembers, nodes: list[NodeProcess]
) -> int:
    urls = members.client_urls
    say = print
    say(f"1. etcd: {len(urls)} members up ({', '.join(urls)})")
    client = EtcdClient(urls)
    keys = ClusterKeys(CLUSTER)
    nodes.extend(NodeProcess(urls, f"n{index}", base) for index in range(1, NODES + 1))
    _wait("the nodes registering", lambda: len(registered_nodes(client, keys)) == NODES, 30.0)
    leader = _wait("a leader", lambda: current_leader(client, keys), 30.0)
    say(f"   beaverq: {NODES} nodes registered; {leader[0]} leads (epoch {leader[1]})")

    mix = job_mix(args.jobs, args.seed)
    shares = [mix[index::NODES] for index in range(NODES)]
    producers = [
        Producer(client, node.name, share) for node, share in zip(nodes, shares, strict=True)
    ]
    say(f"2. enqueueing {len(mix)} jobs, a third through each node, while they run")
    for producer in producers:
        producer.start()

    def acked() -> int:
        return sum(len(producer.acked) for producer in producers)

    _wait("a third of the jobs acknowledged", lambda: acked() >= len(mix) // 3, 60.0)
    leader_name, old_epoch = _wait("a leader", lambda: current_leader(client, keys), 10.0)
    victim = next(node for node in nodes if node.name == leader_name)
    head_at_kill, _epoch = _wait("the log head", lambda: _head_and_epoch(client), 10.0)
    victim.kill()
    killed_at = time.monotonic()
    say(f"3. SIGKILL the leader node {leader_name} (epoch {old_epoch}) at LSN {head_at_kill}")

    def new_leader_appended() -> bool:
        now = _head_and_epoch(client)
        return now is not None and now[1] != old_epoch and now[0] > head_at_kill

    _wait("a new leader appending", new_leader_appended, 30.0, poll_s=0.005)
    failover_s = time.monotonic() - killed_at
    new_leader = current_leader(client, keys)
    say(
        f"   {new_leader[0] if new_leader else '?'} took over: jobs flowing again "
        f"{failover_s:.2f} s after the kill"
    )
    victim.start()
    say(f"   {leader_name} restarted")

    _wait("two thirds acknowledged", lambda: acked() >= 2 * len(mix) // 3, 60.0)
    etcd_leader = members.wait_for_leader(10.0)
    members.kill(etcd_leader)
    say(f"4. SIGKILL etcd member {etcd_leader} (the etcd leader)")
    members.wait_for_leader(15.0, other_than=etcd_leader)
    members.restart(etcd_leader)
    members.wait_ready(30.0)
    say(f"   a new etcd leader was elected; member {etcd_leader} restarted and rejoined")

    for producer in producers:
        producer.join(DEADLINE_S)
        if producer.failure:
            raise DemoFailed(f"{producer.name}: {producer.failure}")
    ids = {job_id: kind for producer in producers for job_id, kind in producer.acked.items()}
    say(
        f"   all {len(ids)} jobs acknowledged ({sum(p.retries for p in producers)} "
        "batches sent again after an unknown outcome or a leader change)"
    )

    def finished() -> bool:
        status = _status(client)
        return (
            status is not None
            and status["total"] >= len(ids)
            and not any(status[state] for state in ("pending", "delayed", "in_flight"))
        )

    _wait("every job finished", finished, DEADLINE_S, poll_s=0.2)
    for node in nodes:
        node.terminate()
    report = audit(urls, CLUSTER, ids)
    say("5. accounting, from the log in etcd:")
    for line in report.lines():
        say(f"   {line}")
    by_kind: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    wrong = []
    expected = {kind.name: kind.expected for kind in KINDS}
    for job_id, kind in ids.items():
        job = report.state.jobs.get(job_id)
        status = "absent" if job is None else job.status.value
        by_kind[kind][status] += 1
        if status != expected[kind]:
            wrong.append(f"{job_id} ({kind}) is {status}")
    say(
        "   per kind: "
        + ", ".join(
            f"{kind.name} {by_kind[kind.name][kind.expected]}/{sum(by_kind[kind.name].values())} "
            f"{kind.expected}"
            for kind in KINDS
        )
    )
    for problem in wrong[:5]:
        say(f"   unexpected: {problem}")
    ok = report.ok and not wrong
    say(f"failover {failover_s:.2f} s; {'every check holds' if ok else 'A CHECK FAILED'}")
    client.close()
    return 0 if ok else 1
