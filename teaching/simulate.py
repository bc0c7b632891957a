"""A deterministic simulation: the pure model, fake workers and a fake clock.

``simulate(seed, jobs)`` plays out a busy stretch of a queue's life against the
pure model alone.  Producers enqueue a mix of jobs (some delayed, some sent twice
under one idempotency key); workers lease them and then succeed, fail, or hang
past their lease; an operator pauses a queue for a while and cancels a few jobs;
now and then the process crashes, its workers' work is lost, and it restarts with
``Recover``.

Nothing here sleeps, starts a thread or reads the wall clock.  A discrete-event
loop jumps a :class:`FakeClock` straight to the next moment at which anything can
happen (an arrival, a worker finishing, a lease expiring, a delay ending), and
every choice is drawn from ``random.Random(seed)``.  Nothing that reaches the
output depends on dict or set iteration order, so the same seed gives the same
output byte for byte, under any ``PYTHONHASHSEED`` and on any machine.

At the end a run checks itself: every job finished within a step budget, the
summary adds up, replaying the recorded log from nothing rebuilds the final state
(and replaying it again changes nothing), and the state invariants of
``beaverq.spec.invariants`` hold.
"""

from __future__ import annotations

import contextlib
import gc
import heapq
import json
import random
from collections import Counter
from collections.abc import Iterator

import attrs

from beaverq.model import (
    Cancel,
    Command,
    Complete,
    Enqueue,
    Event,
    Fail,
    JobEnqueued,
    Lease,
    LeaseGranted,
    PauseQueue,
    Recover,
    Rejected,
    ResumeQueue,
    Tick,
    decide,
    evolve,
    initial_state,
    replay,
)
from beaverq.model.endings import ENDING_EVENT_TYPES, is_retry
from beaverq.model.errors import JOB_FINISHED, STALE_RESULT_RULES, BrokenInvariant
from beaverq.model.timers import timers_peek
from beaverq.spec.invariants import check_all

from .fake_clock import FakeClock
from .simulation_report import SimulationReport, Summary, event_details, log_line, seconds
from .simulation_workload import (
    BACKOFF_BASE_MS,
    BACKOFF_CAP_MS,
    CANCEL_AFTER_MS_MAX,
    CANCELLED_PERCENT,
    CRASHES_MAX,
    DELAY_MS_MAX,
    DELAY_MS_MIN,
    DELAYED_PERCENT,
    DOWNTIME_MS_MAX,
    DOWNTIME_MS_MIN,
    DUPLICATE_AFTER_MS_MAX,
    DUPLICATED_PERCENT,
    HANG_OVERRUN_MS_MAX,
    JOB_KINDS,
    JOBS_PER_CRASH,
    KEYED_PERCENT,
    KIND_BY_HANDLER,
    OFFERED_LOAD_PERCENT,
    PAUSE_MS_MAX,
    PAUSE_MS_MIN,
    PAUSED_QUEUE,
    PRIORITIES,
    WORK_MS_MAX,
    WORK_MS_MIN,
    WORKER_MS_PER_JOB,
    JobKind,
)

# Bounds on a run's size: large enough for a real workout, small enough that a
# typo cannot ask for a run that never ends.
SIMULATION_JOBS_MAX = 100_000
SIMULATION_WORKERS_MAX = 1_000


def step_budget(jobs: int) -> int:
    """The most loop iterations a run of ``jobs`` jobs may take.

    Each iteration consumes at least one happening (an arrival, a result, an
    expiry, a due delay, an operator action, a restart), and a job has a bounded
    number of those: at most four attempts of a few happenings each.  A run that
    needs more is stuck, and the budget turns that into an error instead of a hang.
    """
    return 100 + 50 * jobs


class SimulationFailed(Exception):
    """The run broke a property it checks: stuck, inconsistent, or an invariant broken."""


# -- The scenario: what happens to the queue from outside. ------------------------------


@attrs.frozen
class _Arrive:
    """A producer enqueues job number ``index`` (again, if ``duplicate``)."""

    index: int
    kind: JobKind
    priority: int
    delay_ms: int
    key: str | None
    duplicate: bool = False


