"""Partial snapshots in etcd (impl/cluster/snapshots.py, snapshot_loop.py), on a real etcd.

The promises: a checkpoint read back from etcd is the state it was written from; a
new checkpoint rewrites only the buckets whose jobs changed; after compaction a
fresh node, or a follower whose watch fell behind the compaction, still reaches the
leader's state through checkpoint + tail; a torn or corrupt checkpoint is refused
loudly and the previous one (or the whole log) is used; a full etcd quota stops the
leader with a message naming it, and loses no acknowledged job.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from strategies import histories

from beaverq.impl.cluster.etcd_client import EtcdClient, LeaderKey
from beaverq.impl.cluster.etcd_log import ClusterKeys, EtcdLog, LogCorrupt
from beaverq.impl.cluster.etcd_members import EtcdMembers
from beaverq.impl.cluster.follower import LogFollower
from beaverq.impl.cluster.membership import NodeInfo
from beaverq.impl.cluster.node import ClusterNode, NodeOptions
from beaverq.impl.cluster.snapshot_loop import LeaderSnapshots, compact_log
from beaverq.impl.cluster.snapshots import (
    CheckpointSource,
    CheckpointWriter,
    SnapshotCorrupt,
    SnapshotRefused,
    SnapshotUnusable,
    decode_manifest,
    encode_manifest,
    load_checkpoint,
    manifest_key,
    parts_prefix,
    read_checkpoint,
)
from beaverq.impl.runtime.handlers import HandlerRegistry
from beaverq.model import Enqueue, Event, Lease, State, decide, evolve, initial_state

pytestmark = pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd is not installed")


@contextlib.contextmanager
def etcd_member(base_dir: Path, *, quota_bytes: int = 0) -> Iterator[str]:
    """One member (etcd_members.py), ready; its client URL."""
    quota = {"quota_backend_bytes": quota_bytes} if quota_bytes else {}
    with EtcdMembers.start(1, base_dir, **quota) as members:  # type: ignore[arg-type]
        members.wait_ready(30.0)
        yield members.client_urls[0]


@pytest.fixture(scope="module")
def etcd_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with etcd_member(tmp_path_factory.mktemp("etcd")) as url:
        yield url


@pytest.fixture
def client(etcd_url: str) -> Iterator[EtcdClient]:
    with EtcdClient([etcd_url]) as etcd:
        yield etcd


def fresh_keys() -> ClusterKeys:
    return ClusterKeys(f"t{uuid.uuid4().hex[:10]}")


def run_commands(state: State, commands: list[object]) -> tuple[State, list[Event]]:
    events: list[Event] = []
    for command in commands:
        for event in decide(state, command):  # type: ignore[arg-type]
            state = evolve(state, event)
            events.append(event)
    return state, events


def enqueue(
    state: State, count: int, start: int = 0, now_ms: int = 1000
) -> tuple[State, list[Event]]:
    return run_commands(
        state,
        [
            Enqueue(now_ms=now_ms, handler="noop", job_id=f"job{i:06d}")
            for i in range(start, start + count)
        ],
    )


def lease(state: State, count: int, now_ms: int = 2000) -> tuple[State, list[Event]]:
    return run_commands(state, [Lease(now_ms=now_ms, worker_id="n1/w0") for _ in range(count)])


def win(client: EtcdClient, keys: ClusterKeys) -> LeaderKey:
    lease_id = client.lease_grant(30)
    return client.campaign(keys.election, lease_id, b"test", timeout_s=5)


def append(log: EtcdLog, leader: LeaderKey, events: list[Event], per_entry: int = 200) -> None:
    for start in range(0, len(events), per_entry):
        log.append(events[start : start + per_entry], leader=leader, timeout_s=5)


def part_count(client: EtcdClient, keys: ClusterKeys) -> int:
    prefix = parts_prefix(keys)
    return client.count(prefix, prefix + b"\xff")


# -- round trip --------------------------------------------------------------------------


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(histories(max_commands=25))
def test_a_checkpoint_read_back_from_etcd_is_the_state(client, history):
    """Goal: read_checkpoint(write(s)) == s on reachable states (every status, timers,
    paused queues, idempotency keys).  Method: Hypothesis histories, few examples
    (each costs a few etcd round trips)."""
    _events, states = history
    state = states[-1]
    keys = fresh_keys()
    CheckpointWriter(client, keys).write(state, at_ms=123)
    loaded = read_checkpoint(client, keys)
    assert loaded is not None
    assert loaded.state == state
    assert loaded.manifest.at_ms == 123


def test_only_dirty_buckets_are_rewritten_and_stale_parts_go(client):
    """Goal: a checkpoint after one job changed rewrites one bucket (plus the rest
    and the manifest); a new writer (a new leader, no state in memory) finds the
    unchanged buckets by crc; the parts no manifest names are deleted."""
    keys = fresh_keys()
    state, _ = enqueue(initial_state(), 5000)
    writer = CheckpointWriter(client, keys)
    first = writer.write(state, at_ms=1)
    assert first.buckets_total == 8 and first.buckets_written == 8
    state, _ = lease(state, 1)
    second = writer.write(state, at_ms=2)
    assert (second.buckets_written, second.puts) == (1, 3)  # 1 bucket, rest, manifest
    state, _ = enqueue(state, 1, start=9000)
    third = CheckpointWriter(client, keys).write(state, at_ms=3)
    assert third.buckets_written == 1
    loaded = read_checkpoint(client, keys)
    assert loaded is not None and loaded.state == state
    assert part_count(client, keys) == len(loaded.manifest.part_keys())


def test_a_deposed_leader_writes_no_checkpoint(client):
    """Goal: every txn of a checkpoint write is fenced by the epoch; a writer whose
    election key is gone is refused and the manifest stays its successor's."""
    keys = fresh_keys()
    state, _ = enqueue(initial_state(), 100)
    old = win(client, keys)
    client.lease_revoke(old.lease)
    new = win(client, keys)
    CheckpointWriter(client, keys).write(state, at_ms=1, leader=new)
    later, _ = lease(state, 1)
    with pytest.raises(SnapshotRefused, match="leadership"):
        CheckpointWriter(client, keys).write(later, at_ms=2, leader=old)
    loaded = read_checkpoint(client, keys)
    assert loaded is not None and loaded.state == state


