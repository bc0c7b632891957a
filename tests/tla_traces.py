"""Runs of the pure model, exported as TLA+ traces for ``tla/BeaverQueueTrace.tla``.

Theory of operation.  ``ModelRun`` drives the pure model (``decide`` + ``evolve``) with
random commands and plays, around it, the parts of the system that the model leaves out
and the TLA+ spec keeps: a write-ahead log split into a synced part and an unsynced
tail, a snapshot, workers that hold leases, and crashes.  The model has no WAL, so the
driver keeps one explicitly, the way the controller would:

* every event ``decide`` returns is appended to the unsynced tail and folded into the
  in-memory state with ``evolve``;
* ``Sync`` moves the tail to the durable log; ``Snapshot`` folds the durable log onto
  the snapshot (``replay``); ``TruncateLog`` drops log records the snapshot covers;
* ``Crash(kept)`` keeps the durable log plus the first ``kept`` records of the tail and
  loses memory and workers; ``Recover`` rebuilds memory with ``replay(snapshot,
  durable log)`` (the LSN guard skips what the snapshot covers) and then runs the
  ``Recover`` command, whose ``LeaseAbandoned`` events end the leases of the dead
  workers.

So a crash is not "everything applied was durable": the durable prefix is modelled
explicitly and the trace records how much of the tail survived.

Each step of a trace names the TLA+ action that should explain it, with its parameters,
the event the model recorded, and the state after the step, projected onto the spec's
variables (``project_table``).  A command the model refuses (or accepts with no events)
becomes a ``Refused`` step, which asks the spec to agree that the matching action is not
enabled.  ``trace_module`` renders many traces as one TLA+ module, so that one TLC run
checks them all.

Every choice of a run comes from one ``Chooser``: a ``random.Random(seed)`` (a failing
trace is reproduced with ``ModelRun(random.Random(seed)).run(commands)``) or Hypothesis's
``data`` through ``DataChooser``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import attrs
from hypothesis import strategies as st

from beaverq.model import (
    Cancel,
    Command,
    Complete,
    DelayElapsed,
    Enqueue,
    Event,
    Fail,
    JobCancelled,
    JobCompleted,
    JobEnqueued,
    JobFailed,
    JobRequeued,
    JobStatus,
    Lease,
    LeaseAbandoned,
    LeaseExpired,
    LeaseGranted,
    LeaseReleased,
    Recover,
    Rejected,
    Release,
    Requeue,
    State,
    Tick,
    decide,
    evolve,
    initial_state,
    limits,
    replay,
)
from beaverq.model.events import CancelRequested

Decide = Callable[[State, Command], tuple[Event, ...]]


class Chooser(Protocol):
    """The randomness a run uses: the subset of ``random.Random`` the driver calls."""

    def random(self) -> float: ...

    def randrange(self, stop: int) -> int: ...

    def choice(self, seq: Sequence[Any]) -> Any: ...


#: Job and worker ids of the runs; the spec is instantiated with exactly these.
JOB_IDS: tuple[str, ...] = ("a", "b", "c")
WORKER_IDS: tuple[str, ...] = ("w1", "w2")
BUDGETS: tuple[int, ...] = (1, 2, 3)

#: Python status -> TLA+ status string (the spec uses the same words).
STATUS_NAMES: dict[JobStatus, str] = {status: status.value for status in JobStatus}

# A Tick that never forgets: the spec leaves retention (JobForgotten) out.
_NEVER_FORGET = {
    "retention_ms": limits.TIME_MS_MAX,
    "finished_jobs_retained_max": limits.JOBS_MAX,
}


# -- TLA+ values. -----------------------------------------------------------------------


@attrs.frozen
class Raw:
    """TLA+ text passed through as it is (a name, an operator application)."""

    text: str


def tla(value: Any) -> str:
    """Render a Python value as a TLA+ expression.

    bool -> TRUE/FALSE, int -> numeral, str -> string, tuple/list -> sequence,
    dict -> record (keys must be identifiers), set/frozenset -> set, Raw -> as is.
    """
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        assert value >= 0, "the spec uses natural numbers only"
        return str(value)
    if isinstance(value, str):
        assert '"' not in value and "\\" not in value, value
        return f'"{value}"'
    if isinstance(value, (tuple, list)):
        return "<<" + ", ".join(tla(item) for item in value) + ">>"
    if isinstance(value, dict):
        assert value, "an empty record is not TLA+"
        return "[" + ", ".join(f"{key} |-> {tla(item)}" for key, item in value.items()) + "]"
    if isinstance(value, (set, frozenset)):
        return "{" + ", ".join(sorted(tla(item) for item in value)) + "}"
    raise TypeError(f"no TLA+ rendering for {value!r}")


# -- Projection of model states onto the spec's variables. --------------------------------


def project_job(state: State, job_id: str) -> tuple[str, int, int, bool, int]:
    """A job as the spec sees it: <<status, attempt, used, cancel, max>> (absent: zeros)."""
    job = state.jobs.get(job_id)
    if job is None:
        return ("absent", 0, 0, False, 0)
    return (
        STATUS_NAMES[job.status],
        job.attempt,
        job.attempts_used,
        job.cancel_requested,
        job.spec.max_attempts,
    )


def project_table(state: State, job_ids: Sequence[str]) -> dict[str, Any]:
    return {job_id: project_job(state, job_id) for job_id in job_ids}


def spec_event(event: Event) -> dict[str, Any]:
    """The log record the spec appends for ``event`` (see EventRecord in the spec)."""
    attempt = getattr(event, "attempt", 0)
    # The recorded decision (model/events.py): JobEnqueued and the ending events.
    recorded = getattr(event, "target", None)
    budget = event.spec.max_attempts if isinstance(event, JobEnqueued) else 0
    return {
        "lsn": event.lsn,
        "type": type(event).__name__,
        "job": event.job_id,  # type: ignore[union-attr]
        "attempt": attempt,
        "target": "none" if recorded is None else recorded.value,
        "max": budget,
    }


def waits_for_backoff(event: Event) -> bool:
    """The ``delayed`` parameter of the spec's JobEnqueued and JobFailed actions."""
    if isinstance(event, JobEnqueued):
        return event.ready_at_ms > event.at_ms
    if isinstance(event, JobFailed):
        return event.retry_at_ms is not None and event.retry_at_ms > event.at_ms
    return False


