"""Invariants of one model ``State``: named predicates that every reachable state meets.

Theory of operation.  ``evolve`` keeps the state's indexes (``ready``, ``timers``,
``in_flight``, ``finished``, ``idempotency_keys``, ``counts``) in step with the jobs
by small incremental updates: each event touches a few entries.  Incremental
bookkeeping goes wrong quietly, in a way no single decision reveals until much
later (a job missing from its FIFO is simply never leased).  So each invariant
here recomputes, from scratch and in the most obvious way, what an index must hold,
and compares.  They are O(n) in the number of jobs: checks, never the hot path.

Each invariant is a function ``name(state) -> list[str]``: the violations, one
message per broken fact, empty when the state is fine.  Returning messages instead
of asserting lets ``check_all`` report every broken invariant of a state at once,
by name, which is what one wants when a long random run fails.  ``INVARIANTS``
lists them all; the Hypothesis state machines and the simulator call
``check_all(state)`` after every step.

These are *assertions* in the sense of ``model/errors.py``: a violation means the
code is wrong, never that a caller did something unexpected.  Properties of
sequences of states (a finished job stays finished, a job leaves only when
forgotten) are not facts about one state; they live in ``spec/history.py``.

Pure by rule: no clock, no I/O, no randomness (``tests/test_purity.py``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from beaverq.model import limits
from beaverq.model.errors import BrokenInvariant
from beaverq.model.fifo import Fifo
from beaverq.model.jobs import Job
from beaverq.model.lifecycle import FINISHED, JobStatus
from beaverq.model.state import Counts, State, timer_is_live
from beaverq.model.timers import timers_entries, timers_peek

Invariant = Callable[[State], list[str]]

#: At most this many messages per invariant: a badly broken state of a long run
#: would otherwise bury the first, most useful, message under thousands.
MESSAGES_PER_INVARIANT_MAX = 10


# -- Every job is where its status says, and nowhere else. ------------------------------


def each_job_in_exactly_one_index(state: State) -> list[str]:
    """PENDING <-> in its ready FIFO at its slot; DELAYED <-> one live timer entry;
    IN_FLIGHT <-> in ``in_flight`` with its lease expiry; finished <-> in the
    finished FIFO at its slot.  Checked from the jobs' side and from each index's
    (a live timer entry names a DELAYED job by definition, ``state.timer_is_live``,
    so the timers need no second side; stale entries are allowed, model/timers.py)."""
    return [
        *_job_side_problems(state),
        *_ready_side_problems(state),
        *_in_flight_side_problems(state),
        *_finished_side_problems(state),
    ]


def _job_side_problems(state: State) -> list[str]:
    """Each job is found in the index of its status, at the right place."""
    live_timers = Counter(entry[2] for entry in _live_timer_entries(state))
    found: list[str] = []
    for job_id, job in state.jobs.items():
        status = job.status
        if status is JobStatus.PENDING:
            fifo = state.ready.get((job.spec.queue, job.spec.priority))
            if fifo is None or fifo.items.get(job.slot) != job_id:
                found.append(f"pending job {job_id!r} is not in ready at slot {job.slot}")
        elif status is JobStatus.DELAYED and live_timers[job_id] != 1:
            found.append(f"delayed job {job_id!r} has {live_timers[job_id]} live timers, not 1")
        elif status is JobStatus.IN_FLIGHT:
            expiry = state.in_flight.get(job_id)
            if expiry is None or expiry != job.lease_expires_at_ms:
                found.append(
                    f"in-flight job {job_id!r}: in_flight holds {expiry}, "
                    f"the job's lease expires at {job.lease_expires_at_ms}"
                )
        elif status in FINISHED and state.finished.items.get(job.slot) != job_id:
            found.append(f"{status.value} job {job_id!r} is not in finished at slot {job.slot}")
        # Only FIFO members have a slot; -1 marks "in no FIFO" (model/jobs.py).
        in_a_fifo = status is JobStatus.PENDING or status in FINISHED
        if not in_a_fifo and job.slot != -1:
            found.append(f"{status.value} job {job_id!r} has slot {job.slot}, not -1")
    return found


def _ready_side_problems(state: State) -> list[str]:
    """Every ready FIFO item is a PENDING job of that (queue, priority) at that slot."""
    found: list[str] = []
    for (queue, priority), fifo in state.ready.items():
        for slot, job_id in fifo.items.items():
            job = state.jobs.get(job_id)
            if job is None or job.status is not JobStatus.PENDING:
                found.append(
                    f"ready[{queue!r}, {priority}] slot {slot} holds {job_id!r}, "
                    f"which is {_status_text(job)}"
                )
            elif (job.spec.queue, job.spec.priority, job.slot) != (queue, priority, slot):
                found.append(
                    f"ready[{queue!r}, {priority}] slot {slot} holds {job_id!r}, "
                    f"whose key is ({job.spec.queue!r}, {job.spec.priority}) "
                    f"and slot {job.slot}"
                )
    return found


def _in_flight_side_problems(state: State) -> list[str]:
    found: list[str] = []
    for job_id in state.in_flight:
        job = state.jobs.get(job_id)
        if job is None or job.status is not JobStatus.IN_FLIGHT:
            found.append(f"in_flight holds {job_id!r}, which is {_status_text(job)}")
    return found


def _finished_side_problems(state: State) -> list[str]:
    found: list[str] = []
    for slot, job_id in state.finished.items.items():
        job = state.jobs.get(job_id)
        if job is None or job.status not in FINISHED:
            found.append(f"finished slot {slot} holds {job_id!r}, which is {_status_text(job)}")
        elif job.slot != slot:
            found.append(f"finished slot {slot} holds {job_id!r}, whose slot is {job.slot}")
    return found


def _live_timer_entries(state: State) -> list[tuple[int, int, str]]:
    return [entry for entry in timers_entries(state.timers) if timer_is_live(state.jobs, entry)]


def _status_text(job: Job | None) -> str:
    return "absent" if job is None else job.status.value


def timers_top_is_live(state: State) -> list[str]:
    """The earliest timer entry, if any, is live.  Stale entries are dropped when
    they reach the top (``state.timers_drop_stale`` runs whenever a job leaves
    DELAYED, the only way an entry turns stale), so the entry ``Tick`` looks at
    first is due work, not garbage."""
    top = timers_peek(state.timers)
    if top is None or timer_is_live(state.jobs, top):
        return []
    return [f"the top timer entry {top} is stale"]


def jobs_keyed_by_their_id(state: State) -> list[str]:
    """``jobs[k].job_id == k``: every index names jobs by id, so a mismatch here
    would send every lookup to the wrong job."""
    return [
        f"jobs[{key!r}] holds job {job.job_id!r}"
        for key, job in state.jobs.items()
        if job.job_id != key
    ]


def no_job_absent(state: State) -> list[str]:
    """ABSENT is the pseudo-state of jobs *not* in the state (model/lifecycle.py)."""
    return [
        f"job {job_id!r} is in the state with status absent"
        for job_id, job in state.jobs.items()
        if job.status is JobStatus.ABSENT
    ]


# -- The per-job record is coherent. ----------------------------------------------------


def attempts_within_budget(state: State) -> list[str]:
    """``0 <= attempts_used <= max_attempts`` and ``attempts_used <= attempt``.

    The first is the retry budget: a job never runs more often than allowed between
    requeues.  The second holds because every counted attempt was a lease, and the
    fence ``attempt`` counts every lease ever (a requeue resets only the budget)."""
    found: list[str] = []
    for job_id, job in state.jobs.items():
        used, budget = job.attempts_used, job.spec.max_attempts
        if not 0 <= used <= budget:
            found.append(f"job {job_id!r} used {used} attempts of max_attempts={budget}")
        if used > job.attempt:
            found.append(f"job {job_id!r} used {used} attempts but was leased {job.attempt} times")
    return found


def at_most_one_live_lease_per_job(state: State) -> list[str]:
    """A job has at most one open attempt record, it is the last one, and it is open
    exactly while the job is IN_FLIGHT, for the live attempt and its expiry.

    This is the record side of the fence: a second open record would mean two
    workers believe they hold the job."""
    found: list[str] = []
    for job_id, job in state.jobs.items():
        in_flight = job.status is JobStatus.IN_FLIGHT
        open_records = [r for r in job.history if r.outcome is None]
        if len(open_records) > 1:
            found.append(f"job {job_id!r} has {len(open_records)} open attempt records")
        last_open = bool(job.history) and job.history[-1].outcome is None
        if last_open != in_flight:
            found.append(f"{job.status.value} job {job_id!r}: last attempt record open={last_open}")
        if in_flight and last_open:
            last = job.history[-1]
            if (last.attempt, last.expires_at_ms) != (job.attempt, job.lease_expires_at_ms):
                found.append(
                    f"in-flight job {job_id!r}: open record is attempt {last.attempt} "
                    f"to {last.expires_at_ms}, the job's is attempt {job.attempt} "
                    f"to {job.lease_expires_at_ms}"
                )
        if (job.lease_expires_at_ms is not None) != in_flight:
            found.append(
                f"{job.status.value} job {job_id!r} has lease expiry {job.lease_expires_at_ms}"
            )
    return found


def attempt_records_match_the_fence(state: State) -> list[str]:
    """A job keeps one record per lease, the most recent ``ATTEMPT_HISTORY_MAX`` of
    them: numbered consecutively, the last one being the fence ``attempt``, and none
    at all before the first lease.  The records are what an operator reads to learn
    why a job died."""
    found: list[str] = []
    for job_id, job in state.jobs.items():
        numbers = [record.attempt for record in job.history]
        expected = list(range(job.attempt - len(numbers) + 1, job.attempt + 1))
        if numbers != expected:
            found.append(f"job {job_id!r} at attempt {job.attempt} has records {numbers}")
        wanted = min(job.attempt, limits.ATTEMPT_HISTORY_MAX)
        if len(numbers) != wanted:
            found.append(f"job {job_id!r} has {len(numbers)} attempt records, not {wanted}")
    return found


def finished_jobs_have_finish_time(state: State) -> list[str]:
    """``finished_at_ms`` is set exactly on finished jobs: retention reads it."""
    return [
        f"{job.status.value} job {job_id!r} has finished_at_ms={job.finished_at_ms}"
        for job_id, job in state.jobs.items()
        if (job.finished_at_ms is not None) != (job.status in FINISHED)
    ]


def cancellation_flag_consistent(state: State) -> list[str]:
    """``cancel_requested`` is set only on a job that was in flight when cancelled:
    it is still IN_FLIGHT, or its attempt ended CANCELLED, or it completed anyway.
    A PENDING, DELAYED or DEAD job with the flag would be cancelled by surprise at
    a later attempt's end (a requeue clears the flag)."""
    allowed = {JobStatus.IN_FLIGHT, JobStatus.CANCELLED, JobStatus.COMPLETED}
    return [
        f"{job.status.value} job {job_id!r} has cancel_requested set"
        for job_id, job in state.jobs.items()
        if job.cancel_requested and job.status not in allowed
    ]


