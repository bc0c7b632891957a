"""One beaverq node of a cluster: follower always, leader when elected.

What a node runs (docs/cluster.md tells it as a story):

* a ``LogFollower``: its own fold of the etcd log, for reads and for taking over;
* a ``Membership``: one etcd lease, the node's registration, and its campaign;
* ``NodeWorkers``: its worker pool, pulling leases from the leader;
* an ``RpcServer``: the same operations as the control socket, over HTTP.

When it wins the election it reads the log to the head and starts the single-node
``Controller`` on that state, with two changes: its log is the etcd log (fenced by
the head and its epoch, log_writer.py) and its clock never runs behind the last
event in the log (``FloorClock``: a new leader's clock may lag the old one's, and
lease expiries must not move backwards).  The controller's failure, or the loss of
the lease, ends the leadership: the controller is halted (its state may hold events
the log refused), and the node campaigns again from its follower's state.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import attrs

from beaverq.impl.frontends.control import OPERATIONS, StateView, answer
from beaverq.impl.runtime import remote_leases
from beaverq.impl.runtime.clock import Clock, SystemClock
from beaverq.impl.runtime.committers import group_commit_factory
from beaverq.impl.runtime.controller import Controller
from beaverq.impl.runtime.errors import ControllerFailed, ControllerStopped
from beaverq.impl.runtime.gc_policy import release_tuning, tune_for_long_lived_state
from beaverq.impl.runtime.handlers import HandlerRegistry
from beaverq.impl.runtime.options import ControllerOptions
from beaverq.impl.runtime.workers import Task, TaskResult, ThreadPool
from beaverq.impl.storage.wal import WalFailed
from beaverq.model.nodes import node_of_worker

from .etcd_client import EtcdClient, EtcdError, LeaderKey
from .etcd_log import ClusterKeys, EtcdLog
from .follower import LogFollower
from .log_writer import APPEND_TIMEOUT_S, EtcdLogWriter
from .membership import Membership, NodeInfo, current_leader, registered_nodes
from .node_workers import LeaderPort, LeaderUnreachable, NodeWorkers, NoWorkers
from .rpc import NotLeader, RpcClient, RpcServer
from .snapshot_loop import LeaderSnapshots, SnapmarkPublisher
from .snapshots import SNAPSHOT_EVERY_EVENTS, SNAPSHOT_INTERVAL_S, CheckpointSource

#: How often the leader looks for departed nodes (their leases to abandon).
DEPARTURES_EVERY_S = 0.5
#: How long ``stop`` waits for the leading thread to step down, and after a failed
#: take-over how long a node waits before it campaigns again.
STOP_JOIN_S = 5.0
TAKE_OVER_RETRY_S = 1.0
#: How long a follower trusts what it found out about the leader.
LEADER_CACHE_S = 0.5
#: How long a follower waits to see its own forwarded change in its fold.
READ_YOUR_WRITE_S = 10.0
#: How long this node waits for the leader's answer (a lease, results, a forwarded
#: command): a live leader answers within its append timeout; one that is paused or cut
#: off never does, and until the call gives up this node's workers pull nothing.
PEER_ANSWER_S = 2 * APPEND_TIMEOUT_S


@attrs.frozen(kw_only=True)
class NodeOptions:
    node: str
    cluster: str = "default"
    rpc_host: str = "127.0.0.1"
    rpc_port: int = 0  # 0: any free port (the registration says which)
    workers: int = 4
    # Tasks a node may hold beyond its workers (leased ahead); how many it really
    # leases ahead is the dispatch window's call (node_workers.py).
    queue_max: int = 600
    group_commit_delay_s: float = 0.002
    # The leader's checkpoints into etcd (snapshots.py): they bound the log in etcd.
    snapshot_every_events: int = SNAPSHOT_EVERY_EVENTS
    snapshot_interval_s: float = SNAPSHOT_INTERVAL_S
    # For fault tests (tests/test_cluster_nemesis.py): this node's wall clock reads this
    # many milliseconds ahead (negative: behind).  The model must not care (FloorClock).
    clock_skew_ms: int = 0
    controller: ControllerOptions = attrs.field(factory=ControllerOptions)


class FloorClock:
    """A clock that never reads below ``floor_ms`` (the last event's time in the log)."""

    def __init__(self, inner: Clock, floor_ms: int) -> None:
        self._inner = inner
        self._floor_ms = floor_ms

    def now_ms(self) -> int:
        return max(self._inner.now_ms(), self._floor_ms)

    def monotonic(self) -> float:
        return self._inner.monotonic()


class SkewedClock:
    """A clock ``skew_ms`` off the inner one: a node whose NTP is wrong."""

    def __init__(self, inner: Clock, skew_ms: int) -> None:
        self._inner = inner
        self._skew_ms = skew_ms

    def now_ms(self) -> int:
        return max(0, self._inner.now_ms() + self._skew_ms)

    def monotonic(self) -> float:
        return self._inner.monotonic()


class _LocalLeader:
    """The LeaderPort of the node that leads: straight to its controller.  A controller
    that failed or stopped is, to the workers, a leader that does not answer: they keep
    their results for the next one (node_workers.py)."""

    def __init__(self, node: ClusterNode) -> None:
        self._node = node

    def lease(self, worker_ids: Sequence[str]) -> list[Task]:
        with _unreachable_if_not_leading():
            return self._node.lease(worker_ids)

    def results(self, results: Sequence[TaskResult]) -> None:
        with _unreachable_if_not_leading():
            self._node.record_results(results)

    def abandon_node(self, node: str) -> int:
        with _unreachable_if_not_leading():
            return self._node.abandon_node(node)


@contextlib.contextmanager
def _unreachable_if_not_leading() -> Iterator[None]:
    try:
        yield
    except (NotLeader, ControllerFailed, ControllerStopped, WalFailed) as error:
        raise LeaderUnreachable(f"this node no longer leads: {error}") from error


class ClusterNode:
    def __init__(
        self,
        etcd_urls: Sequence[str],
        registry: HandlerRegistry,
        options: NodeOptions,
        *,
        clock: Clock | None = None,
    ) -> None:
        self.options = options
        self.keys = ClusterKeys(options.cluster)
        self._clock: Clock = clock or SystemClock()
        if options.clock_skew_ms:
            self._clock = SkewedClock(self._clock, options.clock_skew_ms)
        self.client = EtcdClient(etcd_urls)
        self.log = EtcdLog(self.client, self.keys)
        self.checkpoints = CheckpointSource(self.client, self.keys)
        self.follower = LogFollower(self.log, restore=self.checkpoints.restore_if_behind)
        self.rpc = RpcServer(options.rpc_host, options.rpc_port, self)
        self.membership = Membership(
            self.client, self.keys, NodeInfo(options.node, self.rpc.url, options.workers)
        )
        pool = ThreadPool(registry, options.workers, queue_max=options.queue_max)
        self.workers = NodeWorkers(options.node, pool, self._leader_port)
        self._controller: Controller | None = None
        self._lock = threading.Lock()  # guards _controller and the leader's port
        self._stop = threading.Event()
        self._peer: RpcClient | None = None
        self._peer_checked_at = -LEADER_CACHE_S
        self._thread = threading.Thread(target=self._lead, name="beaverq-leading", daemon=True)
        self.snapmarks = SnapmarkPublisher(
            self.client,
            self.keys,
            options.node,
            self.position,
            lambda: self.membership.lease,
        )
        self.snapshots: LeaderSnapshots | None = None  # while leading
        self.leaderships = 0  # times this node became leader
        # The registered nodes, as the leader last read them (_abandon_departed).
        self._alive_nodes: frozenset[str] = frozenset()
        self._tuned = False

    # -- life ---------------------------------------------------------------------------

    def advertise_metrics(self, url: str) -> None:
        """Say in the registration where this node's metrics are (before ``start``)."""
        self.membership.info = attrs.evolve(self.membership.info, metrics_url=url)

    def start(self) -> None:
        self.follower.start()
        # As a runner does (impl/runtime/gc_policy.py): the cyclic collector rescans the
        # whole long-lived state otherwise (docs/performance.md, "Cluster").
        tune_for_long_lived_state()
        self._tuned = True
        self.rpc.start()
        self.membership.join()
        self.snapmarks.start()
        self.workers.start()
        self._thread.start()

    def stop(self, grace_s: float = 10.0) -> None:
        """Workers first (their results reach the leader, maybe this node), then the
        leadership (gracefully, while the epoch still fences its last appends), then the
        lease (registration and election key go with it)."""
        self.workers.stop(grace_s)
        self._stop.set()
        if self._controller is not None:
            self._thread.join(STOP_JOIN_S)  # _lead_once steps down and resigns
        self.membership.leave()  # ends a waiting campaign's rounds, too
        self._thread.join(STOP_JOIN_S)
        self._step_down(graceful=True)  # if the leading thread did not get to it
        self.snapmarks.stop()
        self.rpc.stop()
        self.follower.stop()
        with self._lock:
            peer, self._peer = self._peer, None
        if peer is not None:
            peer.close()
        self.client.close()
        self._release_tuning()

    def kill(self) -> None:
        """For tests in one process: stop as a crash would.  Nothing is said to etcd (the
        lease runs out by itself); no result is sent; the leader's controller halts."""
        self._stop.set()
        self.membership.abandon()
        self.workers.halt()
        with self._lock:
            controller, self._controller = self._controller, None
            snapshots, self.snapshots = self.snapshots, None
        if controller is not None:
            controller.halt()
        if snapshots is not None:
            snapshots.stop()
        self.snapmarks.stop()
        self.rpc.stop()
        self.follower.stop()
        self._release_tuning()

    def _release_tuning(self) -> None:
        if self._tuned:
            self._tuned = False
            release_tuning()

    @property
    def is_leader(self) -> bool:
        return self._controller is not None

    @property
    def controller(self) -> Controller | None:
        """The controller this node leads with, None while it follows."""
        return self._controller

    def position(self) -> int:
        """The last LSN this node's state reflects (its controller's while it leads)."""
        controller = self._controller
        return (controller.state if controller is not None else self.follower.state).last_lsn

    # -- leading --------------------------------------------------------------------------

    def _lead(self) -> None:
        while not self._stop.is_set():
            try:
                self._lead_once()
            except Exception as error:  # never a silent death: the lease would live on
                _warn(f"node {self.options.node}: leading failed ({error}); campaigning again")
                self._stop.wait(TAKE_OVER_RETRY_S)

    def _lead_once(self) -> None:
        """Campaign; when elected, take over and lead until that ends; then resign, so
        that another node may lead while this one gets ready again (a node that keeps
        failing to take over must not keep the election key: nobody else could lead)."""
        try:
            leader_key = self.membership.campaign(timeout_s=3600.0)
        except EtcdError:
            if self.membership.lost.is_set() and not self._stop.is_set():
                self._rejoin()
            self._stop.wait(0.2)
            return
        if self._stop.is_set():
            return
        try:
            self._take_over(leader_key)
        except Exception as error:  # etcd, or a state that fails to load: not leading
            _warn(f"node {self.options.node}: could not take over ({error})")
            self._step_down(graceful=False)
            self._resign(leader_key)
            self._stop.wait(TAKE_OVER_RETRY_S)
            return
        self._serve_as_leader()
        # Stopping: step down gracefully while the epoch still holds (stop() waits for
        # this before it revokes the lease); otherwise the controller failed: halt it.
        self._step_down(graceful=self._stop.is_set())
        self._resign(leader_key)

    def _resign(self, leader_key: LeaderKey) -> None:
        with contextlib.suppress(EtcdError):
            self.client.resign(leader_key)

    def _take_over(self, leader_key: Any) -> None:
        self.follower.catch_up()  # the head as of now: nothing older than our epoch is missing
        state = self.follower.state
        snapshots = LeaderSnapshots(self.client, self.keys, leader_key)
        writer = EtcdLogWriter(
            self.log,
            leader_key,
            state.last_lsn,
            snapshot=lambda durable: snapshots.take(durable, writer.last_at_ms),
            last_at_ms=self.follower.last_at_ms,
        )
        controller = Controller(
            writer,
            state,
            FloorClock(self._clock, self.follower.last_at_ms),
            NoWorkers(),
            options=attrs.evolve(
                self.options.controller,
                runner_id=self.options.node,
                cluster_member=True,
                final_snapshot=False,
                snapshot_every_events=self.options.snapshot_every_events,
                snapshot_interval_s=self.options.snapshot_interval_s,
                # Only dirty buckets are rewritten, so the single-node rule against
                # rewriting every job for a short tail does not apply.
                snapshot_tail_per_job=0.0,
            ),
            committer_factory=group_commit_factory(delay_s=self.options.group_commit_delay_s),
        )
        controller.start()
        self.follower.pause()  # the controller folds every event now (follower.py)
        with self._lock:
            self._controller = controller
            self.snapshots = snapshots
        snapshots.start()  # a checkpoint asked for before this waits for it
        self.leaderships += 1
        self._abandon_departed(controller)

    def _serve_as_leader(self) -> None:
        """Until the controller fails, the lease is lost, or the node stops."""
        while not self._stop.wait(DEPARTURES_EVERY_S):
            controller = self._controller
            if controller is None or controller.failure is not None:
                return
            if self.membership.lost.is_set():
                return
            try:
                self._abandon_departed(controller)
            except EtcdError:
                continue  # etcd busy or a member down: the next round asks again
            except Exception:  # the controller failed under it (an append refused)
                return

    def _abandon_departed(self, controller: Controller) -> None:
        """End the leases of nodes whose registration is gone (their lease expired:
        they died or stalled).  Node-scoped: the live nodes' leases stay live."""
        alive = set(registered_nodes(self.client, self.keys))
        self._alive_nodes = frozenset(alive)
        state = controller.state
        holders = {
            node_of_worker(state.jobs[job_id].history[-1].worker_id) for job_id in state.in_flight
        }
        for node in sorted(node for node in holders if node is not None and node not in alive):
            remote_leases.abandon_node(controller, node)

    def _step_down(self, *, graceful: bool) -> None:
        with self._lock:
            controller, self._controller = self._controller, None
            snapshots, self.snapshots = self.snapshots, None
        if snapshots is not None:
            snapshots.stop()
        if controller is None:
            return
        try:
            if graceful and controller.failure is None:
                with contextlib.suppress(Exception):
                    controller.stop(0.0)
                    return
            controller.halt()
        finally:
            try:
                self.follower.resume()
            except Exception as error:  # the watch loop's next catch-up tries again
                _warn(f"node {self.options.node}: the follower could not resume ({error})")

    def _rejoin(self) -> None:
        """The lease expired under us (a long pause): a new lease, a new registration."""
        self.membership = Membership(self.client, self.keys, self.membership.info)
        try:
            self.membership.join()
        except EtcdError:
            # Not joined (etcd busy or a member cut off): counted as lost, so that the
            # next round of _lead tries again instead of campaigning on no lease forever.
            self.membership.lost.set()

    # -- the calls (rpc.py's RpcTarget, and the LeaderPort of this node's workers) --------

    def _leading(self) -> Controller:
        controller = self._controller
        if controller is None:
            raise NotLeader(f"node {self.options.node} is not the leader")
        return controller

    def lease(self, worker_ids: Sequence[str]) -> list[Task]:
        """Leases for a registered node's workers only: a node whose registration is
        gone (it stalled past its lease) would have them abandoned at the next round,
        each abandonment counting an attempt of a job its workers may be running."""
        controller = self._leading()
        alive = self._alive_nodes
        if any(node_of_worker(worker) not in alive for worker in worker_ids):
            raise NotLeader("the asking node is not registered (its lease expired): rejoin first")
        return remote_leases.lease_tasks(controller, worker_ids)

    def record_results(self, results: Sequence[TaskResult]) -> None:
        remote_leases.record_results(self._leading(), results)

    def abandon_node(self, node: str) -> int:
        return remote_leases.abandon_node(self._leading(), node)

    def answer_op(self, body: bytes) -> dict[str, Any]:
        """An operation from a client: done here if this node leads; else a change is
        forwarded to the leader, and a read answered from this node's fold."""
        # "retry": the refusal is about the cluster (no leader yet, a leader stepping
        # down), not the command: cluster_client.py asks again, with the same identity.
        controller = self._controller
        if controller is not None:
            reply = answer(controller, body)
            reply["lsn"] = controller.state.last_lsn
            if not reply["ok"] and (controller.failure is not None or not self.is_leader):
                reply["retry"] = True
            return self._with_cluster(reply)
        if _is_read(body):
            if self.follower.failure is not None:
                return {
                    "ok": False,
                    "retry": True,
                    "error": f"node {self.options.node} "
                    f"cannot read the log ({self.follower.failure}): ask another node",
                }
            view = StateView(self.follower.state, {"last_lsn": self.follower.state.last_lsn})
            return self._with_cluster(answer(view, body))
        peer = self._peer_client()
        if peer is None:
            return {"ok": False, "retry": True, "error": "no leader is elected yet"}
        try:
            reply = peer.call("/v1/op", body)
        except LeaderUnreachable as error:
            return {"ok": False, "retry": True, "error": f"the leader did not answer ({error})"}
        # Read your writes: a later read on this node sees this change.
        self.follower.wait_for(int(reply.get("lsn", 0)), READ_YOUR_WRITE_S)
        return reply

    def _with_cluster(self, reply: dict[str, Any]) -> dict[str, Any]:
        """A ``status`` answer says which node answered, who leads, and the nodes."""
        result = reply.get("result")
        if not (
            reply.get("ok")
            and isinstance(result, dict)
            and "counts" not in result
            and "queues" in result
        ):
            return reply
        try:
            nodes = registered_nodes(self.client, self.keys)
            leader = current_leader(self.client, self.keys)
        except EtcdError:
            nodes, leader = {}, None
        result["cluster"] = {
            "name": self.options.cluster,
            "answered_by": self.options.node,
            "leader": None if leader is None else leader[0],
            "epoch": None if leader is None else leader[1],
            "nodes": sorted(nodes),
            "workers": sum(info.workers for info in nodes.values()),
        }
        return reply

    def _leader_port(self) -> LeaderPort | None:
        if self._controller is not None:
            return _LocalLeader(self)
        return self._peer_client()

    def _peer_client(self) -> RpcClient | None:
        now = time.monotonic()
        with self._lock:
            if now - self._peer_checked_at < LEADER_CACHE_S:
                return self._peer
        try:
            leader = current_leader(self.client, self.keys)
            if leader is None:
                return None
            info = registered_nodes(self.client, self.keys).get(leader[0])
        except EtcdError:
            return None
        with self._lock:
            self._peer_checked_at = now
            old = self._peer
            if info is None or info.node == self.options.node:
                self._peer = None
            elif old is None or old.url != info.rpc_url:
                self._peer = RpcClient(info.rpc_url, timeout_s=PEER_ANSWER_S)
            if old is not None and old is not self._peer:
                old.close()  # a leader change: its connection pool goes with it
            return self._peer


def _is_read(body: bytes) -> bool:
    try:
        op = json.loads(body).get("op")
    except (ValueError, AttributeError):
        return True  # malformed: answered (refused) locally
    operation = OPERATIONS.get(op) if isinstance(op, str) else None
    return operation is None or operation.command is None


def _warn(message: str) -> None:
    """One line on stderr: the runtime has no logging yet (a node's log is its stderr)."""
    print(f"beaverq: {message}", file=sys.stderr, flush=True)