# -- The driver. --------------------------------------------------------------------------

Lease_ = tuple[str, int]  # (job id, attempt) a worker holds


@attrs.define
class ModelRun:
    """One random run of the model inside a simulated process with a WAL and workers."""

    rng: Chooser
    decide: Decide = decide
    #: Whether recovery runs the ``Recover`` command (a broken variant may skip it).
    abandon_on_recover: bool = True
    job_ids: tuple[str, ...] = JOB_IDS
    worker_ids: tuple[str, ...] = WORKER_IDS
    #: Called on the in-memory state after every step while the process is up, e.g.
    #: ``beaverq.spec.invariants.check_all``: the spec/ predicates, on the same runs.
    check: Callable[[State], None] | None = None

    state: State = attrs.field(init=False, factory=initial_state)
    snapshot: State = attrs.field(init=False, factory=initial_state)
    durable: list[Event] = attrs.field(init=False, factory=list)
    tail: list[Event] = attrs.field(init=False, factory=list)
    held: dict[str, Lease_ | None] = attrs.field(init=False)
    phase: str = attrs.field(init=False, default="up")
    acked: set[str] = attrs.field(init=False, factory=set)
    now_ms: int = attrs.field(init=False, default=0)
    steps: list[dict[str, Any]] = attrs.field(init=False, factory=list)
    #: Indexes (1-based, as in TLA+) of steps where the model was driven off the spec on
    #: purpose; set by broken variants through ``note_deviation``.
    deviations: list[int] = attrs.field(init=False, factory=list)

    def __attrs_post_init__(self) -> None:
        self.held = dict.fromkeys(self.worker_ids)

    # -- Recording. -----------------------------------------------------------------

    def _record(self, action: str, **params: Any) -> None:
        if self.check is not None and self.phase != "down":
            self.check(self.state)
        step: dict[str, Any] = {"act": action}
        step.update(params)
        step.update(
            mem=project_table(self.state, self.job_ids),
            lsn=self.state.last_lsn,
            held={w: (() if lease is None else lease) for w, lease in self.held.items()},
            phase=self.phase,
            dlog=len(self.durable),
            tail=len(self.tail),
            snap=self.snapshot.last_lsn,
            acked=set(self.acked),
        )
        self.steps.append(step)

    def note_deviation(self) -> None:
        """Mark the next recorded step as one the spec should reject."""
        self.deviations.append(len(self.steps) + 1)

    def _refused(self, check: str, job: str = "", worker: str = "") -> None:
        # Refusals change nothing; record one in four, to keep traces short.
        if self.rng.random() < 0.25:
            self._record("Refused", check=check, job=job, worker=worker)

    def _append(self, event: Event, worker: str = "") -> None:
        """Append an event to the tail, fold it in, and record the step it stands for."""
        self.tail.append(event)
        self.state = evolve(self.state, event)
        params: dict[str, Any] = {"event": spec_event(event)}
        job = event.job_id  # type: ignore[union-attr]
        if isinstance(event, JobEnqueued):
            params.update(job=job, delayed=waits_for_backoff(event), budget=event.spec.max_attempts)
        elif isinstance(event, LeaseGranted):
            self.held[event.worker_id] = (job, event.attempt)
            params.update(worker=event.worker_id, job=job)
        elif isinstance(event, (JobCompleted, JobFailed, LeaseReleased)):
            assert worker, event
            self.held[worker] = None
            params.update(worker=worker, delayed=waits_for_backoff(event))
        elif isinstance(event, LeaseAbandoned):
            if not self.state.in_flight:
                self.phase = "up"
            params.update(job=job)
        else:
            assert isinstance(
                event,
                (DelayElapsed, LeaseExpired, CancelRequested, JobCancelled, JobRequeued),
            ), event
            params.update(job=job)
        self._record(type(event).__name__, **params)

    # -- Commands. ------------------------------------------------------------------

    def _decide(self, command: Command) -> tuple[Event, ...] | None:
        try:
            return self.decide(self.state, command)
        except Rejected:
            return None

    def _advance(self, most_ms: int) -> int:
        self.now_ms += self.rng.randrange(most_ms + 1)
        return self.now_ms

    def enqueue(self) -> None:
        # Mostly a job that is not in the state; sometimes one that is (job_id_taken).
        absent = [j for j in self.job_ids if j not in self.state.jobs]
        job = self.rng.choice(absent if absent and self.rng.random() < 0.8 else self.job_ids)
        base = self.rng.choice((0, 1, 10))
        command = Enqueue(
            now_ms=self._advance(5),
            handler="h",
            job_id=job,
            priority=self.rng.choice((0, 0, 1)),
            max_attempts=self.rng.choice(BUDGETS),
            timeout_ms=self.rng.choice((5, 20, 200)),
            delay_ms=self.rng.choice((0, 0, 0, 3, 30)),
            backoff_base_ms=base,
            backoff_cap_ms=base * self.rng.choice((1, 4)),
        )
        events = self._decide(command)
        if events is None:
            self._refused("enqueue", job=job)
            return
        assert len(events) == 1
        self._append(events[0])

    def lease(self) -> None:
        free = [w for w, lease in self.held.items() if lease is None]
        if not free:
            return
        worker = self.rng.choice(free)
        events = self._decide(Lease(now_ms=self._advance(5), worker_id=worker))
        assert events is not None, "a lease with a valid worker id is never refused here"
        if not events:
            self._refused("lease", worker=worker)
            return
        self._append(events[0])

    def report(self) -> None:
        """A busy worker reports a result: a completion or a failure."""
        busy = [(w, lease) for w, lease in self.held.items() if lease is not None]
        if not busy:
            return
        worker, (job, attempt) = self.rng.choice(busy)
        now = self._advance(10)
        command: Command
        if self.rng.random() < 0.5:
            command = Complete(now_ms=now, job_id=job, attempt=attempt)
        else:
            seed = self.rng.randrange(4)
            command = Fail(now_ms=now, job_id=job, attempt=attempt, error="e", jitter_seed=seed)
        stale = self._is_stale(job, attempt)
        events = self._decide(command)
        if events is None:
            # The fence refused a stale result; the worker moves on.
            self.held[worker] = None
            self._record("StaleResultRefused", worker=worker)
            return
        if stale:
            self.note_deviation()
        assert len(events) == 1
        self._append(events[0], worker=worker)

    def release(self) -> None:
        """A busy worker's job is handed back unfinished (a graceful shutdown's end)."""
        busy = [(w, lease) for w, lease in self.held.items() if lease is not None]
        if not busy:
            return
        worker, (job, attempt) = self.rng.choice(busy)
        stale = self._is_stale(job, attempt)
        events = self._decide(Release(now_ms=self._advance(10), job_id=job, attempt=attempt))
        if events is None:
            # The fence refused it: that lease had already ended; the worker moves on.
            self.held[worker] = None
            self._record("StaleResultRefused", worker=worker)
            return
        if stale:
            self.note_deviation()
        assert len(events) == 1
        self._append(events[0], worker=worker)

    def _is_stale(self, job_id: str, attempt: int) -> bool:
        job = self.state.jobs.get(job_id)
        return job is None or job.status is not JobStatus.IN_FLIGHT or job.attempt != attempt

    def tick(self) -> None:
        events = self._decide(Tick(now_ms=self._advance(60), **_NEVER_FORGET))
        assert events is not None
        for event in events:
            self._append(event)

    def cancel(self) -> None:
        job = self.rng.choice(self.job_ids)
        events = self._decide(Cancel(now_ms=self._advance(5), job_id=job))
        if not events:
            self._refused("cancel", job=job)
            return
        self._append(events[0])

    def requeue(self) -> None:
        job = self.rng.choice(self.job_ids)
        events = self._decide(Requeue(now_ms=self._advance(5), job_id=job))
        if not events:
            self._refused("requeue", job=job)
            return
        self._append(events[0])

    # -- The disk, the crash and the restart. ---------------------------------------

    def sync(self) -> None:
        if not self.tail:
            return
        self.acked |= {e.job_id for e in self.tail if isinstance(e, JobEnqueued)}
        self.durable.extend(self.tail)
        self.tail.clear()
        self._record("Sync")

    def take_snapshot(self) -> None:
        if not self.durable or self.durable[-1].lsn <= self.snapshot.last_lsn:
            return
        self.snapshot = replay(self.snapshot, self.durable)
        self._record("Snapshot")

    def truncate_log(self) -> None:
        if not self.durable or self.durable[0].lsn > self.snapshot.last_lsn:
            return
        self.durable = [e for e in self.durable if e.lsn > self.snapshot.last_lsn]
        self._record("TruncateLog")

    def crash_and_recover(self) -> None:
        kept = self.rng.randrange(len(self.tail) + 1)
        self.durable.extend(self.tail[:kept])
        self.tail.clear()
        self.state = initial_state()
        self.held = dict.fromkeys(self.worker_ids)
        self.phase = "down"
        self._record("Crash", kept=kept)
        self.now_ms += self.rng.randrange(100)
        # Recovery, half one: rebuild memory from snapshot + durable log.
        self.state = replay(self.snapshot, self.durable)
        self.phase = "recovering" if self.state.in_flight else "up"
        if not self.abandon_on_recover and self.state.in_flight:
            self.note_deviation()
            self.phase = "up"
        self._record("Recover")
        if not self.abandon_on_recover:
            return
        # Half two: end the leases of the workers that died with the process.
        events = self._decide(Recover(now_ms=self.now_ms))
        assert events is not None
        for event in events:
            self._append(event)
        assert self.phase == "up"

    # -- A run. ---------------------------------------------------------------------

    def run(self, commands: int) -> list[dict[str, Any]]:
        # No AbandonNode move: BeaverQueue.tla has one process and no nodes, and it
        # allows LeaseAbandoned only while recovering from a Crash.  A node's death is
        # for the cluster module to model (docs/tla.md, "What the checks found").
        moves: list[tuple[Callable[[], None], int]] = [
            (self.enqueue, 6),
            (self.lease, 6),
            (self.report, 6),
            (self.release, 1),
            (self.tick, 4),
            (self.cancel, 1),
            (self.requeue, 2),
            (self.sync, 5),
            (self.take_snapshot, 1),
            (self.truncate_log, 1),
            (self.crash_and_recover, 1),
        ]
        # Each move appears as often as its weight: choice() is all a Chooser offers.
        weighted = [move for move, weight in moves for _ in range(weight)]
        for _ in range(commands):
            self.rng.choice(weighted)()
        return self.steps