def lsn_consistent(state: State) -> list[str]:
    """``enqueued_lsn <= ready_lsn <= last_lsn`` for every job, and no job is ahead
    of the state.  The per-job LSN is the second replay guard (model/evolve.py): a job
    ahead of the state would silently ignore the next events meant for it."""
    found: list[str] = []
    for job_id, job in state.jobs.items():
        if not 1 <= job.enqueued_lsn <= job.ready_lsn <= job.last_lsn:
            found.append(
                f"job {job_id!r}: enqueued_lsn={job.enqueued_lsn} "
                f"ready_lsn={job.ready_lsn} last_lsn={job.last_lsn} are out of order"
            )
        if job.last_lsn > state.last_lsn:
            found.append(
                f"job {job_id!r} is at LSN {job.last_lsn}, past the state's {state.last_lsn}"
            )
    return found


# -- The indexes themselves. -------------------------------------------------------------


def counts_consistent(state: State) -> list[str]:
    """``state.counts`` equals a recount: gauges and the JOBS_MAX and IN_FLIGHT_MAX
    rejections read the counts, never the maps."""
    tally = Counter(job.status for job in state.jobs.values())
    recount = Counts(*(tally[status] for status in _COUNTED))
    if recount == state.counts:
        return []
    return [f"counts are {state.counts}, a recount gives {recount}"]