@attrs.frozen
class _CancelJob:
    index: int


@attrs.frozen
class _Pause:
    queue: str


@attrs.frozen
class _Resume:
    queue: str


@attrs.frozen
class _Crash:
    downtime_ms: int


_Action = _Arrive | _CancelJob | _Pause | _Resume | _Crash


@attrs.frozen
class _Work:
    """What a busy worker is doing, and how and when it will end."""

    job_id: str
    attempt: int
    outcome: str  # "complete" | "fail" | "hang"
    done_at_ms: int


def simulate(
    seed: int, jobs: int, workers: int = 4, *, check_every_step: bool = False
) -> SimulationReport:
    """Run the scenario drawn from ``seed`` until every job has finished.

    ``check_every_step`` also checks the spec invariants after
    every command, not only at the end: slower, for tests.
    """
    _check_argument("seed", seed, 0, None)
    _check_argument("jobs", jobs, 0, SIMULATION_JOBS_MAX)
    _check_argument("workers", workers, 1, SIMULATION_WORKERS_MAX)
    with _cyclic_gc_paused():
        return _Simulation(seed, jobs, workers, check_every_step).run()


@contextlib.contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Pause Python's cycle collector for the duration of a run.

    The model's values are trees of immutable objects and never form reference
    cycles, so reference counting frees all of them.  The cycle collector would
    only re-scan the ever larger state, again and again: with it on, a run of
    100,000 jobs takes about twice as long.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _check_argument(name: str, value: int, low: int, high: int | None) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"between {low} and {high}"
        raise ValueError(f"{name} must be {bounds}, got {value}")


