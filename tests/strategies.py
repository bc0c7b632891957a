"""Shared Hypothesis strategies: commands, command lists and reachable histories.

Everything here draws from a *tiny alphabet* (three caller job ids, two queues,
four workers of two nodes, two idempotency keys, small times) so that random commands collide:
they name jobs that exist, hit the same queue, reuse a key, and a few milliseconds
of clock are enough to pass a timeout or a backoff.  Wide-range values belong to
the tests that need them (field validation, limits).

The central strategy is :func:`histories`: it drives ``decide`` + ``evolve`` from
``initial_state()`` one command at a time, choosing each command *from the state
reached so far* (a Complete names an in-flight job and, mostly, its live attempt;
a Requeue mostly names a dead job), skips rejected commands, and returns what
the log would hold:

``(events, states)`` with ``len(states) == len(events) + 1``, ``states[0]`` the
initial state and ``states[i]`` the state after ``events[:i]``, so ``states[i]``
is the pre-state of ``events[i]``.

:func:`run` does the same for a fixed list of commands.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

from hypothesis import strategies as st

from beaverq.model import (
    AbandonNode,
    Cancel,
    Command,
    Complete,
    Enqueue,
    Event,
    Fail,
    JobEnqueued,
    JobStatus,
    Lease,
    PauseQueue,
    Recover,
    Rejected,
    Release,
    Requeue,
    ResumeQueue,
    State,
    Tick,
    decide,
    evolve,
    initial_state,
    limits,
)

# -- The alphabet. --------------------------------------------------------------------

JOB_IDS = ("a", "b", "c")  # caller ids; derived ids are "j<lsn>"
QUEUES = ("q1", "q2")
# Workers as the runtime names them (model/nodes.py: "<node>-w<index>"), so that
# AbandonNode finds leases to end, and one id of no node's shape ("w1"), whose lease
# only Recover ends.  NODES adds one that holds no lease ever.
WORKERS = ("n1-w0", "n2-w0", "n1-w1", "w1")
NODES = ("n1", "n2", "n3")
KEYS = ("k1", "k2")
HANDLER = "h"
ARGS = ("null", "[1]", '{"x":2}')
ERRORS = ("boom", "", "é" * 3)
DERIVED_ID = re.compile(r"j[0-9]+")

# Small times: timeouts, delays and backoffs of tens of ms, clock steps that pass them.
# Each tuple is a menu for one choice; repeats weight an entry, the first is the
# value a failing example shrinks to.
TIMEOUTS_MS = (10, 1, 5, 20, 50)
DELAYS_MS = (0, 0, 0, 1, 5, 20, 50)
CAPS_MS = (0, 0, 5, 10, 20, 40)  # 0: a failed job retries at once
BASE_QUARTERS = (0, 1, 2, 4)  # the backoff base as a fraction of the cap
PRIORITIES = (0, -1, 1)
MAX_ATTEMPTS = (2, 1, 1, 3)
CLOCK_STEPS_MS = (0, 0, 0, 1, 2, 3, 5, 8, 10, 20, 30, 50, 80, 120, 200)
# Small retention (so JobForgotten happens) or effectively none.
RETENTIONS_MS = (0, 5, 20, 50, 100, 10**9)
RETAINED_MAXES = (0, 1, 2, 4, 10**6)
JITTER_SEEDS = st.integers(0, 2**64 - 1)

T = TypeVar("T")


@functools.cache
def _ints(low: int, high: int) -> st.SearchStrategy[int]:
    # Strategies are built once and reused: building one per draw dominates the cost.
    return st.integers(low, high)


def _pick(draw: st.DrawFn, items: Sequence[T]) -> T:
    """``draw(st.sampled_from(items))`` without building a strategy per call."""
    return items[draw(_ints(0, len(items) - 1))]


def _choose(draw: st.DrawFn, *menus: Sequence[Any]) -> list[Any]:
    """One item from each menu, for the price of a single draw.

    The draw is a mixed-radix number with one digit per menu.  Hypothesis's cost
    is per draw, not per bit, so this makes histories several times cheaper; zero
    (what shrinking aims at) picks the first item of every menu.
    """
    total = 1
    for menu in menus:
        total *= len(menu)
    number = draw(_ints(0, total - 1))
    picked = []
    for menu in menus:
        number, digit = divmod(number, len(menu))
        picked.append(menu[digit])
    return picked


# The command kinds, weighted by repetition (the list shrinks towards Enqueue).
_KINDS = (
    ["enqueue"] * 5
    + ["lease"] * 5
    + ["complete"] * 2
    + ["fail"] * 3
    + ["release"]
    + ["tick"] * 3
    + ["cancel"] * 2
    + ["requeue"]
    + ["pause"]
    + ["resume"]
    + ["recover"]
    + ["abandon_node"]
)
_MORE_WITH_LEASES = [
    "complete",
    "fail",
    "fail",
    "release",
    "cancel",
    "cancel",
    "recover",
    "recover",
    "abandon_node",
    "abandon_node",
]
_MORE_WITH_DEAD = ["requeue", "requeue"]
_UNFINISHED = (JobStatus.PENDING, JobStatus.DELAYED, JobStatus.IN_FLIGHT)


# -- Small helpers over states and histories. -----------------------------------------


def status_of(state: State, job_id: str) -> JobStatus:
    """The job's status, ABSENT when it is not in the state."""
    job = state.jobs.get(job_id)
    return JobStatus.ABSENT if job is None else job.status