# The order of Counts' fields.
_COUNTED = (
    JobStatus.PENDING,
    JobStatus.DELAYED,
    JobStatus.IN_FLIGHT,
    JobStatus.COMPLETED,
    JobStatus.DEAD,
    JobStatus.CANCELLED,
)


def idempotency_keys_consistent(state: State) -> list[str]:
    """``idempotency_keys`` maps each key to the one job in the state that has it,
    and holds no other key.  A stale key would make a new enqueue vanish into a
    forgotten job; a missing one would let a duplicate through."""
    found: list[str] = []
    for key, job_id in state.idempotency_keys.items():
        job = state.jobs.get(job_id)
        if job is None or job.spec.idempotency_key != key:
            owner = None if job is None else job.spec.idempotency_key
            found.append(f"key {key!r} names job {job_id!r}, whose key is {owner!r}")
    for job_id, job in state.jobs.items():
        own_key = job.spec.idempotency_key
        if own_key is None:
            continue
        named = state.idempotency_keys.get(own_key)
        if named != job_id:
            found.append(f"job {job_id!r} has key {own_key!r}, which names {named!r}")
    return found


def ready_fifos_nonempty_and_heads_valid(state: State) -> list[str]:
    """No empty FIFO is kept in ``ready`` (``next_ready_job`` relies on it), and in
    every FIFO, the finished one included, each item lies in ``[head, tail)`` and a
    non-empty FIFO's head slot holds an item: ``fifo_first`` starts at ``head``,
    so an item below it would be skipped, and a hole at it would cost a walk."""
    found: list[str] = []
    for key, fifo in state.ready.items():
        if not fifo.items:
            found.append(f"ready[{key}] is an empty FIFO")
        found.extend(f"ready[{key}]: {problem}" for problem in _fifo_problems(fifo))
    found.extend(f"finished: {problem}" for problem in _fifo_problems(state.finished))
    return found