class _Simulation:
    """The imperative shell around the pure model, for one run."""

    def __init__(self, seed: int, jobs: int, workers: int, check_every_step: bool) -> None:
        self.seed, self.jobs, self.check_every_step = seed, jobs, check_every_step
        self.rng = random.Random(seed)
        self.clock = FakeClock()
        self.state = initial_state()
        self.events: list[Event] = []
        self.log: list[str] = []
        # (due time, sequence number, action): the sequence number keeps equal
        # times in the order they were scheduled and keeps actions from being compared.
        self.agenda: list[tuple[int, int, _Action]] = []
        self.scheduled = 0
        self.arrivals_left = 0
        self.job_ids: dict[int, str] = {}  # arrival index -> job id
        # Insertion order (w1, w2, ...) is the order workers are looked at.
        self.workers: dict[str, _Work | None] = {f"w{n}": None for n in range(1, workers + 1)}
        self.restart_at_ms: int | None = None  # set while the process is down
        self.tally: Counter[str] = Counter()
        self.invariants = "not available"

    # -- The loop. ----------------------------------------------------------------------

    def run(self) -> SimulationReport:
        self._plan()
        budget = step_budget(self.jobs)
        steps = 0
        while not self._all_done():
            steps += 1
            if steps > budget:
                raise SimulationFailed(
                    f"seed {self.seed}: step budget of {budget} exceeded at "
                    f"{seconds(self._now())} with jobs unfinished"
                )
            self.clock.advance_to(self._next_moment())
            self._step()
        return self._finish(steps)

    def _step(self) -> None:
        """Everything that happens at one moment, in a fixed order."""
        if self.restart_at_ms is not None:
            self._restart()
        self._run_due_actions()
        if self.restart_at_ms is not None:
            return  # the process just crashed: nothing else reaches it until it restarts
        self._execute(Tick(now_ms=self._now()))
        self._deliver_due_results()
        self._lease_to_idle_workers()

    def _all_done(self) -> bool:
        counts = self.state.counts
        unfinished = counts.pending + counts.delayed + counts.in_flight
        return self.arrivals_left == 0 and self.restart_at_ms is None and unfinished == 0

    def _next_moment(self) -> int:
        """The earliest time at which something can happen (never before now)."""
        if self.restart_at_ms is not None:
            return self.restart_at_ms
        candidates = [work.done_at_ms for work in self.workers.values() if work is not None]
        if self.agenda:
            candidates.append(self.agenda[0][0])
        if self.state.in_flight:
            candidates.append(min(self.state.in_flight.values()))
        # The timer heap's top entry is always live (the model drops stale ones).
        due = timers_peek(self.state.timers)
        if due is not None:
            candidates.append(due[0])
        if not candidates:
            raise SimulationFailed(f"seed {self.seed}: jobs unfinished but nothing can happen")
        return max(self._now(), min(candidates))

    def _now(self) -> int:
        return self.clock.now_ms()

    # -- Planning: the outside world's schedule, drawn before the run. ---------------------

    def _plan(self) -> None:
        rng = self.rng
        mean_gap_ms = WORKER_MS_PER_JOB * 100 // (len(self.workers) * OFFERED_LOAD_PERCENT)
        at_ms = 0
        for index in range(self.jobs):
            at_ms += rng.randint(0, 2 * mean_gap_ms)
            kind = rng.choice(JOB_KINDS)
            priority = rng.choice(PRIORITIES)
            delayed = rng.randrange(100) < DELAYED_PERCENT
            delay_ms = rng.randint(DELAY_MS_MIN, DELAY_MS_MAX) if delayed else 0
            key = f"order-{index + 1}" if rng.randrange(100) < KEYED_PERCENT else None
            arrival = _Arrive(index, kind, priority, delay_ms, key)
            self._schedule(at_ms, arrival)
            if key is not None and rng.randrange(100) < DUPLICATED_PERCENT:
                duplicate = attrs.evolve(arrival, duplicate=True)
                self._schedule(at_ms + rng.randint(0, DUPLICATE_AFTER_MS_MAX), duplicate)
            if rng.randrange(100) < CANCELLED_PERCENT:
                self._schedule(at_ms + rng.randint(0, CANCEL_AFTER_MS_MAX), _CancelJob(index))
        busy_until_ms = at_ms  # the last arrival
        pause_at_ms = rng.randint(0, busy_until_ms // 3)
        self._schedule(pause_at_ms, _Pause(PAUSED_QUEUE))
        resume_at_ms = pause_at_ms + rng.randint(PAUSE_MS_MIN, PAUSE_MS_MAX)
        self._schedule(resume_at_ms, _Resume(PAUSED_QUEUE))
        crashes = min(CRASHES_MAX, 1 + self.jobs // JOBS_PER_CRASH) if self.jobs else 0
        for _ in range(crashes):
            downtime_ms = rng.randint(DOWNTIME_MS_MIN, DOWNTIME_MS_MAX)
            self._schedule(rng.randint(1, max(1, busy_until_ms)), _Crash(downtime_ms))

    def _schedule(self, at_ms: int, action: _Action) -> None:
        self.scheduled += 1
        heapq.heappush(self.agenda, (at_ms, self.scheduled, action))
        if isinstance(action, _Arrive) and not action.duplicate:
            self.arrivals_left += 1

    def _run_due_actions(self) -> None:
        while self.agenda and self.agenda[0][0] <= self._now() and self.restart_at_ms is None:
            _, _, action = heapq.heappop(self.agenda)
            self._act(action)

    def _act(self, action: _Action) -> None:
        now_ms = self._now()
        match action:
            case _Arrive():
                self._arrive(action)
            case _CancelJob(index=index):
                self._cancel(self.job_ids[index])
            case _Pause(queue=queue):
                self._execute(PauseQueue(now_ms=now_ms, queue=queue))
            case _Resume(queue=queue):
                self._execute(ResumeQueue(now_ms=now_ms, queue=queue))
            case _Crash(downtime_ms=downtime_ms):
                self._crash(downtime_ms)

    def _arrive(self, arrival: _Arrive) -> None:
        kind = arrival.kind
        command = Enqueue(
            now_ms=self._now(),
            handler=kind.handler,
            queue=kind.queue,
            args_json=json.dumps({"n": arrival.index + 1}),
            priority=arrival.priority,
            max_attempts=kind.max_attempts,
            timeout_ms=kind.timeout_ms,
            delay_ms=arrival.delay_ms,
            backoff_base_ms=BACKOFF_BASE_MS,
            backoff_cap_ms=BACKOFF_CAP_MS,
            idempotency_key=arrival.key,
        )
        events = self._execute(command)
        if arrival.duplicate:
            # The same request again: the key makes it a no-op that names the first job.
            if events:
                raise BrokenInvariant(f"duplicate enqueue under {arrival.key} made a new job")
            self.tally["duplicates"] += 1
            first = self.job_ids[arrival.index]
            self._note("Duplicate", f"Enqueue key={arrival.key} is {first} again: no event")
            return
        (enqueued,) = events
        if not (isinstance(enqueued, JobEnqueued)):
            raise BrokenInvariant("broken invariant: isinstance(enqueued, JobEnqueued)")
        self.job_ids[arrival.index] = enqueued.job_id
        self.arrivals_left -= 1

    def _cancel(self, job_id: str) -> None:
        self.tally["cancels"] += 1
        try:
            events = self._execute(Cancel(now_ms=self._now(), job_id=job_id))
        except Rejected as refused:
            # Expected when the job finished first; any other refusal is a bug.
            if refused.rejection.rule != JOB_FINISHED:
                raise
            self._note("CancelRefused", f"{job_id}: {refused.rejection.rule}")
            return
        if not events:
            self._note("CancelNoop", f"{job_id}: already cancelled or cancelling")

    # -- Crash and recovery. -------------------------------------------------------------

    def _crash(self, downtime_ms: int) -> None:
        """The process dies: every worker's work is lost with it.

        The state survives because the model is pure (in the real system it is
        rebuilt from the snapshot and the log, which ``_finish`` checks by replaying
        the whole log).  The leases it shows are now held by nobody.
        """
        self.tally["crashes"] += 1
        lost = [
            f"{name} ({work.job_id} attempt {work.attempt})"
            for name, work in self.workers.items()
            if work is not None
        ]
        for name in self.workers:
            self.workers[name] = None
        self._note("Crash", "work lost: " + (", ".join(lost) if lost else "none"))
        self.restart_at_ms = self._now() + downtime_ms

    def _restart(self) -> None:
        if self.restart_at_ms != self._now():
            raise BrokenInvariant("broken invariant: self.restart_at_ms == self._now()")
        self.restart_at_ms = None
        self._note("Restart", "Recover: leases held by the dead process are abandoned")
        self._execute(Recover(now_ms=self._now()))
        self._check_invariants()

    # -- Workers. ------------------------------------------------------------------------

    def _lease_to_idle_workers(self) -> None:
        idle = [name for name, work in self.workers.items() if work is None]
        self.rng.shuffle(idle)  # so the work spreads over the workers
        for name in idle:
            events = self._execute(Lease(now_ms=self._now(), worker_id=name))
            if not events:
                return  # nothing is ready: the other idle workers find nothing either
            (granted,) = events
            if not (isinstance(granted, LeaseGranted)):
                raise BrokenInvariant("broken invariant: isinstance(granted, LeaseGranted)")
            self.workers[name] = self._draw_work(granted)

    def _draw_work(self, granted: LeaseGranted) -> _Work:
        kind = KIND_BY_HANDLER[self.state.jobs[granted.job_id].spec.handler]
        roll = self.rng.randrange(100)
        if roll < kind.hang_percent:
            outcome = "hang"
            done_at_ms = granted.expires_at_ms + self.rng.randint(1, HANG_OVERRUN_MS_MAX)
        else:
            outcome = "fail" if roll < kind.hang_percent + kind.fail_percent else "complete"
            done_at_ms = self._now() + self.rng.randint(WORK_MS_MIN, WORK_MS_MAX)
        return _Work(granted.job_id, granted.attempt, outcome, done_at_ms)

    def _deliver_due_results(self) -> None:
        for name, work in self.workers.items():
            if work is None or work.done_at_ms > self._now():
                continue
            self.workers[name] = None
            command = self._result_command(work)
            try:
                self._execute(command)
            except Rejected as refused:
                # A hung worker reports after its lease expired and the job moved
                # on: the attempt fence refuses the result.  Anything else is a bug.
                if refused.rejection.rule not in STALE_RESULT_RULES:
                    raise
                self.tally["late_results"] += 1
                self._note(
                    "LateResult",
                    f"{type(command).__name__} {work.job_id} attempt={work.attempt} "
                    f"from {name} refused: {refused.rejection.detail}",
                )

    def _result_command(self, work: _Work) -> Command:
        now_ms = self._now()
        if work.outcome == "fail":
            kind = KIND_BY_HANDLER[self.state.jobs[work.job_id].spec.handler]
            return Fail(
                now_ms=now_ms,
                job_id=work.job_id,
                attempt=work.attempt,
                error=f"{kind.handler}: {self.rng.choice(kind.errors)}",
                jitter_seed=self.rng.getrandbits(64),
            )
        # A hung attempt that finally ends reports success: too late to count.
        return Complete(
            now_ms=now_ms, job_id=work.job_id, attempt=work.attempt, result_json='{"ok": true}'
        )

    # -- Commands, events and the log. -----------------------------------------------------

    def _execute(self, command: Command) -> tuple[Event, ...]:
        """Decide, then fold each event in and record it; what the runtime will do
        with a write to the log in between."""
        events = decide(self.state, command)
        for event in events:
            self.state = evolve(self.state, event)
            self.events.append(event)
            self._count(event)
            self.log.append(self._describe(event))
        if self.check_every_step:
            self._check_invariants()
        return events

    def _count(self, event: Event) -> None:
        self.tally[type(event).__name__] += 1
        # The event records its outcome (model/events.py); no need to ask the state.
        if isinstance(event, ENDING_EVENT_TYPES) and is_retry(event):
            self.tally["retried"] += 1

    def _describe(self, event: Event) -> str:
        """One line for an event just applied."""
        return log_line(event.at_ms, f"#{event.lsn}", type(event).__name__, event_details(event))

    def _note(self, what: str, details: str) -> None:
        """A log line for something that is not an event: no LSN, marked ``--``."""
        self.log.append(log_line(self._now(), "--", what, details))

    # -- The end of the run: its checks and its report. ----------------------------------

    def _check_invariants(self) -> None:
        try:
            check_all(self.state)
        except BrokenInvariant as broken:
            raise SimulationFailed(f"seed {self.seed}: {broken}") from broken
        self.invariants = "hold"

    def _finish(self, steps: int) -> SimulationReport:
        counts = self.state.counts
        finished = counts.completed + counts.dead + counts.cancelled
        enqueued = self.tally["JobEnqueued"]
        if not (enqueued == self.jobs == finished == counts.total):
            raise SimulationFailed(
                f"seed {self.seed}: {self.jobs} jobs asked, {enqueued} enqueued, "
                f"{finished} finished of {counts.total} in the state"
            )
        self._check_replay()
        self._check_invariants()
        summary = Summary(
            enqueued=enqueued,
            duplicates=self.tally["duplicates"],
            completed=counts.completed,
            dead=counts.dead,
            cancelled=counts.cancelled,
            retried=self.tally["retried"],
            leases=self.tally["LeaseGranted"],
            expiries=self.tally["LeaseExpired"],
            abandoned=self.tally["LeaseAbandoned"],
            crashes=self.tally["crashes"],
            late_results=self.tally["late_results"],
            cancels=self.tally["cancels"],
            final_lsn=self.state.last_lsn,
            simulated_ms=self._now(),
            steps=steps,
            invariants=self.invariants,
        )
        return SimulationReport(
            seed=self.seed,
            jobs=self.jobs,
            workers=len(self.workers),
            log=tuple(self.log),
            summary=summary,
            events=tuple(self.events),
            final_state=self.state,
        )

    def _check_replay(self) -> None:
        """Recovery is replay: the log alone must rebuild the state, and replaying
        it over the result again must change nothing (the design's decision 3)."""
        rebuilt = replay(initial_state(), self.events)
        if rebuilt != self.state:
            raise SimulationFailed(f"seed {self.seed}: replaying the log gives another state")
        if replay(rebuilt, self.events) != rebuilt:
            raise SimulationFailed(f"seed {self.seed}: replaying the log twice is not idempotent")