def time_of(events: Sequence[Event], index: int) -> int:
    """The clock at ``states[index]``: the time of the last event before it (0 at first)."""
    return events[index - 1].at_ms if index > 0 else 0


def replay_all(events: Iterable[Event], state: State | None = None) -> State:
    """Fold ``evolve`` over ``events`` (from the initial state unless one is given)."""
    state = initial_state() if state is None else state
    for event in events:
        state = evolve(state, event)
    return state


def _record(state: State, command: Command, events: list[Event], states: list[State]) -> State:
    """Decide ``command`` and append its events and the states after each; a rejected
    command is skipped (it leaves no trace in a log).  Returns the new state."""
    try:
        new_events = decide(state, command)
    except Rejected:
        return state
    for event in new_events:
        state = evolve(state, event)
        events.append(event)
        states.append(state)
    return state


def run(commands: Iterable[Command]) -> tuple[list[Event], list[State]]:
    """Decide and apply each command in turn from the initial state, skipping rejected ones.

    Returns ``(events, states)`` as described in the module docstring.
    """
    state = initial_state()
    events: list[Event] = []
    states = [state]
    for command in commands:
        state = _record(state, command, events, states)
    return events, states


def step(state: State, command: Command) -> tuple[tuple[Event, ...], State]:
    """Decide ``command`` (a rejection propagates) and fold its events: (events, new state)."""
    events = decide(state, command)
    for event in events:
        state = evolve(state, event)
    return events, state


def edges_of(
    events: Sequence[Event], states: Sequence[State]
) -> set[tuple[JobStatus, str, JobStatus]]:
    """The lifecycle edges (source, event name, target) that a history walks along."""
    found = set()
    for index, event in enumerate(events):
        job_id = getattr(event, "job_id", None)
        if job_id is None:
            continue
        source = status_of(states[index], job_id)
        target = status_of(states[index + 1], job_id)
        found.add((source, type(event).__name__, target))
    return found


# -- Commands. ------------------------------------------------------------------------


def _draw_enqueue(draw: st.DrawFn, now_ms: int) -> Enqueue:
    (cap, quarters, args, job_id, queue, priority, attempts, timeout, delay, key) = _choose(
        draw,
        CAPS_MS,
        BASE_QUARTERS,
        ARGS,
        (None, None, *JOB_IDS),
        QUEUES,
        PRIORITIES,
        MAX_ATTEMPTS,
        TIMEOUTS_MS,
        DELAYS_MS,
        (None, None, *KEYS),
    )
    return Enqueue(
        now_ms=now_ms,
        handler=HANDLER,
        args_json=args,
        job_id=job_id,
        queue=queue,
        priority=priority,
        max_attempts=attempts,
        timeout_ms=timeout,
        delay_ms=delay,
        backoff_base_ms=cap * quarters // 4,
        backoff_cap_ms=cap,
        idempotency_key=key,
    )


@st.composite
def enqueues(draw: st.DrawFn, now_ms: int = 0) -> Enqueue:
    """A valid Enqueue over the tiny alphabet (the caller id, if any, may be taken)."""
    return _draw_enqueue(draw, now_ms)


