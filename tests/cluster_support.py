"""A cluster under test for tests/test_cluster_nemesis.py: etcd members, beaverq node
processes and producers, the faults done to them, and the accounting at the end.

Built on the cluster demo's pieces (teaching/cluster_demo.py): ``NodeProcess`` runs a
real ``beaverq run --cluster`` process, ``Producer`` enqueues through the nodes' RPC
with idempotency keys, ``_status`` asks the leader, and the demo's job mix is the
load.  What this adds:

* the same cluster inside network namespaces (``Netns``): the members each in their
  own, the nodes and the producers in the hub.  Every request the test process makes
  to etcd or to a node then goes through ``Cluster.call``, which runs it on the hub's
  thread; a producer thread joins the hub itself before it sends anything;
* the faults, each returning its figures (what was hit, how long the cluster took);
* ``drain_and_audit``: wait (with a deadline) until every acknowledged job has
  finished, stop the nodes, and run the checker (impl/cluster/audit.py) over every
  member; plus the checks the audit does not make (each kind ended as it must; after
  the faults every live node still pulled work).

The node processes import tests/cluster_handlers.py: ``node_env`` puts tests/ on the
PYTHONPATH they inherit.

Every wait polls a condition with a deadline; ``close`` ends every process and
namespace, whatever state the test left them in.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from cluster_handlers import OVERRUN

from beaverq.impl.cluster.audit import LogAudit, audit
from beaverq.impl.cluster.cluster_client import ClusterCommandFailed, execute
from beaverq.impl.cluster.etcd_client import EtcdClient, EtcdError, KeyValue
from beaverq.impl.cluster.etcd_log import ClusterKeys
from beaverq.impl.cluster.etcd_members import EtcdMembers
from beaverq.impl.cluster.membership import current_leader, registered_nodes
from beaverq.impl.cluster.netns import NETNS_RUN_DIR, Netns, _join_namespace
from beaverq.model import LeaseGranted
from beaverq.model.nodes import node_of_worker
from beaverq.teaching.cluster_demo import (
    CLUSTER,
    NodeProcess,
    Producer,
    _head_and_epoch,
    _status,
    _wait,
)
from beaverq.teaching.demo import BACKOFF, KINDS, job_mix
from beaverq.teaching.demo_runner import DEMO_MODULE, DemoFailed

T = TypeVar("T")
KEYS = ClusterKeys(CLUSTER)
#: How each kind of job must end.  An overrun job ends dead when both its leases expire
#: under it, or completed when its late result reaches the leader before the expiry
#: does (the attempt is still the current one: nothing fences it), as it may when a
#: new leader's clock is held at the log's last time (FloorClock).
EXPECTED = {kind.name: {kind.expected} for kind in KINDS} | {"overrun": {"dead", "completed"}}
#: The demo's "timeout" kind sleeps 5 s, which would hold a worker for most of a test,
#: and stops at its deadline, so its failure usually beats the lease's expiry; this one
#: overruns its lease for sure, for 0.6 s (2 attempts, both expired, then dead).
TIMEOUT_JOB = {
    "handler": OVERRUN,
    "args": {"seconds": 0.6},
    "timeout_ms": 250,
    "max_attempts": 2,
    **BACKOFF,
}
#: A fresh etcd cluster is ready in ~2 s; shared CI cores are slower.
READY_S = 30.0
#: An election (etcd's or beaverq's, LEASE_TTL_S = 2) plus a take-over, generously.
FAILOVER_S = 30.0
#: Every acknowledged job finished, after the faults stopped.
DRAIN_S = 120.0
#: How long the leader node stays paused: twice its lease's TTL (LEASE_TTL_S = 2).
PAUSE_S = 4.0
#: The members' copies of the log agree once the restarted ones have caught up.
CONVERGE_S = 30.0


#: The other jobs' timeout.  A lease whose grant was durable but whose answer was lost
#: (the leader died between the two) is held by no worker and ends only by expiring:
#: with the default 30 s, one such lease would hold a test's drain for 30 s.
JOB_TIMEOUT_MS = 8000


def nemesis_mix(count: int, seed: int) -> list[tuple[str, dict[str, Any]]]:
    """The demo's job mix, its timeout kind replaced by overrun jobs (TIMEOUT_JOB), and
    every other job's timeout JOB_TIMEOUT_MS."""
    return [
        ("overrun", dict(TIMEOUT_JOB))
        if kind == "timeout"
        else (kind, {**request, "timeout_ms": JOB_TIMEOUT_MS})
        for kind, request in job_mix(count, seed)
    ]


