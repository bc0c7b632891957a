"""``beaverq demo``: the whole story in under a minute, checked.

1. **Enqueue** a few thousand jobs of mixed kinds into a fresh data directory, in
   batches that share one fsync each (the Python API, in this process).
2. **Run** them in a real runner process (``beaverq run``), watching its Prometheus
   endpoint for a live progress line.
3. **Crash**: SIGKILL the runner part-way, with jobs in flight.
4. **Restart** it and show what recovery did and how long it took (the runner's
   own figures, read from its metrics).
5. **Account** for every job from the log itself: every acknowledged enqueue is in
   the WAL and finished, no job has two completions, each kind ended as it must, the
   history properties of spec/history.py hold over the whole log, and replaying the
   whole log from LSN 1 gives the state the runner left.

Exit status 0 only if every check holds.

Why the demo keeps its own copy of the WAL: snapshots let the runner delete old
segments (storage.py, ``_compact``), and the accounting wants the *whole* log.  So
while the runners work, the demo hard-links every segment file into
``<data dir>/../<name>-wal-archive``: a link keeps the bytes after the runner unlinks
its name, costs no copy, and sees exactly what the runner wrote (segments are
append-only; a torn tail cut at recovery is cut in the same file).  A segment would
have to be created and deleted between two polls (100 ms apart) to be missed, which
takes two snapshots; if it happened anyway, the LSNs of the archive would have a gap
and the demo would say so and fail: it never passes by missing evidence.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from typing import IO, Any

import attrs

from beaverq.impl.runtime.handlers import HandlerContext, JobFailure, handler
from beaverq.model.errors import BrokenInvariant

from .demo_runner import DemoFailed, Runner, WalArchive, scrape

FLAKY = "demo.flaky"
POLL_S = 0.1  # how often the demo scrapes the runner and links new WAL segments
BACKOFF = {"backoff_base_ms": 50, "backoff_cap_ms": 400}


# -- The demo's own handler (the runner registers it with --import beaverq.teaching.demo). -----


@handler(FLAKY)
def flaky(args: Any, context: HandlerContext) -> dict[str, int]:
    """Fails its first attempt, succeeds after: a retry that ends well."""
    if context.attempt < 2:
        raise JobFailure(f"flaky: attempt {context.attempt} fails on purpose")
    return {"succeeded_on_attempt": context.attempt}


# -- The job mix. --------------------------------------------------------------------------


@attrs.frozen
class Kind:
    name: str
    share: float
    expected: str  # the status every job of this kind must end in
    describe: str


KINDS = (
    Kind("noop", 0.70, "completed", "noop"),
    Kind("sleep", 0.10, "completed", "sleep 10-80 ms"),
    Kind("flaky", 0.10, "completed", "fail once, then succeed"),
    Kind("fail", 0.08, "dead", "always fail: 3 attempts, then dead"),
    Kind("timeout", 0.02, "dead", "sleep 5 s with a 0.2 s timeout: 2 attempts, then dead"),
)


def _request(kind: str, rng: random.Random) -> dict[str, Any]:
    if kind == "noop":
        return {"handler": "noop", **BACKOFF}
    if kind == "sleep":
        return {"handler": "sleep", "args": {"seconds": rng.choice((0.01, 0.02, 0.04, 0.08))}}
    if kind == "flaky":
        return {"handler": FLAKY, **BACKOFF}
    if kind == "fail":
        return {"handler": "fail", "args": {"message": "this job always fails"}, **BACKOFF}
    if kind != "timeout":
        raise BrokenInvariant('broken invariant: kind == "timeout"')
    return {
        "handler": "sleep",
        "args": {"seconds": 5.0},
        "timeout_ms": 200,
        "max_attempts": 2,
        **BACKOFF,
    }


def job_mix(count: int, seed: int) -> list[tuple[str, dict[str, Any]]]:
    """``count`` (kind, request) pairs, shuffled, every kind present when count >= 5."""
    rng = random.Random(seed)
    kinds: list[str] = []
    for kind in KINDS[1:]:
        kinds += [kind.name] * max(1, round(count * kind.share))
    kinds = kinds[:count]
    kinds += ["noop"] * (count - len(kinds))
    rng.shuffle(kinds)
    return [(kind, _request(kind, rng)) for kind in kinds]


# -- Output. -------------------------------------------------------------------------------


class Out:
    """Lines to stdout; a live progress line rewritten in place on a terminal, and
    printed at most once a second (as ordinary lines) elsewhere."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._live = stream.isatty()
        self._progress_shown = False
        self._last_progress_at = 0.0

    def line(self, text: str = "") -> None:
        self._end_progress()
        self._stream.write(text + "\n")
        self._stream.flush()

    def progress(self, text: str, *, force: bool = False) -> None:
        if self._live:
            self._stream.write("\r\033[K" + text)
            self._progress_shown = True
        else:
            now = time.monotonic()
            if not force and now - self._last_progress_at < 1.0:
                return
            self._last_progress_at = now
            self._stream.write(text + "\n")
        self._stream.flush()

    def _end_progress(self) -> None:
        if self._progress_shown:
            self._stream.write("\n")
            self._progress_shown = False