# -- Broken variants of the model, built here (model/ stays untouched). -----------------


def decide_without_fence(state: State, command: Command) -> tuple[Event, ...]:
    """A ``decide`` that ignores the attempt fence: a result from any lease of an in-flight
    job is taken as the live attempt's result."""
    if isinstance(command, (Complete, Fail, Release)):
        job = state.jobs.get(command.job_id)
        if job is not None and job.status is JobStatus.IN_FLIGHT:
            command = attrs.evolve(command, attempt=job.attempt)
    return decide(state, command)


# -- The TLA+ module. -----------------------------------------------------------------


class DataChooser:
    """A ``Chooser`` that draws every choice from Hypothesis (``st.data()``)."""

    def __init__(self, data: Any) -> None:
        self.data = data

    def random(self) -> float:
        return float(self.data.draw(st.integers(0, 99))) / 100

    def randrange(self, stop: int) -> int:
        return int(self.data.draw(st.integers(0, stop - 1)))

    def choice(self, seq: Sequence[Any]) -> Any:
        return self.data.draw(st.sampled_from(seq))


@attrs.frozen
class Trace:
    origin: str  # "seed 17", or "hypothesis 3"
    steps: list[dict[str, Any]]
    deviations: tuple[int, ...] = ()

    @classmethod
    def of(cls, origin: str, run: ModelRun) -> Trace:
        return cls(origin=origin, steps=list(run.steps), deviations=tuple(run.deviations))