class HubProducer(Producer):
    """A producer whose sockets are the hub's: its thread joins the hub's namespace
    (``setns`` moves only the calling thread) and it has its own etcd client."""

    def __init__(
        self, netns: Netns, urls: Sequence[str], name: str, jobs: list[tuple[str, Any]]
    ) -> None:
        super().__init__(EtcdClient(urls), name, jobs)
        self._hub = os.path.join(NETNS_RUN_DIR, netns.layout.hub)

    def run(self) -> None:
        try:
            _join_namespace(self._hub)
            super().run()
        except Exception as error:  # the test reads .failure
            self.failure = f"{type(error).__name__}: {error}"
        finally:
            self._client.close()


def node_env() -> dict[str, str]:
    """The environment entries node processes need (tests/ on PYTHONPATH)."""
    here = str(Path(__file__).resolve().parent)
    path = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": here if not path else f"{here}{os.pathsep}{path}"}


def _or_none(function: Callable[..., T]) -> Callable[..., T | None]:
    def call(*args: Any) -> T | None:
        try:
            return function(*args)
        except EtcdError:
            return None

    return call


class LeaderWatch(threading.Thread):
    """Polls the election key (every POLL_S) and keeps the timeline of who led:
    (seconds since the watch began, node, epoch) at each change; (.., None, None)
    while no one leads.  A poll etcd does not answer (a member down) is no news.
    Through ``call``, so it also works from the hub."""

    POLL_S = 0.05

    def __init__(self, ask: Callable[[], tuple[str, int] | None]) -> None:
        super().__init__(name="leader-watch", daemon=True)
        self._ask = ask
        self._halt = threading.Event()
        self._began = time.monotonic()
        self.timeline: list[tuple[float, str | None, int | None]] = []

    def run(self) -> None:
        last: tuple[str, int] | bool | None = False  # False: nothing seen yet
        while not self._halt.wait(self.POLL_S):
            try:
                now = self._ask()
            except Exception:  # etcd not answering, or the namespaces going at the end
                continue
            if now != last:
                at = round(time.monotonic() - self._began, 2)
                self.timeline.append((at, None, None) if now is None else (at, *now))
                last = now

    def stop(self) -> None:
        self._halt.set()
        self.join(5.0)

    def epochs(self) -> list[int]:
        """The epochs in the order they led (an election key, once deleted, never
        comes back: a repeat after a gap with no leader would be a fault)."""
        return [epoch for _at, _node, epoch in self.timeline if epoch is not None]


