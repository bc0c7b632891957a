"""Benchmark of partial snapshots in etcd (docs/cluster.md, "Partial snapshots and
compaction", "Measured").

Not a test: it measures and prints.  One etcd member (``EtcdMembers``); ``--jobs``
jobs enqueued through the model and appended to the log in entries of 500 events;
then:

1. a full checkpoint (time, bytes, puts);
2. the dirty-bucket detection after 1 % of the jobs are leased, by identity and by
   crc (the two ways ``CheckpointWriter._dirty`` has), and the checkpoint after it;
3. a checkpoint after only 20 leases;
4. restart: a fresh ``LogFollower`` replaying the whole log, against one that loads
   the checkpoint and reads a 2,000-event tail;
5. compaction (``compact_log``), and a restart after it.

Run: ``python benchmarks/bench_cluster_snapshots.py [--jobs 20000]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from beaverq.impl.cluster.etcd_client import EtcdClient, LeaderKey
from beaverq.impl.cluster.etcd_log import ClusterKeys, EtcdLog
from beaverq.impl.cluster.etcd_members import EtcdMembers
from beaverq.impl.cluster.follower import LogFollower
from beaverq.impl.cluster.snapshot_loop import compact_log
from beaverq.impl.cluster.snapshots import (
    CheckpointSource,
    CheckpointWriter,
    bucket_of,
    read_checkpoint,
)
from beaverq.impl.storage.codec import encode_checkpoint
from beaverq.model import Command, Enqueue, Event, Job, Lease, State, decide, evolve, initial_state
from beaverq.model.checkpoint import checkpoint_of


def run(state: State, commands: list[Command], events: list[Event]) -> State:
    for command in commands:
        for event in decide(state, command):
            state = evolve(state, event)
            events.append(event)
    return state


def append(log: EtcdLog, leader: LeaderKey, events: list[Event]) -> None:
    for start in range(0, len(events), 500):
        log.append(events[start : start + 500], leader=leader, timeout_s=30)


def leases(count: int, now_ms: int) -> list[Command]:
    return [Lease(now_ms=now_ms, worker_id="n1/w0") for _ in range(count)]


def bench(client: EtcdClient, jobs: int) -> None:
    keys = ClusterKeys("bench")
    log = EtcdLog(client, keys)
    leader = client.campaign(keys.election, client.lease_grant(600), b"b", timeout_s=5)
    events: list[Event] = []
    enqueues: list[Command] = [
        Enqueue(now_ms=1000, handler="noop", job_id=f"job{i:07d}", args_json=f'{{"n": {i}}}')
        for i in range(jobs)
    ]
    state = run(initial_state(), enqueues, events)
    append(log, leader, events)
    raw = len(encode_checkpoint(checkpoint_of(state)))
    writer = CheckpointWriter(client, keys)
    full = writer.write(state, 1000, leader)
    print(f"full checkpoint of {jobs} jobs: {full.seconds:.2f} s, {full.bytes_written} bytes")
    print(f"  in {full.puts} puts, {full.buckets_total} buckets (one raw blob: {raw} bytes)")

    more: list[Event] = []
    state = run(state, leases(jobs // 100, 2000), more)
    append(log, leader, more)
    manifest = writer.manifest
    if manifest is None:
        raise SystemExit("no manifest after a checkpoint")
    grouped: list[list[Job]] = [[] for _ in range(manifest.bucket_count)]
    for job in checkpoint_of(state).jobs:
        grouped[bucket_of(job.spec.job_id, manifest.bucket_count)].append(job)
    old = {ref.index: ref for ref in manifest.buckets}
    started = time.perf_counter()
    by_identity = writer._dirty(state, grouped, old)
    identity_s = time.perf_counter() - started
    kept, writer._state = writer._state, None  # no state in memory: the crc path
    started = time.perf_counter()
    by_crc = writer._dirty(state, grouped, old)
    crc_s = time.perf_counter() - started
    writer._state = kept
    print(f"dirty buckets after {jobs // 100} leases: identity {identity_s * 1000:.0f} ms")
    print(f"  ({len(by_identity)} buckets), crc {crc_s * 1000:.0f} ms ({len(by_crc)} buckets)")
    again = writer.write(state, 2000, leader)
    print(f"checkpoint after them: {again.seconds:.2f} s, {again.buckets_written} buckets")
    few: list[Event] = []
    state = run(state, leases(20, 2500), few)
    append(log, leader, few)
    small = writer.write(state, 2500, leader)
    print(f"checkpoint after 20 leases: {small.seconds:.2f} s, {small.buckets_written}")
    print(f"  of {small.buckets_total} buckets, {small.bytes_written} bytes")

    tail: list[Event] = []
    tail_jobs: list[Command] = [
        Enqueue(now_ms=3000, handler="noop", job_id=f"tail{i:06d}") for i in range(2000)
    ]
    state = run(state, tail_jobs, tail)
    append(log, leader, tail)
    started = time.perf_counter()
    LogFollower(log).catch_up()
    replay_s = time.perf_counter() - started
    started = time.perf_counter()
    restored = LogFollower(log, restore=CheckpointSource(client, keys).restore_if_behind)
    restored.catch_up()
    restore_s = time.perf_counter() - started
    if restored.state != state:
        raise SystemExit("the restored state differs")
    started = time.perf_counter()
    read_checkpoint(client, keys)
    load_s = time.perf_counter() - started
    print(f"restart: full replay of {state.last_lsn} events {replay_s:.2f} s; checkpoint")
    print(f"  + 2,000-event tail {restore_s:.2f} s (the load alone {load_s:.2f} s)")
    db_size = client.status().db_size
    started = time.perf_counter()
    done = compact_log(client, keys, small.lsn, writer.previous_revision, leader)
    compact_s = time.perf_counter() - started
    print(f"compaction: {done}, {compact_s:.2f} s; db {db_size / 1e6:.1f} MB before")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    arguments = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as base,
        EtcdMembers.start(1, base) as members,
    ):
        members.wait_ready(30.0)
        with EtcdClient(members.client_urls, timeout_s=30) as client:
            bench(client, arguments.jobs)


if __name__ == "__main__":
    main()