def generate(
    seeds: Iterable[int],
    commands: int,
    make_run: Callable[[Chooser], ModelRun] = ModelRun,
) -> list[Trace]:
    """One seeded run per seed."""
    traces = []
    for seed in seeds:
        run = make_run(random.Random(seed))
        run.run(commands)
        traces.append(Trace.of(f"seed {seed}", run))
    return traces


def trace_module(name: str, traces: Sequence[Trace]) -> str:
    """The data module ``BeaverQueueTrace`` extends: the traces and the ids they use."""
    assert traces
    lines = [
        f"---- MODULE {name} ----",
        "\\* Generated by tests/tla_traces.py; one trace per model run.",
        f"TraceJobs == {tla(set(JOB_IDS))}",
        f"TraceWorkers == {tla(set(WORKER_IDS))}",
        f"TraceBudgets == {tla(set(BUDGETS))}",
        f"TraceOrigins == {tla([trace.origin for trace in traces])}",
        "Traces == <<",
    ]
    for number, trace in enumerate(traces):
        separator = "," if number + 1 < len(traces) else ""
        body = ",\n    ".join(tla(step) for step in trace.steps)
        lines.append(f"  \\* {trace.origin}\n  <<\n    {body}\n  >>{separator}")
    lines += [">>", "===="]
    return "\n".join(lines) + "\n"