# -- Reading the runner's metrics. -------------------------------------------------------


def _count(samples: dict[str, float], state: str) -> int:
    return int(samples.get(f"queue_jobs{{state={state}}}", 0))


def _done(samples: dict[str, float]) -> int:
    return sum(_count(samples, state) for state in ("completed", "dead", "cancelled"))


def _progress_text(run: int, samples: dict[str, float], total: int) -> str:
    done = _done(samples)
    width = 24
    filled = width * done // max(1, total)
    return (
        f"      run {run} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} finished  "
        f"pending {_count(samples, 'pending')}  delayed {_count(samples, 'delayed')}  "
        f"in flight {_count(samples, 'in_flight')}  "
        f"completed {_count(samples, 'completed')}  dead {_count(samples, 'dead')}  "
        f"retried {int(samples.get('queue_jobs_retried_total', 0))} (this run)"
    )


# -- The story. ----------------------------------------------------------------------------


@attrs.define
class Story:
    out: Out
    data_dir: str
    archive: WalArchive
    total: int
    workers: int
    log_dir: str
    deadline: float
    kinds: dict[str, str] = attrs.Factory(dict)  # job id -> kind
    runner: Runner | None = None

    def start_runner(self, number: int) -> tuple[Runner, dict[str, float]]:
        log = os.path.join(self.log_dir, f"runner-{number}.log")
        runner = Runner(self.data_dir, self.workers, log)
        self.runner = runner
        samples = runner.wait_serving(min(self.deadline, time.monotonic() + 30))
        self.archive.sync()
        return runner, samples

    def watch(
        self, runner: Runner, number: int, until: Callable[[dict[str, float]], bool]
    ) -> dict[str, float]:
        """Poll the runner's metrics (and link new WAL segments) until ``until``."""
        while True:
            self.archive.sync()
            samples = scrape(runner.port)
            if samples is not None:
                self.out.progress(_progress_text(number, samples, self.total))
                if until(samples):
                    self.out.progress(_progress_text(number, samples, self.total), force=True)
                    return samples
            if runner.process.poll() is not None:
                raise DemoFailed(f"the runner exited ({runner.process.returncode}) unexpectedly")
            if time.monotonic() > self.deadline:
                raise DemoFailed("the demo ran out of time")
            threading.Event().wait(POLL_S)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="beaverq demo",
        description="Enqueue a few thousand mixed jobs, run them in a real runner, SIGKILL it "
        "part-way, restart it, and prove from the log that nothing was lost and nothing "
        "completed twice. Exit status 0 only if every check holds.",
    )
    parser.add_argument("--jobs", type=int, default=3000, help="jobs to enqueue (default 3000)")
    parser.add_argument("--workers", type=int, default=16, help="runner workers (default 16)")
    parser.add_argument(
        "--data-dir", help="an empty or new folder to use (default: a fresh temporary one)"
    )
    parser.add_argument(
        "--kill-at",
        type=float,
        default=0.4,
        help="SIGKILL the runner once this fraction of the jobs finished (default 0.4)",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the job mix (default 1)")
    parser.add_argument("--keep", action="store_true", help="keep a temporary data dir")
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="give up after this many seconds"
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="the cluster's story instead: 3 etcd members, 3 nodes, the leader node and "
        "an etcd member SIGKILLed (teaching/cluster_demo.py; needs etcd: "
        "'apt-get install etcd-server'); with --jobs, --seed and --dir",
    )
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.jobs < 5:
        parser.error("--jobs must be at least 5 (one of each kind)")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if not 0.0 < args.kill_at < 1.0:
        parser.error("--kill-at must be between 0 and 1")
    return args


