"""Benchmark of the pure model: evolve throughput against state size, and replay.

Not a test: it measures, prints a Markdown table and (with ``--write``) records it
in docs/performance.md.  Method:

1. Build a background state of N jobs (half PENDING in a paused queue, half
   COMPLETED and retained), so the maps the workload touches hold N entries.
2. Decide a workload on top of it once: W jobs enqueued, leased, then completed or
   failed-and-retried (4 to 5 events per job), recording the events.
3. Time ``evolve`` alone over those recorded events, starting from the background
   state, best of R runs.  The cost per event at N = 1,000,000 is compared with the
   cost at N = 1,000 (goal: within 1.5x) and the events per second with the goal
   (>= 250,000 events/s).
4. Time ``replay`` of 1,000,000 events from the empty state.

Run: ``python benchmarks/bench_model.py [--sizes 1000,100000,1000000] [--write]``.
"""

from __future__ import annotations

import argparse
import gc
import platform
import sys
import time
from pathlib import Path

from beaverq.model import (
    Complete,
    Enqueue,
    Event,
    Fail,
    Lease,
    PauseQueue,
    State,
    Tick,
    decide,
    evolve,
    initial_state,
    replay,
)

WORKLOAD_JOBS = 20_000
RUNS = 5


def _apply(state: State, command: object, log: list[Event] | None = None) -> State:
    events = decide(state, command)  # type: ignore[arg-type]
    for event in events:
        state = evolve(state, event)
    if log is not None:
        log.extend(events)
    return state


def background_state(jobs: int) -> State:
    """N jobs: half pending in a paused queue, half completed (and retained)."""
    state = _apply(initial_state(), PauseQueue(now_ms=0, queue="parked"))
    for index in range(jobs // 2):
        state = _apply(state, Enqueue(now_ms=1, handler="noop", job_id=f"done-{index}"))
        state = _apply(state, Lease(now_ms=1, worker_id="w"))
        state = _apply(state, Complete(now_ms=2, job_id=f"done-{index}", attempt=1))
    for index in range(jobs - jobs // 2):
        state = _apply(
            state, Enqueue(now_ms=3, handler="noop", queue="parked", job_id=f"parked-{index}")
        )
    return state


def workload_events(state: State, jobs: int) -> list[Event]:
    """Enqueue, lease and finish ``jobs`` jobs; every 10th fails once and is retried."""
    log: list[Event] = []
    now = 10
    for index in range(jobs):
        job_id = f"work-{index}"
        state = _apply(
            state, Enqueue(now_ms=now, handler="noop", job_id=job_id, backoff_base_ms=0), log
        )
        state = _apply(state, Lease(now_ms=now, worker_id="w1"), log)
        if index % 10 == 0:
            state = _apply(state, Fail(now_ms=now, job_id=job_id, attempt=1, error="x"), log)
            state = _apply(state, Lease(now_ms=now, worker_id="w1"), log)
            state = _apply(state, Complete(now_ms=now, job_id=job_id, attempt=2), log)
        else:
            state = _apply(state, Complete(now_ms=now, job_id=job_id, attempt=1), log)
        now += 1
    state = _apply(state, Tick(now_ms=now), log)
    return log


def time_evolve(state: State, events: list[Event]) -> float:
    """Best-of-RUNS seconds to evolve ``state`` through ``events``."""
    best = float("inf")
    for _ in range(RUNS):
        gc.collect()
        started = time.perf_counter()
        current = state
        for event in events:
            current = evolve(current, event)
        best = min(best, time.perf_counter() - started)
    return best


def measure_sizes(sizes: list[int]) -> list[tuple[int, int, float]]:
    rows = []
    for size in sizes:
        state = background_state(size)
        events = workload_events(state, WORKLOAD_JOBS)
        seconds = time_evolve(state, events)
        rows.append((size, len(events), seconds))
        print(
            f"N={size:>9,}: {len(events):,} events in {seconds:.3f} s "
            f"= {len(events) / seconds:,.0f} events/s",
            file=sys.stderr,
        )
    return rows


def measure_replay(events_wanted: int) -> tuple[int, float]:
    state = initial_state()
    events: list[Event] = []
    index = 0
    while len(events) < events_wanted:
        job_id = f"r-{index}"
        state = _apply(state, Enqueue(now_ms=index, handler="noop", job_id=job_id), events)
        state = _apply(state, Lease(now_ms=index, worker_id="w"), events)
        state = _apply(state, Complete(now_ms=index, job_id=job_id, attempt=1), events)
        index += 1
    gc.collect()
    started = time.perf_counter()
    replayed = replay(initial_state(), events)
    seconds = time.perf_counter() - started
    assert replayed == state
    print(f"replay: {len(events):,} events in {seconds:.3f} s", file=sys.stderr)
    return len(events), seconds


def report(rows: list[tuple[int, int, float]], replayed: tuple[int, float]) -> str:
    base_us = rows[0][2] / rows[0][1] * 1e6
    lines = [
        f"Machine: {platform.machine()}, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}. Command: `python benchmarks/bench_model.py --write`.",
        "",
        "| jobs in state | events | evolve events/s | µs per event | vs smallest |",
        "|---:|---:|---:|---:|---:|",
    ]
    for size, count, seconds in rows:
        per_event_us = seconds / count * 1e6
        lines.append(
            f"| {size:,} | {count:,} | {count / seconds:,.0f} | {per_event_us:.2f} | "
            f"{per_event_us / base_us:.2f}x |"
        )
    count, seconds = replayed
    lines += [
        "",
        f"Replay of {count:,} events from the empty state: {seconds:.2f} s "
        f"({count / seconds:,.0f} events/s).",
    ]
    return "\n".join(lines)


def write_section(text: str) -> None:
    path = Path(__file__).resolve().parent.parent / "docs" / "performance.md"
    begin, end = "<!-- bench_model:begin -->", "<!-- bench_model:end -->"
    current = path.read_text() if path.exists() else f"# Performance\n\n{begin}\n{end}\n"
    head, _, rest = current.partition(begin)
    _, _, tail = rest.partition(end)
    path.write_text(f"{head}{begin}\n{text}\n{end}{tail}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,100000,1000000")
    parser.add_argument("--replay-events", type=int, default=1_000_000)
    parser.add_argument("--write", action="store_true", help="record in docs/performance.md")
    options = parser.parse_args()
    rows = measure_sizes([int(size) for size in options.sizes.split(",")])
    text = report(rows, measure_replay(options.replay_events))
    print(text)
    if options.write:
        write_section(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