def _job_id(draw: st.DrawFn, state: State | None, preferred: Sequence[str]) -> str:
    """A job id: mostly one of ``preferred`` (when any), else from the state or alphabet."""
    known = sorted(set(JOB_IDS) | (set() if state is None else set(state.jobs)))
    if preferred and draw(_ints(0, 3)) > 0:
        # Sorted: map iteration order depends on string hashing, which varies by process.
        return _pick(draw, sorted(preferred))
    return _pick(draw, known)


def _attempt(draw: st.DrawFn, state: State | None, job_id: str) -> int:
    """Mostly the job's live attempt (read from the state); sometimes another one."""
    job = None if state is None else state.jobs.get(job_id)
    live = 1 if job is None else job.attempt
    if draw(_ints(0, 4)) > 0:
        return live
    return draw(_ints(0, live + 1))


@st.composite
def commands(draw: st.DrawFn, state: State | None = None, now_ms: int = 0) -> Command:
    """One valid-ish command at time ``now_ms``.

    With a ``state`` the command aims at it: results name in-flight jobs and mostly
    their live attempt, cancels name jobs in the state, requeues mostly name dead
    jobs.  Without one, ids come from the alphabet and attempts are small numbers.
    Fields are valid; whether the command is *allowed* is left to chance (a stale
    attempt, a finished job), so some commands are rejected.
    """
    return _draw_command(draw, state, now_ms)


def _draw_command(draw: st.DrawFn, state: State | None, now_ms: int) -> Command:
    # A plain function, not a nested strategy: histories call it once per step.
    kinds = _KINDS
    if state is not None:
        # Steer towards the rarer moves when they are possible: a running job is
        # ended, cancelled or lost in a crash; a dead job is requeued.
        if state.counts.in_flight:
            kinds = kinds + _MORE_WITH_LEASES
        if state.counts.dead:
            kinds = kinds + _MORE_WITH_DEAD
    kind = _pick(draw, kinds)
    jobs = {} if state is None else dict(state.jobs.items())
    if kind == "enqueue":
        return _draw_enqueue(draw, now_ms)
    if kind == "lease":
        return Lease(now_ms=now_ms, worker_id=_pick(draw, WORKERS))
    if kind in ("complete", "fail", "release"):
        in_flight = [] if state is None else list(state.in_flight)
        job_id = _job_id(draw, state, in_flight)
        attempt = _attempt(draw, state, job_id)
        if kind == "complete":
            return Complete(now_ms=now_ms, job_id=job_id, attempt=attempt, result_json="1")
        if kind == "release":
            return Release(now_ms=now_ms, job_id=job_id, attempt=attempt)
        return Fail(
            now_ms=now_ms,
            job_id=job_id,
            attempt=attempt,
            error=_pick(draw, ERRORS),
            jitter_seed=draw(JITTER_SEEDS),
        )
    if kind == "tick":
        retention_ms, retained_max = _choose(draw, RETENTIONS_MS, RETAINED_MAXES)
        return Tick(
            now_ms=now_ms,
            retention_ms=retention_ms,
            finished_jobs_retained_max=retained_max,
        )
    if kind == "cancel":
        # Running jobs if any: cancelling one is the interesting case (it waits for
        # the attempt's end); else the other unfinished ones.
        running = [] if state is None else list(state.in_flight)
        cancellable = running or [i for i, job in jobs.items() if job.status in _UNFINISHED]
        return Cancel(now_ms=now_ms, job_id=_job_id(draw, state, cancellable))
    if kind == "requeue":
        dead = [i for i, job in jobs.items() if job.status is JobStatus.DEAD]
        return Requeue(now_ms=now_ms, job_id=_job_id(draw, state, dead))
    if kind == "pause":
        return PauseQueue(now_ms=now_ms, queue=_pick(draw, QUEUES))
    if kind == "resume":
        return ResumeQueue(now_ms=now_ms, queue=_pick(draw, QUEUES))
    if kind == "abandon_node":
        return AbandonNode(now_ms=now_ms, node=_pick(draw, NODES))
    assert kind == "recover"
    return Recover(now_ms=now_ms)


@st.composite
def command_lists(draw: st.DrawFn, max_size: int = 30) -> list[Command]:
    """State-blind command sequences with a monotone clock (for :func:`run`)."""
    size = draw(_ints(0, max_size))
    now_ms = 0
    found: list[Command] = []
    for _ in range(size):
        now_ms += _pick(draw, CLOCK_STEPS_MS)
        found.append(_draw_command(draw, None, now_ms))
    return found


# -- Histories. -----------------------------------------------------------------------