def run_demo(argv: Sequence[str] | None = None) -> int:
    """``beaverq demo [options]``: exit status 0 only if every check holds."""
    args = _parse(argv)
    out = Out(sys.stdout)
    if args.data_dir is not None:
        data_dir = os.path.abspath(args.data_dir)
        if os.path.exists(data_dir) and os.listdir(data_dir):
            print(f"beaverq demo: {data_dir} is not empty: the demo needs a fresh folder",
                  file=sys.stderr)  # fmt: skip
            return 1
        work = tempfile.mkdtemp(prefix="beaverq-demo-work-")
        temporary = False
    else:
        work = tempfile.mkdtemp(prefix="beaverq-demo-")
        data_dir = os.path.join(work, "data")
        temporary = True
    archive = WalArchive(data_dir, os.path.join(work, "wal-archive"))
    story = Story(
        out=out,
        data_dir=data_dir,
        archive=archive,
        total=args.jobs,
        workers=args.workers,
        log_dir=work,
        deadline=time.monotonic() + args.timeout,
    )
    started = time.monotonic()
    try:
        ok = _tell(story, args)
    except DemoFailed as failure:
        out.line(f"FAILED: {failure}")
        if story.runner is not None:
            tail = story.runner.log_tail()
            if tail:
                out.line("runner log (last lines):")
                out.line(tail.rstrip())
        ok = False
    finally:
        if story.runner is not None and story.runner.process.poll() is None:
            story.runner.kill()
    out.line(f"total time {time.monotonic() - started:.1f} s")
    if ok and not args.keep:
        # The data dir of a --data-dir run is the caller's; our scratch folder is ours.
        shutil.rmtree(work, ignore_errors=True)
        if not temporary:
            out.line(f"data dir kept: {data_dir}")
    else:
        out.line(f"files kept: data dir {data_dir}; runner logs and WAL archive in {work}")
    return 0 if ok else 1