def test_a_big_bucket_is_cut_into_parts_under_the_value_limit(client, monkeypatch):
    """Goal: no etcd value exceeds VALUE_BYTES_MAX; a bucket over it is cut.  Method:
    shrink the limit so a 2,000-job bucket must be cut."""
    from beaverq.impl.cluster import snapshots

    monkeypatch.setattr(snapshots, "VALUE_BYTES_MAX", 8 * 1024)
    monkeypatch.setattr(snapshots, "JOBS_PER_BUCKET", 4096)
    keys = fresh_keys()
    state, _ = enqueue(initial_state(), 2000)
    CheckpointWriter(client, keys).write(state, at_ms=1)
    loaded = read_checkpoint(client, keys)
    assert loaded is not None and loaded.state == state
    assert len(loaded.manifest.buckets) == 1 and len(loaded.manifest.buckets[0].parts) > 1
    values = client.range(parts_prefix(keys), parts_prefix(keys) + b"\xff").kvs
    assert max(len(kv.value) for kv in values) <= 8 * 1024


# -- compaction and restarts --------------------------------------------------------------


def checkpointed_log(
    client: EtcdClient, keys: ClusterKeys
) -> tuple[State, LeaderSnapshots, EtcdLog]:
    """A log of 3 rounds (enqueue, lease), a checkpoint after each; the last compacts."""
    log = EtcdLog(client, keys)
    leader = win(client, keys)
    snapshots = LeaderSnapshots(client, keys, leader)
    state = initial_state()
    for round_number in range(3):
        state, events = enqueue(state, 1000, start=round_number * 1000)
        state, more = lease(state, 300)
        append(log, leader, events + more)
        snapshots.checkpoint(state, at_ms=2000)
    return state, snapshots, log