def longest(traces: Sequence[Trace]) -> int:
    return max(len(trace.steps) for trace in traces)


def count_steps(traces: Sequence[Trace], action: str) -> int:
    return sum(1 for trace in traces for step in trace.steps if step["act"] == action)


# -- Exhaustive exploration of the model, for comparison with TLC's state space. --------

#: The scope of the comparison: that of tla/BeaverQueue.cfg (a test checks they agree).
COMPARE_JOB_IDS: tuple[str, ...] = ("a", "b")
COMPARE_BUDGETS: tuple[int, ...] = (1, 2)
COMPARE_REQUEUES_MAX = 1
COMPARE_RECOVERS_MAX = 1
COMPARE_RELEASES_MAX = 1
_COMPARE_TIMEOUT_MS = 2  # a lease lasts two ticks, so leases can expire one at a time
_COMPARE_NODES_MAX = 2_000_000

Projection = tuple[tuple[str, int, int, bool, int], ...]


@attrs.frozen
class _Node:
    state: State
    now_ms: int
    requeues: int
    recovers: int
    releases: int


def _node_key(node: _Node, job_ids: Sequence[str]) -> tuple[Any, ...]:
    """Everything about a node that can change what happens next.

    Absolute times and LSNs are left out: the model only compares times with each other
    (deadlines with ``now``) and LSNs with each other (FIFO order), and every new time
    or LSN is larger than all earlier ones.  So the key keeps times relative to ``now``
    and LSNs as an order.
    """
    state, now = node.state, node.now_ms
    jobs = []
    for job_id in job_ids:
        job = state.jobs.get(job_id)
        if job is None:
            jobs.append(("absent",))
            continue
        relative = None
        if job.status is JobStatus.DELAYED:
            relative = job.ready_at_ms - now
        elif job.status is JobStatus.IN_FLIGHT:
            assert job.lease_expires_at_ms is not None
            relative = job.lease_expires_at_ms - now
        jobs.append((*project_job(state, job_id), relative))
    present = [state.jobs[j] for j in job_ids if j in state.jobs]
    pending = tuple(
        job.job_id
        for job in sorted(present, key=lambda job: (-job.spec.priority, job.ready_lsn))
        if job.status is JobStatus.PENDING
    )
    delayed = tuple(
        job.job_id
        for job in sorted(present, key=lambda job: (job.ready_at_ms, job.ready_lsn))
        if job.status is JobStatus.DELAYED
    )
    return (tuple(jobs), pending, delayed, node.requeues, node.recovers, node.releases)


