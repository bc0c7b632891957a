"""Benchmark of durable storage on the real file system.  Not a test.

Measures, in one run on the same disk:

1. the raw fsync rate: append 128 bytes to a file and fsync it, repeatedly;
2. single-producer durable appends: one event appended and flushed (fsynced) at a
   time, each waiting for its own fsync; compared with (1) (goal: >= 90 %);
3. batched durable appends: events framed in batches of ``--batch`` and flushed
   once per batch (what group commit does under load) (goal: >= 200,000 events/s);
4. concurrent durable appends through ``GroupCommit``: producer threads each append
   a batch of events and wait for durability;
5. recovery time of a data directory holding N live jobs in its snapshot plus the
   longest WAL tail the default snapshot policy allows
   (``SNAPSHOT_EVERY_EVENTS_DEFAULT`` events) (goals: < 0.2 s at 100,000 jobs,
   < 2 s at 1,000,000).

Run: ``python benchmarks/bench_storage.py [--write] [--jobs 100000,1000000]``.
Results go to docs/performance.md with ``--write``.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from beaverq.impl.storage.fs import RealFileSystem
from beaverq.impl.storage.group_commit import GroupCommit
from beaverq.impl.storage.storage import SNAPSHOT_EVERY_EVENTS_DEFAULT, Storage
from beaverq.model import Enqueue, Event, State, decide, evolve

SECONDS = 2.0


def enqueue_events(state: State, count: int, start_ms: int = 0) -> tuple[State, list[Event]]:
    events: list[Event] = []
    for index in range(count):
        for event in decide(
            state, Enqueue(now_ms=start_ms + index, handler="noop", args_json=f'{{"n": {index}}}')
        ):
            state = evolve(state, event)
            events.append(event)
    return state, events


def raw_fsync_rate(directory: str) -> float:
    path = os.path.join(directory, "raw")
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    payload = b"x" * 128
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < SECONDS:
        os.write(descriptor, payload)
        os.fsync(descriptor)
        count += 1
    elapsed = time.perf_counter() - started
    os.close(descriptor)
    return count / elapsed


def single_producer_rate(directory: str) -> float:
    storage, state, _ = Storage.open(RealFileSystem(), os.path.join(directory, "single"))
    state, events = enqueue_events(state, 20_000)
    count, started = 0, time.perf_counter()
    for event in events:
        storage.append([event])
        storage.flush()
        count += 1
        if time.perf_counter() - started >= SECONDS:
            break
    elapsed = time.perf_counter() - started
    storage.close()
    return count / elapsed


def batched_rate(directory: str, batch: int, total: int) -> float:
    storage, state, _ = Storage.open(RealFileSystem(), os.path.join(directory, "batched"))
    state, events = enqueue_events(state, total)
    gc.collect()
    started = time.perf_counter()
    for offset in range(0, len(events), batch):
        storage.append(events[offset : offset + batch])
        storage.flush()
    elapsed = time.perf_counter() - started
    storage.close()
    return len(events) / elapsed


def group_commit_rate(directory: str, threads: int, batch: int, total: int) -> tuple[float, float]:
    storage, state, _ = Storage.open(RealFileSystem(), os.path.join(directory, "group"))
    state, events = enqueue_events(state, total)
    chunks = [events[offset : offset + batch] for offset in range(0, len(events), batch)]
    group = GroupCommit(storage, events_max=10_000, delay_s=0.002)
    lock = threading.Lock()
    sizes: list[int] = []
    next_chunk = iter(chunks)

    def produce() -> None:
        while True:
            with lock:  # chunks must be appended in LSN order, as the controller does
                chunk = next(next_chunk, None)
                if chunk is None:
                    return
                lsn = group.append(chunk)
            group.wait_durable(lsn, timeout_s=60)
            sizes.append(len(chunk))

    started = time.perf_counter()
    workers = [threading.Thread(target=produce) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    group.close()
    storage.close()
    return sum(sizes) / elapsed, elapsed


def recovery_seconds(directory: str, jobs: int, tail: int, runs: int = 3) -> tuple[float, float]:
    path = os.path.join(directory, f"recovery-{jobs}")
    storage, state, _ = Storage.open(RealFileSystem(), path)
    state, events = enqueue_events(state, jobs)
    for offset in range(0, len(events), 10_000):
        storage.append(events[offset : offset + 10_000])
        storage.flush()
    storage.take_snapshot(state)
    state, events = enqueue_events(state, tail, start_ms=jobs)
    storage.append(events)
    storage.flush()
    storage.close()
    timings = []
    for _ in range(runs):
        gc.collect()
        started = time.perf_counter()
        reopened, recovered, report = Storage.open(RealFileSystem(), path)
        timings.append(time.perf_counter() - started)
        assert report.records_replayed == tail, report
        assert recovered.last_lsn == state.last_lsn
        reopened.close()
        del recovered
    return statistics.median(timings), max(timings)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", default="100000,1000000")
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--dir", help="where to put the data (default: a temp dir on /tmp)")
    parser.add_argument("--write", action="store_true", help="record in docs/performance.md")
    options = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="beaverq-bench-", dir=options.dir)
    try:
        rows = measure(directory, options)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    text = "\n".join(rows)
    print(text)
    if options.write:
        write_section(text)
    return 0


def measure(directory: str, options: argparse.Namespace) -> list[str]:
    raw = raw_fsync_rate(directory)
    print(f"raw fsync: {raw:,.0f}/s", file=sys.stderr)
    single = single_producer_rate(directory)
    print(f"single producer: {single:,.0f}/s", file=sys.stderr)
    batched = batched_rate(directory, options.batch, 200_000)
    print(f"batched: {batched:,.0f}/s", file=sys.stderr)
    grouped, _ = group_commit_rate(directory, threads=8, batch=100, total=200_000)
    print(f"group commit: {grouped:,.0f}/s", file=sys.stderr)
    rows = [
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, {time.strftime('%Y-%m-%d')}, data on "
        f"`{directory.rsplit('/', 1)[0]}`. Command: `python benchmarks/bench_storage.py --write`.",
        "",
        "| measurement | result | goal |",
        "|---|---:|---|",
        f"| raw fsync rate (128 B append + fsync) | {raw:,.0f}/s | reference |",
        f"| single producer, one fsync per event | {single:,.0f} events/s "
        f"({single / raw:.0%} of raw) | >= 90 % of raw |",
        f"| batched, {options.batch:,} events per fsync | {batched:,.0f} events/s | >= 200,000/s |",
        f"| group commit, 8 threads x 100-event appends | {grouped:,.0f} events/s | |",
    ]
    for jobs in (int(value) for value in options.jobs.split(",")):
        median, worst = recovery_seconds(directory, jobs, SNAPSHOT_EVERY_EVENTS_DEFAULT)
        print(f"recovery {jobs:,}: {median:.3f}s", file=sys.stderr)
        rows.append(
            f"| recovery: {jobs:,} live jobs + {SNAPSHOT_EVERY_EVENTS_DEFAULT:,}-event WAL tail "
            f"| median {median:.3f} s, max {worst:.3f} s (3 runs) | "
            f"{'< 0.2 s' if jobs <= 100_000 else '< 2 s'} |"
        )
    return rows


def write_section(text: str) -> None:
    path = Path(__file__).resolve().parent.parent / "docs" / "performance.md"
    begin, end = "<!-- bench_storage:begin -->", "<!-- bench_storage:end -->"
    current = path.read_text() if path.exists() else "# Performance\n"
    if begin not in current:
        current += f"\n## Durable storage\n\n{begin}\n{end}\n"
    head, _, rest = current.partition(begin)
    _, _, tail = rest.partition(end)
    path.write_text(f"{head}{begin}\n{text}\n{end}{tail}")


if __name__ == "__main__":
    sys.exit(main())