def test_compaction_deletes_the_prefix_and_a_fresh_follower_restores(client):
    """Goal: after checkpoints, the log before the previous checkpoint is deleted
    (one delete-range), ``compacted`` says where, etcd's history is compacted; a
    fresh follower reaches the same state from checkpoint + tail, and one without a
    checkpoint refuses the gap loudly."""
    keys = fresh_keys()
    state, snapshots, log = checkpointed_log(client, keys)
    (done,) = snapshots.compactions[-1:]
    assert done.upto_lsn == 2600 and done.mvcc_revision > 0
    assert int(client.get(keys.compacted).value) == 2600  # type: ignore[union-attr]
    first = next(log.entries_after(0))
    assert first.first_lsn <= 2601 < first.first_lsn + len(first.events)
    source = CheckpointSource(client, keys)
    follower = LogFollower(log, restore=source.restore_if_behind)
    assert follower.catch_up() == state.last_lsn
    assert follower.state == state and source.loads == 1
    assert follower.last_at_ms == 2000
    with pytest.raises(LogCorrupt, match="gap"):
        LogFollower(log).catch_up()


def test_compaction_never_passes_a_live_nodes_snapmark(client):
    """Goal: W = min(checkpoint, every live node's snapmark); a live node with no
    snapmark yet holds compaction off."""
    keys = fresh_keys()
    _state, _snapshots, _log = checkpointed_log(client, keys)
    lease_id = client.lease_grant(30)
    client.put(keys.node_key("slow"), NodeInfo("slow", "http://x", 1).encode(), lease=lease_id)
    assert compact_log(client, keys, 3900, 0) is None  # "slow" has not said where it is
    client.put(keys.snapmark_key("slow"), b"2700", lease=lease_id)
    done = compact_log(client, keys, 3900, 0)
    assert done is not None and done.upto_lsn == 2700
    client.lease_revoke(lease_id)


def test_a_watch_across_a_compaction_recovers_from_the_checkpoint(client):
    """Goal: a follower whose watch starts at a revision etcd has compacted, and whose
    position is below ``compacted``, reloads the checkpoint and goes on."""
    keys = fresh_keys()
    log = EtcdLog(client, keys)
    leader = win(client, keys)
    state, events = enqueue(initial_state(), 100)
    append(log, leader, events)
    source = CheckpointSource(client, keys)
    follower = LogFollower(log, restore=source.restore_if_behind)
    follower.catch_up()  # at LSN 100, its watch revision now stale
    snapshots = LeaderSnapshots(client, keys, leader)
    for round_number in range(1, 4):
        state, events = enqueue(state, 1000, start=round_number * 1000)
        append(log, leader, events)
        snapshots.checkpoint(state, at_ms=1000)
    assert int(client.get(keys.compacted).value) > 100  # type: ignore[union-attr]
    follower._thread.start()  # the watch alone, from the compacted revision
    try:
        assert follower.wait_for(state.last_lsn, timeout_s=10)
        assert follower.state == state and source.loads == 1
    finally:
        follower.stop()


# -- torn and corrupt checkpoints ----------------------------------------------------------


def two_checkpoints(client: EtcdClient, keys: ClusterKeys) -> tuple[State, State]:
    writer = CheckpointWriter(client, keys)
    first, _ = enqueue(initial_state(), 3000)
    writer.write(first, at_ms=1)
    second, _ = lease(first, 10)
    writer.write(second, at_ms=2)
    return first, second


def test_a_rewritten_part_is_refused_and_the_previous_checkpoint_used(client):
    keys = fresh_keys()
    first, _second = two_checkpoints(client, keys)
    manifest = decode_manifest(client.get(manifest_key(keys)))  # type: ignore[arg-type]
    newest = next(b for b in manifest.buckets if b.lsn == manifest.lsn)
    client.put(newest.parts[0].key, b"not a part")
    with pytest.raises(SnapshotCorrupt, match="rewritten"):
        read_checkpoint(client, keys)
    loaded = load_checkpoint(client, keys)
    assert loaded is not None and loaded.state == first


def test_a_crc_mismatch_is_refused_and_the_previous_checkpoint_used(client):
    keys = fresh_keys()
    _first, second = two_checkpoints(client, keys)
    manifest = decode_manifest(client.get(manifest_key(keys)))  # type: ignore[arg-type]
    bucket = manifest.buckets[0]
    bad_part = attrs.evolve(bucket.parts[0], crc=bucket.parts[0].crc ^ 1)
    bad = attrs.evolve(
        manifest, buckets=(attrs.evolve(bucket, parts=(bad_part,)), *manifest.buckets[1:])
    )
    client.put(manifest_key(keys), encode_manifest(bad))
    with pytest.raises(SnapshotCorrupt, match="crc"):
        read_checkpoint(client, keys)
    loaded = load_checkpoint(client, keys)  # the previous version: the genuine manifest
    assert loaded is not None and loaded.state == second