class Cluster:
    """3 etcd members (in namespaces if ``netns``), beaverq nodes, producers."""

    def __init__(self, base: Path, netns: Netns | None = None) -> None:
        self.base = base
        self.netns = netns
        self.members = EtcdMembers.start(3, base / "etcd", netns=netns)
        self.members.wait_ready(READY_S)
        self.urls = self.members.client_urls
        self.client = EtcdClient(self.urls)
        self.nodes: dict[str, NodeProcess] = {}
        self.producers: list[Producer] = []
        self.figures: dict[str, Any] = {}
        self._partitioned: set[int] = set()
        self.last_report: LogAudit | None = None
        self.probes: dict[str, str] = {}  # job id -> kind, enqueued by probe()
        self.leaders = LeaderWatch(lambda: self.call(current_leader, self.client, KEYS))
        self.leaders.start()

    # -- reaching the cluster (from the hub, when there is one) ---------------------------

    def call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self.netns is None:
            return function(*args, **kwargs)
        return self.netns.call_in_hub(function, *args, **kwargs)

    def leader(self) -> tuple[str, int]:
        """(node, epoch) of the elected leader, waiting for one."""
        ask = _or_none(current_leader)
        found: tuple[str, int] = _wait(
            "a leader", lambda: self.call(ask, self.client, KEYS), FAILOVER_S
        )
        return found

    def registered(self) -> dict[str, Any]:
        return self.call(_or_none(registered_nodes), self.client, KEYS) or {}

    def registration(self, name: str) -> KeyValue | None:
        return self.call(_or_none(self.client.get), KEYS.node_key(name))

    def head(self) -> tuple[int, int]:
        """(head LSN, the leader's epoch)."""
        found: tuple[int, int] = _wait(
            "the log head", lambda: self.call(_head_and_epoch, self.client), FAILOVER_S
        )
        return found

    # -- nodes ------------------------------------------------------------------------------

    def start_node(self, name: str, *extra_args: str) -> NodeProcess:
        """A node process (it finds cluster_handlers.py on PYTHONPATH: ``node_env``)."""
        node = NodeProcess(
            self.urls,
            name,
            self.base,
            extra=("--import", DEMO_MODULE, "--import", "cluster_handlers", *extra_args),
            wrap=None if self.netns is None else self.netns.hub_argv,
        )
        self.nodes[name] = node
        return node

    def start_nodes(self, count: int) -> None:
        for index in range(1, count + 1):
            self.start_node(f"n{index}")
        self.wait_registered()

    def wait_registered(self) -> None:
        """Wait until every node is registered (says which are not, if they never are)."""
        names = set(self.nodes)
        seen: set[str] = set()

        def all_there() -> bool:
            seen.clear()
            seen.update(self.registered())
            return names <= seen

        try:
            _wait(f"nodes {sorted(names)} registered", all_there, READY_S)
        except DemoFailed as error:
            raise AssertionError(f"{error}; unregistered: {sorted(names - seen)}") from error
        self.leader()

    def wait_rejoined(self, name: str, old_lease: int) -> None:
        """Wait until ``name`` is registered under a lease other than ``old_lease``."""

        def rejoined() -> bool:
            now = self.registration(name)
            return now is not None and now.lease != old_lease

        _wait(f"{name} registered anew", rejoined, FAILOVER_S)

    def signal_node(self, name: str, signum: signal.Signals) -> None:
        process = self.nodes[name].process
        assert process is not None
        os.killpg(process.pid, signum)

    # -- load -------------------------------------------------------------------------------

    def produce(self, jobs: list[tuple[str, dict[str, Any]]]) -> None:
        """Producers (one per node, a share each) start enqueueing ``jobs``."""
        names = sorted(self.nodes)
        for index, name in enumerate(names):
            share = jobs[index :: len(names)]
            producer: Producer = (
                Producer(self.client, name, share)
                if self.netns is None
                else HubProducer(self.netns, self.urls, name, share)
            )
            self.producers.append(producer)
            producer.start()

    def acked(self) -> int:
        return sum(len(producer.acked) for producer in self.producers)

    def wait_acked(self, count: int, timeout_s: float = 60.0) -> None:
        _wait(f"{count} jobs acknowledged", lambda: self.acked() >= count, timeout_s)

    def finish_producing(self, timeout_s: float = 90.0) -> dict[str, str]:
        """Wait for every producer; every job acknowledged: job id -> kind."""
        deadline = time.monotonic() + timeout_s
        for producer in self.producers:
            producer.join(max(0.0, deadline - time.monotonic()))
            assert not producer.is_alive(), f"{producer.name} still sending after {timeout_s} s"
            assert producer.failure is None, f"{producer.name}: {producer.failure}"
        acked = {job_id: kind for p in self.producers for job_id, kind in p.acked.items()}
        return acked | self.probes

    def probe(self, timeout_s: float = FAILOVER_S) -> float:
        """Enqueue one job through the cluster, as a producer would, and wait for its
        acknowledgement: the cluster takes writes (whatever the load).  The seconds it
        took.  The job joins the acknowledged ones the audit accounts for."""
        started = time.monotonic()
        request = {"jobs": [{"handler": "noop", "timeout_ms": JOB_TIMEOUT_MS}]}
        while True:
            try:
                job_ids = self.call(execute, self.urls, CLUSTER, "enqueue_batch", request)
                break
            except ClusterCommandFailed:
                # Another attempt carries another key: a job stored by the failed one
                # is in the log unacknowledged, which the audit allows.
                if time.monotonic() - started > timeout_s:
                    raise
        self.probes[str(job_ids[0])] = "noop"
        return time.monotonic() - started

    # -- faults -----------------------------------------------------------------------------

    def new_leader(self, epoch: int) -> tuple[str, int]:
        """Wait for a leader of another epoch than ``epoch``."""

        def other() -> tuple[str, int] | None:
            now = self.call(_or_none(current_leader), self.client, KEYS)
            return now if now is not None and now[1] != epoch else None

        found: tuple[str, int] = _wait("a new leader", other, FAILOVER_S, poll_s=0.01)
        return found

    def kill_leader_node(self) -> dict[str, Any]:
        """SIGKILL the leader node; time until another is elected and until a job is
        acknowledged again (the failover); restart it."""
        name, epoch = self.leader()
        registration = self.registration(name)
        assert registration is not None
        self.nodes[name].kill()
        killed_at = time.monotonic()
        successor = self.new_leader(epoch)
        elected_s = time.monotonic() - killed_at
        self.probe()
        failover_s = time.monotonic() - killed_at
        self.nodes[name].start()
        self.wait_rejoined(name, registration.lease)
        return {
            "fault": "kill leader node",
            "victim": name,
            "epoch": epoch,
            "successor": successor,
            "elected_s": round(elected_s, 2),
            "failover_s": round(failover_s, 2),  # until a job is acknowledged again
        }

    def kill_etcd_leader(self) -> dict[str, Any]:
        """SIGKILL the etcd leader; time a new etcd leader; restart the member."""
        victim = self.members.wait_for_leader(FAILOVER_S)
        self.members.kill(victim)
        killed_at = time.monotonic()
        self.members.wait_for_leader(FAILOVER_S, other_than=victim)
        election_s = time.monotonic() - killed_at
        self.probe()
        writes_s = time.monotonic() - killed_at
        self.members.restart(victim)
        self.members.wait_ready(READY_S)
        return {
            "fault": "kill etcd leader",
            "member": victim,
            "election_s": round(election_s, 2),
            "writes_s": round(writes_s, 2),  # until a job is acknowledged again
        }

    def pause_leader_node(self) -> dict[str, Any]:
        """SIGSTOP the leader node until its lease (2 s) is gone, a successor leads and
        a job is acknowledged, and at least PAUSE_S; SIGCONT; wait until the paused
        node has noticed (it rejoins under a new lease: its keep-alive finds the old
        one expired)."""
        name, epoch = self.leader()
        registration = self.registration(name)
        assert registration is not None and registration.lease
        self.signal_node(name, signal.SIGSTOP)
        paused_at = time.monotonic()
        try:
            successor = self.new_leader(epoch)
            took_over_s = time.monotonic() - paused_at
            self.probe()
            writes_s = time.monotonic() - paused_at
            # The fault's length (not a wait for a condition): past the lease, for sure.
            time.sleep(max(0.0, paused_at + PAUSE_S - time.monotonic()))
        finally:
            self.signal_node(name, signal.SIGCONT)
        paused_s = time.monotonic() - paused_at
        self.wait_rejoined(name, registration.lease)
        assert successor[0] != name, f"{name} was paused, yet led epoch {successor[1]}"
        return {
            "fault": "pause leader node",
            "victim": name,
            "epoch": epoch,
            "successor": successor,
            "took_over_s": round(took_over_s, 2),
            "writes_s": round(writes_s, 2),  # until a job is acknowledged again
            "paused_s": round(paused_s, 2),
        }

    def partition_etcd_leader(self) -> dict[str, Any]:
        """Cut the etcd leader's peer link (its clients still reach it); wait until the
        majority elects another and a job is acknowledged; heal."""
        assert self.netns is not None, "a partition needs the members in namespaces"
        victim = self.members.wait_for_leader(FAILOVER_S)
        self.netns.partition_peer(victim)
        self._partitioned.add(victim)
        cut_at = time.monotonic()
        self.members.wait_for_leader(FAILOVER_S, other_than=victim)
        election_s = time.monotonic() - cut_at
        self.probe()
        writes_s = time.monotonic() - cut_at
        self.netns.heal_peer(victim)
        self._partitioned.discard(victim)
        self.members.wait_ready(READY_S)
        return {
            "fault": "partition etcd leader's peer link",
            "member": victim,
            "election_s": round(election_s, 2),
            "writes_s": round(writes_s, 2),  # until a job is acknowledged again
            "cut_s": round(time.monotonic() - cut_at, 2),
        }

    # -- the end ----------------------------------------------------------------------------

    def drain_and_audit(self, ids: dict[str, str], *, after_lsn: int | None = None) -> LogAudit:
        """Wait until every job is finished, stop the nodes, and audit every member.
        With ``after_lsn``, also check that every node still running leased work after
        that point of the log (a node whose workers stopped pulling is a hang)."""
        started = time.monotonic()

        def finished() -> bool:
            status = self.call(_status, self.client)
            return (
                status is not None
                and status["total"] >= len(ids)
                and not any(status[state] for state in ("pending", "delayed", "in_flight"))
            )

        _wait("every job finished", finished, DRAIN_S, poll_s=0.2)
        self.figures["drain_s"] = round(time.monotonic() - started, 2)
        running = {
            name
            for name, node in self.nodes.items()
            if node.process is not None and node.process.poll() is None
        }
        for node in self.nodes.values():  # all at once: a follower's stop takes seconds
            if node.process is not None and node.process.poll() is None:
                node.process.send_signal(signal.SIGTERM)
        stopping = time.monotonic()
        for node in self.nodes.values():
            node.terminate()  # waits for it (SIGKILL after 20 s)
        self.figures["stop_s"] = round(time.monotonic() - stopping, 2)
        report = self.call(audit, self.urls, CLUSTER, ids)
        deadline = time.monotonic() + CONVERGE_S
        while not report.members_identical and time.monotonic() < deadline:
            time.sleep(0.5)  # a restarted member catching up: audit again
            report = self.call(audit, self.urls, CLUSTER, ids)
        self.figures.update(events=report.events, acked=len(ids))
        print()
        for line in report.lines():
            print(f"  {line}")
        print(f"  figures: {self.figures}")
        self.last_report = report
        assert report.ok, "\n".join(report.lines())
        wrong = [
            f"{job_id} ({kind}) is {job.status.value if job else 'absent'}"
            for job_id, kind in ids.items()
            if (job := report.state.jobs.get(job_id)) is None
            or job.status.value not in EXPECTED[kind]
        ]
        assert not wrong, f"{len(wrong)} jobs ended wrongly, e.g. {wrong[:5]}"
        print(f"  who led (s, node, epoch): {self.leaders.timeline}")
        epochs = self.leaders.epochs()
        assert epochs == sorted(set(epochs)), f"an epoch led twice or went back: {epochs}"
        died = [
            f"{node.name}: {line.strip()}"
            for node in self.nodes.values()
            for line in node.log_path.read_text(errors="replace").splitlines()
            if line.startswith("Exception in thread")
        ]
        assert not died, f"a node's thread died (its log): {died}"
        if after_lsn is not None:
            pulled = {
                node_of_worker(event.worker_id)
                for event in report.log
                if isinstance(event, LeaseGranted) and event.lsn > after_lsn
            }
            idle = running - pulled
            assert not idle, f"nodes {sorted(idle)} leased nothing after LSN {after_lsn}"
        return report

    def close(self) -> None:
        """End everything, whatever state it is in (a paused node, a cut link).  Each
        step is on its own: one that fails must not leave the members running (a
        failure here once did, and two etcd processes outlived their test)."""
        with contextlib.suppress(Exception):
            self.leaders.stop()
        for name in self.nodes:
            with contextlib.suppress(Exception):
                self.signal_node(name, signal.SIGCONT)
            with contextlib.suppress(Exception):
                self.nodes[name].kill()
        with contextlib.suppress(Exception):
            self.client.close()
        for index in list(self._partitioned):
            with contextlib.suppress(Exception):
                self.netns.heal_peer(index)  # type: ignore[union-attr]
        self.members.stop()