def _compare_commands(node: _Node, job_ids: Sequence[str]) -> list[tuple[Command, int, int, int]]:
    """The commands tried from a node, with the requeues, recoveries and releases each
    one uses.  Not AbandonNode: the spec has no cluster nodes (see ``ModelRun.run``)."""
    now, state = node.now_ms, node.state
    commands: list[tuple[Command, int, int, int]] = [
        (Lease(now_ms=now, worker_id="w"), 0, 0, 0),
        (Tick(now_ms=now + 1, **_NEVER_FORGET), 0, 0, 0),
    ]
    for job_id in job_ids:
        job = state.jobs.get(job_id)
        if job is None:
            for budget in COMPARE_BUDGETS:
                for delay in (0, 1):
                    enqueue = Enqueue(
                        now_ms=now,
                        handler="h",
                        job_id=job_id,
                        max_attempts=budget,
                        timeout_ms=_COMPARE_TIMEOUT_MS,
                        delay_ms=delay,
                        backoff_base_ms=1,
                        backoff_cap_ms=1,
                    )
                    commands.append((enqueue, 0, 0, 0))
            continue
        if job.status is JobStatus.IN_FLIGHT:
            commands.append((Complete(now_ms=now, job_id=job_id, attempt=job.attempt), 0, 0, 0))
            for seed in (0, 1):  # backoff window 1 ms: seed 0 retries at once, 1 waits
                fail = Fail(now_ms=now, job_id=job_id, attempt=job.attempt, error="e")
                commands.append((attrs.evolve(fail, jitter_seed=seed), 0, 0, 0))
            if node.releases < COMPARE_RELEASES_MAX:
                release = Release(now_ms=now, job_id=job_id, attempt=job.attempt)
                commands.append((release, 0, 0, 1))
        commands.append((Cancel(now_ms=now, job_id=job_id), 0, 0, 0))
        if job.status is JobStatus.DEAD and node.requeues < COMPARE_REQUEUES_MAX:
            commands.append((Requeue(now_ms=now, job_id=job_id), 1, 0, 0))
    if node.recovers < COMPARE_RECOVERS_MAX:
        commands.append((Recover(now_ms=now), 0, 1, 0))
    return commands


def reachable_projections(
    job_ids: Sequence[str] = COMPARE_JOB_IDS, decide_: Decide = decide
) -> tuple[set[Projection], int]:
    """Breadth-first search of the model from the empty state; returns the projections
    (per job: status, attempt, used, cancel, max) of every reachable state, and the
    number of distinct nodes explored.

    ``Recover`` stands for a crash after which everything applied was durable: a crash
    that lost the unsynced tail is a recovery from an earlier node, which the search
    also reaches.
    """
    start = _Node(initial_state(), 0, 0, 0, 0)
    seen = {_node_key(start, job_ids)}
    frontier = [start]
    projections: set[Projection] = set()
    while frontier:
        assert len(seen) <= _COMPARE_NODES_MAX, "the comparison scope is too large"
        following: list[_Node] = []
        for node in frontier:
            projections.add(tuple(project_job(node.state, j) for j in job_ids))
            for command, requeues, recovers, releases in _compare_commands(node, job_ids):
                try:
                    events = decide_(node.state, command)
                except Rejected:
                    continue
                state = replay(node.state, events)
                child = _Node(
                    state,
                    command.now_ms,
                    node.requeues + requeues,
                    node.recovers + recovers,
                    node.releases + releases,
                )
                key = _node_key(child, job_ids)
                if key not in seen:
                    seen.add(key)
                    following.append(child)
        frontier = following
    return projections, len(seen)