class _Logged(tuple):  # type: ignore[type-arg]
    """A plain tuple ``(events, states, ...)`` whose repr elides the states.

    The states follow from the log, and printing them would make a failing
    example tens of kB long; Hypothesis's printer uses ``_repr_pretty_``.
    """

    def __repr__(self) -> str:
        states = f"<{len(self[1])} states: the folds of the log's prefixes>"
        return "(" + ", ".join([repr(self[0]), states, *map(repr, self[2:])]) + ")"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


@st.composite
def histories(
    draw: st.DrawFn, min_commands: int = 0, max_commands: int = 40
) -> tuple[list[Event], list[State]]:
    """A reachable history ``(events, states)``: see the module docstring.

    Each command is drawn from the state reached so far, at a clock that never goes
    back; rejected commands are skipped (they leave no trace in a log).
    """
    size = draw(_ints(min_commands, max_commands))
    state = initial_state()
    events: list[Event] = []
    states = [state]
    now_ms = 0
    for _ in range(size):
        now_ms += _pick(draw, CLOCK_STEPS_MS)
        state = _record(state, _draw_command(draw, state, now_ms), events, states)
    return _Logged((events, states))


@st.composite
def history_points(draw: st.DrawFn, max_commands: int = 40) -> tuple[list[Event], list[State], int]:
    """A history and an index into its states (a reachable state and its past)."""
    events, states = draw(histories(max_commands=max_commands))
    index = draw(_ints(0, len(events)))
    return _Logged((events, states, index))


def is_derived(job_id: str) -> bool:
    return DERIVED_ID.fullmatch(job_id) is not None


def enqueued_events(events: Iterable[Event]) -> list[JobEnqueued]:
    return [event for event in events if isinstance(event, JobEnqueued)]


# -- Wide-range valid values (for field-by-field tests). ------------------------------

# Printable, no white space: letters, digits, punctuation and symbols of any script.
TOKEN_CHARACTERS = st.characters(categories=("L", "N", "P", "S"))
# A fixed sample of them, 1 to 4 UTF-8 bytes each: far cheaper to draw from.
TOKEN_ALPHABET = "ajz09AZ_-.:/@#%+=~!?éßØΩЖש中€✓😀𝄞"


def tokens(max_size: int = 12) -> st.SearchStrategy[str]:
    """Valid tokens (non-empty, no white space or control characters), not j<digits>."""
    return st.text(TOKEN_ALPHABET, min_size=1, max_size=max_size).filter(
        lambda text: not is_derived(text)
    )


QUEUE_NAMES = st.builds(
    lambda first, rest: first + rest,
    st.sampled_from("AZaz09"),
    st.text(st.sampled_from("Az09_.:-"), max_size=12),
)


# The strategies of valid_enqueues, built once (building them per draw costs more
# than drawing from them).
_FRESH_NAMES = st.one_of(st.none(), tokens().map(lambda text: "new-" + text))
_WIDE_ENQUEUE_FIELDS = st.fixed_dictionaries(
    {
        "handler": tokens(),
        "args_json": st.sampled_from(["null", "0", '"x"', "[1,2]", '{"a":{"b":[]}}']),
        "job_id": _FRESH_NAMES,
        "queue": QUEUE_NAMES,
        "priority": st.integers(limits.PRIORITY_MIN, limits.PRIORITY_MAX),
        "max_attempts": st.integers(1, limits.ATTEMPTS_MAX),
        "timeout_ms": st.integers(limits.TIMEOUT_MS_MIN, limits.TIMEOUT_MS_MAX),
        "delay_ms": st.integers(0, limits.DELAY_MS_MAX),
        # Two draws from the cap's range, the smaller one the base: 0 <= base <= cap.
        "backoff": st.lists(st.integers(0, limits.BACKOFF_CAP_MS_MAX), min_size=2, max_size=2),
        "idempotency_key": _FRESH_NAMES,
    }
)


@st.composite
def valid_enqueues(draw: st.DrawFn, now_ms: int = 0) -> Enqueue:
    """An Enqueue with every field drawn from its whole valid range (ids and keys fresh:
    prefixed ``new-`` so that they never meet the tiny alphabet)."""
    fields = draw(_WIDE_ENQUEUE_FIELDS)
    base_ms, cap_ms = sorted(fields.pop("backoff"))
    return Enqueue(now_ms=now_ms, backoff_base_ms=base_ms, backoff_cap_ms=cap_ms, **fields)