def test_a_missing_manifest_means_the_full_log_or_a_loud_refusal(client):
    """Goal: no manifest and a whole log: the follower replays it; no manifest and a
    deleted prefix: SnapshotUnusable, never a silent fork."""
    keys = fresh_keys()
    log = EtcdLog(client, keys)
    leader = win(client, keys)
    state, events = enqueue(initial_state(), 2000)
    append(log, leader, events)
    source = CheckpointSource(client, keys)
    follower = LogFollower(log, restore=source.restore_if_behind)
    follower.catch_up()
    assert follower.state == state and source.loads == 0
    client.put(keys.compacted, b"1000")
    with pytest.raises(SnapshotUnusable, match="no checkpoint"):
        LogFollower(log, restore=source.restore_if_behind).catch_up()


# -- the node, wired ------------------------------------------------------------------------


def op(node: ClusterNode, name: str, **params: object) -> dict[str, object]:
    return node.answer_op(json.dumps({"op": name, "params": params}).encode())


def wait_until(predicate, timeout_s: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def node_options(name: str, cluster: str, **extra: object) -> NodeOptions:
    return NodeOptions(node=name, cluster=cluster, workers=1, **extra)  # type: ignore[arg-type]


def test_the_leader_checkpoints_compacts_and_a_new_node_starts_from_it(etcd_url):
    """Goal: wired end to end: the controller's snapshot loop writes checkpoints, the
    log prefix goes, and a node started afterwards loads the checkpoint."""
    cluster = fresh_keys().cluster
    leader = ClusterNode(
        [etcd_url], HandlerRegistry(), node_options("a", cluster, snapshot_every_events=300)
    )
    leader.start()
    other = None
    try:
        assert wait_until(lambda: leader.is_leader, 10)
        for start in range(0, 1500, 100):
            jobs = [{"handler": "noop", "job_id": f"job{i}"} for i in range(start, start + 100)]
            assert op(leader, "enqueue_batch", jobs=jobs)["ok"]
        assert wait_until(lambda: leader.client.get(leader.keys.compacted) is not None, 15)
        other = ClusterNode([etcd_url], HandlerRegistry(), node_options("b", cluster))
        other.start()
        assert other.checkpoints.loads == 1
        controller = leader._controller  # the leader's follower is paused while it leads
        assert controller is not None
        target = controller.state
        assert other.follower.wait_for(target.last_lsn, 10)
        assert other.follower.state.jobs == target.jobs
    finally:
        # The leader first: a waiting campaign ends only when the leader's key goes
        # (revoking the candidate's own lease does not end it in etcd 3.4).
        leader.stop(0)
        if other is not None:
            other.stop(0)


def test_a_full_quota_stops_the_leader_naming_it_and_loses_nothing_acknowledged(tmp_path):
    """Goal: etcd's NOSPACE reaches the operator as a leader failure naming the
    quota; every enqueue that was acknowledged is in the log.  Method: a member with
    a 2 MiB backend quota, filled with 60 KB jobs."""
    with etcd_member(tmp_path / "etcd", quota_bytes=2 * 1024 * 1024) as url:
        cluster = fresh_keys().cluster
        node = ClusterNode([url], HandlerRegistry(), node_options("q", cluster))
        node.start()
        acknowledged: list[str] = []
        try:
            assert wait_until(lambda: node.is_leader, 10)
            controller = node._controller
            # Paused: no worker leases a job, so none has a result to report to the
            # failed leader while the node stops.
            assert op(node, "pause", queue="default")["ok"]
            payload = "x" * 60_000
            for number in range(400):
                job_id = f"big{number}"
                reply = op(
                    node, "enqueue", job={"handler": "noop", "job_id": job_id, "args": payload}
                )
                if not reply["ok"]:
                    break
                acknowledged.append(job_id)
            assert controller is not None and controller.failure is not None
            assert "quota" in str(controller.failure)
        finally:
            node.stop(0)
        with EtcdClient([url]) as etcd:
            follower = LogFollower(EtcdLog(etcd, ClusterKeys(cluster)))
            follower.catch_up()
            assert acknowledged and set(acknowledged) <= set(follower.state.jobs)