def _tell(story: Story, args: argparse.Namespace) -> bool:
    from beaverq.impl.runtime.controller import Controller
    from beaverq.impl.runtime.handlers import HandlerRegistry
    from beaverq.impl.runtime.options import ControllerOptions
    from beaverq.impl.runtime.workers import ThreadPool

    out = story.out
    out.line(
        f"beaverq demo: {story.total} jobs, {story.workers} workers, data dir {story.data_dir}"
    )

    # 1. Enqueue, in this process, in durable batches.
    mix = job_mix(story.total, args.seed)
    started = time.monotonic()
    batch_size = 500
    with Controller.open(
        story.data_dir, ThreadPool(HandlerRegistry(), 1), options=ControllerOptions()
    ) as producer:
        for first in range(0, len(mix), batch_size):
            chunk = mix[first : first + batch_size]
            ids = producer.enqueue_batch([request for _kind, request in chunk])
            for (kind, _request), job_id in zip(chunk, ids, strict=True):
                story.kinds[job_id] = kind
            story.archive.sync()
    per_kind = collections.Counter(story.kinds.values())
    batches = -(-len(mix) // batch_size)
    out.line(
        f"[1/5] enqueue: {len(story.kinds)} jobs acknowledged (durable) in "
        f"{time.monotonic() - started:.2f} s, {batches} batches of one fsync each"
    )
    for mixed in KINDS:
        out.line(f"      {per_kind[mixed.name]:>6} {mixed.name:<8} {mixed.describe}")

    # 2. Run until part-way.
    runner, _samples = story.start_runner(1)
    out.line(f"[2/5] run: runner pid {runner.pid}, beaverq run")
    out.line(f"      metrics: http://127.0.0.1:{runner.port}/metrics")
    kill_at = max(1, int(story.total * args.kill_at))
    story.watch(runner, 1, lambda samples: _done(samples) >= kill_at)

    # 3. Crash.
    runner.kill()
    story.archive.sync()
    out.line(f"[3/5] crash: SIGKILL to runner pid {runner.pid} (exit {runner.process.returncode})")

    # 4. Restart: the runner's own recovery figures.
    spawned = time.monotonic()
    runner, samples = story.start_runner(2)
    serving_after = time.monotonic() - spawned
    recovery_s = samples["queue_recovery_duration_seconds"]
    out.line(
        f"[4/5] restart: runner pid {runner.pid} recovered in {recovery_s * 1000:.1f} ms "
        f"(serving {serving_after:.2f} s after spawn, Python start-up included)"
    )
    out.line(
        f"      replayed {int(samples.get('queue_recovery_records_replayed', 0))} WAL records "
        f"after the snapshot, cut {int(samples.get('queue_recovery_bytes_truncated', 0))} bytes "
        f"of torn tail, returned {int(samples.get('queue_recovery_leases_abandoned', 0))} "
        "abandoned leases to the queue"
    )
    recovery_ok = recovery_s < 3.0
    story.watch(runner, 2, lambda s: _done(s) >= story.total and _count(s, "in_flight") == 0)
    code = runner.terminate(30.0)
    story.archive.sync()
    out.line(f"      all finished; runner stopped with SIGTERM, exit {code}")

    # 5. Accounting from the log.
    out.line("[5/5] accounting, from the whole WAL (replayed from LSN 1):")
    account = _account(story)
    for line in account.lines:
        out.line(f"  accounting: {line}")
    checks = {
        "every acknowledged job is in the log and finished": account.nothing_lost,
        "no job completed twice": account.no_double_completion,
        "every job ended as its kind must": account.kinds_ok,
        "history properties hold": account.history_ok,
        "whole-log replay equals the runner's final state": account.replay_ok,
        "recovery under 3 s": recovery_ok,
        "graceful stop exits 0": code == 0,
    }
    failed = [name for name, held in checks.items() if not held]
    verdict = "PASS" if not failed else "FAIL"
    out.line(
        f"summary: {verdict}: {story.total} jobs, 1 SIGKILL, {account.completed} completed, "
        f"{account.dead} dead, 0 lost, 0 completed twice, recovery {recovery_s * 1000:.1f} ms"
        if not failed
        else f"summary: {verdict}: failed checks: {'; '.join(failed)}"
    )
    return not failed


@attrs.define
class Account:
    lines: list[str] = attrs.Factory(list)
    nothing_lost: bool = False
    no_double_completion: bool = False
    kinds_ok: bool = False
    history_ok: bool = False
    replay_ok: bool = False
    abandoned: int = 0
    completed: int = 0
    dead: int = 0


def _account(story: Story) -> Account:
    from beaverq.impl.storage.codec import decode_event
    from beaverq.impl.storage.fs import RealFileSystem
    from beaverq.impl.storage.storage import Storage
    from beaverq.impl.storage.wal_reader import read_wal
    from beaverq.model import (
        JobCompleted,
        JobEnqueued,
        JobStatus,
        LeaseAbandoned,
        evolve,
        initial_state,
    )
    from beaverq.spec.history import check_history

    account = Account()
    lines = account.lines
    contents = read_wal(RealFileSystem(), story.archive.directory, after_lsn=0, after_chain_crc=0)
    events = [decode_event(record.payload) for record in contents.records]
    lsns_ok = [event.lsn for event in events] == list(range(1, len(events) + 1))
    lines.append(
        f"{len(events)} events in {len(contents.segments)} segments, LSN 1..{contents.last_lsn}"
        f", consecutive: {'yes' if lsns_ok else 'NO'}"
    )

    # Replay the whole log.
    state = initial_state()
    for event in events:
        state = evolve(state, event)
    # The runner's final state, as recovery sees it (newest snapshot + WAL tail).
    storage, final, _report = Storage.open(RealFileSystem(), story.data_dir)
    storage.close()

    enqueued = {event.job_id for event in events if isinstance(event, JobEnqueued)}
    acknowledged = set(story.kinds)
    lost = acknowledged - enqueued
    finished = (JobStatus.COMPLETED, JobStatus.DEAD, JobStatus.CANCELLED)
    unfinished = [
        job_id
        for job_id in acknowledged
        if job_id not in final.jobs or final.jobs[job_id].status not in finished
    ]
    statuses = collections.Counter(
        final.jobs[job_id].status.value for job_id in acknowledged if job_id in final.jobs
    )
    account.completed, account.dead = statuses["completed"], statuses["dead"]
    account.nothing_lost = lsns_ok and not lost and not unfinished
    lines.append(
        f"enqueued and acknowledged {len(acknowledged)}; in the log {len(acknowledged - lost)}; "
        f"lost {len(lost)}"
    )
    lines.append(
        f"finished {len(acknowledged) - len(unfinished)}/{len(acknowledged)}: completed "
        f"{statuses['completed']}, dead {statuses['dead']}, cancelled {statuses['cancelled']}; "
        f"unfinished {len(unfinished)}"
    )

    completions = collections.Counter(
        event.job_id for event in events if isinstance(event, JobCompleted)
    )
    twice = [job_id for job_id, n in completions.items() if n > 1]
    once = sum(1 for n in completions.values() if n == 1)
    account.no_double_completion = not twice
    lines.append(
        f"completions recorded: exactly once for {once} jobs, more than once for {len(twice)}"
    )

    abandoned = [event for event in events if isinstance(event, LeaseAbandoned)]
    account.abandoned = len(abandoned)
    retried_after = sum(
        1
        for event in abandoned
        if event.job_id in final.jobs and final.jobs[event.job_id].status in finished
    )
    lines.append(
        f"the SIGKILL left {len(abandoned)} attempts in flight; recovery abandoned them and "
        f"{retried_after} of those jobs have since finished"
    )

    wrong: list[str] = []
    by_kind: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    expected = {kind.name: kind.expected for kind in KINDS}
    for job_id, kind in story.kinds.items():
        job = final.jobs.get(job_id)
        status = "absent" if job is None else job.status.value
        by_kind[kind][status] += 1
        if status != expected[kind]:
            wrong.append(f"{job_id} ({kind}) is {status}")
    account.kinds_ok = not wrong
    parts = [
        f"{kind.name} {by_kind[kind.name][kind.expected]}/{sum(by_kind[kind.name].values())} "
        f"{kind.expected}"
        for kind in KINDS
    ]
    lines.append("per kind: " + ", ".join(parts))
    for problem in wrong[:5]:
        lines.append(f"  unexpected: {problem}")

    try:
        check_history(events)
        account.history_ok = True
        lines.append(
            "history properties (spec/history.py: LSNs, fenced results, at most one "
            "completion per job): all hold"
        )
    except BrokenInvariant as error:
        lines.append(f"history properties BROKEN: {error}")

    same_jobs = {job_id: (job.status, job.attempt) for job_id, job in state.jobs.items()} == {
        job_id: (job.status, job.attempt) for job_id, job in final.jobs.items()
    }
    account.replay_ok = same_jobs and state.last_lsn == final.last_lsn
    lines.append(
        "replaying the whole WAL from LSN 1 gives the runner's final state "
        f"(snapshot + tail, LSN {final.last_lsn}): {'yes' if account.replay_ok else 'NO'}"
    )
    return account


def main() -> int:  # ``python -m beaverq.teaching.demo``
    return run_demo(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