def _fifo_problems(fifo: Fifo) -> list[str]:
    found = [
        f"slot {slot} ({job_id!r}) is outside [head={fifo.head}, tail={fifo.tail})"
        for slot, job_id in fifo.items.items()
        if not fifo.head <= slot < fifo.tail
    ]
    if fifo.items and fifo.head not in fifo.items:
        found.append(f"the head slot {fifo.head} is a hole")
    return found


def limits_respected(state: State) -> list[str]:
    """The state stays within the size bounds that ``decide`` enforces by rejection
    (model/limits.py): every later cost assumes them."""
    bounds = [
        ("jobs", len(state.jobs), limits.JOBS_MAX, "JOBS_MAX"),
        ("leases", len(state.in_flight), limits.IN_FLIGHT_MAX, "IN_FLIGHT_MAX"),
        ("paused queues", len(state.paused), limits.PAUSED_QUEUES_MAX, "PAUSED_QUEUES_MAX"),
    ]
    return [
        f"{count} {what}, over {name}={bound}"
        for what, count, bound, name in bounds
        if count > bound
    ]


INVARIANTS: tuple[Invariant, ...] = (
    each_job_in_exactly_one_index,
    timers_top_is_live,
    jobs_keyed_by_their_id,
    no_job_absent,
    attempts_within_budget,
    at_most_one_live_lease_per_job,
    attempt_records_match_the_fence,
    finished_jobs_have_finish_time,
    cancellation_flag_consistent,
    lsn_consistent,
    counts_consistent,
    idempotency_keys_consistent,
    ready_fifos_nonempty_and_heads_valid,
    limits_respected,
)


def violations(state: State) -> dict[str, list[str]]:
    """Every broken invariant of ``state``, by name, with (at most a few of) its messages."""
    found: dict[str, list[str]] = {}
    for invariant in INVARIANTS:
        messages = invariant(state)
        if messages:
            found[invariant.__name__] = _capped(messages)
    return found


def check_all(state: State) -> None:
    """Raise ``BrokenInvariant`` naming every broken invariant of ``state``."""
    found = violations(state)
    if found:
        lines = [f"{len(found)} invariant(s) broken at LSN {state.last_lsn}:"]
        for name, messages in found.items():
            lines.append(f"  {name}:")
            lines.extend(f"    - {message}" for message in messages)
        raise BrokenInvariant("\n".join(lines))


def _capped(messages: list[str]) -> list[str]:
    if len(messages) <= MESSAGES_PER_INVARIANT_MAX:
        return messages
    extra = len(messages) - MESSAGES_PER_INVARIANT_MAX
    return [*messages[:MESSAGES_PER_INVARIANT_MAX], f"... and {extra} more"]
