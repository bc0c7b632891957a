"""Differential test: the model (``decide`` + ``evolve``) against the naive oracle.

``beaverq.spec.oracle.Oracle`` re-implements ``docs/semantics.md`` from the page alone,
with plain dicts and linear scans.  A Hypothesis state machine drives both with the same
commands and demands, after every command:

- both refuse with the same rule, or both accept with the same events, compared field
  by field: every field of every model event (``attrs.asdict``, so a field added to an
  event is compared from then on, and fails loudly until the oracle computes it too),
  with the LSN, the time, the lease expiry, the retry time, the error;
- a refusal leaves the model's state unchanged;
- the oracle's ``observe()`` equals the same summary computed from the model's state:
  every job field the rules read (``SUMMARY_JOB_FIELDS``; a test below checks that the
  rules read no other), with the ready LSN, ready time, lease expiry and finish time
  where the page gives them a meaning, and the order jobs finished in;
- the model's state satisfies ``beaverq.spec.invariants.check_all``.

The alphabets are tiny on purpose (three job ids, two idempotency keys, three queues,
short timeouts and backoffs) so that collisions, expiries, retries and forgetting happen
within a few dozen steps.  Run it long with ``--hypothesis-profile=thorough``.

Every disagreement found so far is kept below the machine as a plain deterministic test
that replays the shrunk command sequence (``test_regression_*``), with a comment saying
who was wrong according to semantics.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import hypothesis
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from beaverq.model import (
    FINISHED,
    AbandonNode,
    Cancel,
    Command,
    Complete,
    Enqueue,
    Event,
    Fail,
    Job,
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
from beaverq.model.fifo import fifo_iter
from beaverq.spec.invariants import check_all
from beaverq.spec.oracle import Oracle, Prefix

# -- running one command on both sides ------------------------------------------------

Outcome = tuple[str, Any]  # ("rejected", rule) or ("accepted", [event record, ...])


def event_record(event: Event) -> dict[str, object]:
    """Every field of ``event`` (the spec of a ``JobEnqueued`` as a dict), and its type."""
    return {"type": type(event).__name__, **attrs.asdict(event)}


#: The job fields the summary compares: every one the rules read (``decide``, recovery
#: and the state's own queries; ``test_the_summary_holds_every_job_field_the_rules_read``
#: checks it), plus ``result_json``, which ``show`` reports.  Two states with the same
#: summary therefore get the same decision for every command.
SUMMARY_JOB_FIELDS = frozenset(
    {
        "spec",
        "status",
        "attempt",
        "attempts_used",
        "cancel_requested",
        "ready_lsn",
        "ready_at_ms",
        "lease_expires_at_ms",
        "lease_worker_id",
        "finished_at_ms",
        "result_json",
    }
)
_WAITING = (JobStatus.PENDING, JobStatus.DELAYED)


def job_summary(job: Job) -> dict[str, object]:
    # Each time only where the page gives it a meaning (elsewhere the model keeps a
    # stale value that nothing reads).
    status = job.status
    return {
        "spec": attrs.asdict(job.spec),
        "status": status.value,
        "attempt": job.attempt,
        "attempts_used": job.attempts_used,
        "cancel_requested": job.cancel_requested,
        "ready_lsn": job.ready_lsn if status in _WAITING else None,
        "ready_at_ms": job.ready_at_ms if status is JobStatus.DELAYED else None,
        "lease_expires_at_ms": job.lease_expires_at_ms if status is JobStatus.IN_FLIGHT else None,
        "lease_worker_id": job.lease_worker_id,  # None unless in flight
        "finished_at_ms": job.finished_at_ms if status in FINISHED else None,
        "result_json": job.result_json if status is JobStatus.COMPLETED else None,
    }


def model_summary(state: State) -> dict[str, object]:
    """The model's state in the shape of ``Oracle.observe()``."""
    return {
        "jobs": {job_id: job_summary(job) for job_id, job in state.jobs.items()},
        "finished_order": [job_id for _slot, job_id in fifo_iter(state.finished)],
        "paused_queues": frozenset(state.paused),
        "last_lsn": state.last_lsn,
    }


def events_disagree(model: list[dict[str, Any]], oracle: list[dict[str, Any]]) -> str | None:
    """Why two event lists differ (None: they agree), field by field.  Every field of
    the model's event must be one the oracle computed, and the oracle computes no field
    the model's event lacks; an oracle ``Prefix`` matches a text that starts with it."""
    if [e["type"] for e in model] != [e["type"] for e in oracle]:
        return "not the same event types"
    for index, (mine, theirs) in enumerate(zip(model, oracle, strict=True)):
        where = f"event {index} ({mine['type']})"
        if set(mine) != set(theirs):
            return (
                f"{where}: the model's fields {sorted(set(mine) - set(theirs))} are not "
                f"computed by the oracle (spec/oracle.py must restate them), and the "
                f"oracle's {sorted(set(theirs) - set(mine))} are not in the model's event"
            )
        for name, value in mine.items():
            expected = theirs[name]
            if isinstance(expected, Prefix):
                if not (isinstance(value, str) and value.startswith(expected.text)):
                    return f"{where}.{name}: {value!r} does not start with {expected.text!r}"
            elif value != expected:
                return f"{where}.{name}: model {value!r}, oracle {expected!r}"
    return None


def run_model(state: State, command: Command) -> tuple[State, Outcome]:
    try:
        events = decide(state, command)
    except Rejected as rejected:
        return state, ("rejected", rejected.rejection.rule)
    for offset, event in enumerate(events, start=1):
        assert event.lsn == state.last_lsn + offset
        assert event.at_ms == command.now_ms
    new_state = state
    for event in events:
        new_state = evolve(new_state, event)
    return new_state, ("accepted", [event_record(e) for e in events])


def run_oracle(oracle: Oracle, command: Command) -> Outcome:
    try:
        return ("accepted", oracle.execute(command))
    except Rejected as rejected:
        return ("rejected", rejected.rejection.rule)


def check_state(state: State, oracle: Oracle) -> None:
    assert oracle.observe() == model_summary(state)
    check_all(state)


def step(state: State, oracle: Oracle, command: Command) -> State:
    """Run ``command`` on both; assert they agree; return the model's next state."""
    before = state
    new_state, model_outcome = run_model(state, command)
    oracle_outcome = run_oracle(oracle, command)
    if model_outcome[0] == oracle_outcome[0] == "accepted":
        why = events_disagree(model_outcome[1], oracle_outcome[1])
        assert why is None, (why, command, model_outcome, oracle_outcome)
    else:
        assert model_outcome == oracle_outcome, (command, model_outcome, oracle_outcome)
    # Coverage, shown by --hypothesis-show-statistics: which rules and events were hit.
    if not currently_in_test_context():
        pass  # a plain replay (the regression tests): nothing to record
    elif model_outcome[0] == "rejected":
        hypothesis.event(f"rejected: {model_outcome[1]}")
    else:
        for event_type in sorted({str(record["type"]) for record in model_outcome[1]}):
            hypothesis.event(f"event: {event_type}")
    if model_outcome[0] == "rejected":
        # decide is pure: a refusal leaves the very same (frozen) state behind.
        assert new_state is before
    return new_state


def replay_both(commands: Sequence[Command], check_each: bool = True) -> tuple[State, Oracle]:
    """Replay a fixed command sequence through both, checking agreement at each step.

    ``check_each=False`` compares whole states only after each Tick and at the end (the
    events are still compared at every step): for long sequences of big states.
    """
    state, oracle = initial_state(), Oracle()
    for command in commands:
        state = step(state, oracle, command)
        if check_each or isinstance(command, Tick):
            check_state(state, oracle)
    check_state(state, oracle)
    return state, oracle


# -- the alphabets ---------------------------------------------------------------------

JOB_IDS = ("a", "b", "c")
# Ids no job can have (empty, white space, a control or a format character, over-long),
# and the derived shape j<digits> that a caller may not give but derived jobs do have.
BAD_JOB_IDS = ("", "a b", "a\x00", "a\u200b", "a\ud800", "a" * 129)
RESERVED_JOB_IDS = ("j1", "j07")
KEYS = ("k1", "k2")
QUEUES = ("default", "q", "r")
BAD_QUEUES = ("", "-q", "q q", "é", "q/1", "q\udfff", "q" * 65)
ARGS = ("null", "[1, 2]", '{"x": "y"}')
BAD_JSON = ("", "{", "NaN", "[Infinity]", "nul", '"\ud800"')
TOO_LARGE_JSON = "[" + "0," * 40_000 + "0]"  # 80 KB of valid JSON
# Workers of nodes n1 and n2 (the runtime's "<node>-w<index>"), and ids of no node's
# shape: "w1", a leading zero, the separator twice.  NODES adds n3, which holds nothing.
WORKERS = ("w1", "n1-w0", "n1-w1", "n2-w0", "n1-w01", "n1-w0-w1")
NODES = ("n1", "n2", "n3")
BAD_NODES = ("", "n 1", "n\t", "n1-w", "-w", "n" * 65, "n\ud800")

small_dt = st.sampled_from([0, 0, 1, 5, 50, 200, 1_000])
jitter_seeds = st.one_of(st.integers(0, 7), st.integers(0, 2**64 - 1))

#: The fields of a valid Enqueue (without now_ms): short timeouts, delays and backoffs,
#: so that leases expire and retries wait within a few steps of the clock.
valid_enqueue_fields = st.fixed_dictionaries(
    {
        "handler": st.just("h"),
        "args_json": st.sampled_from(ARGS),
        "job_id": st.one_of(st.none(), st.sampled_from(JOB_IDS)),
        "idempotency_key": st.one_of(st.none(), st.none(), st.sampled_from(KEYS)),
        "queue": st.sampled_from(QUEUES),
        "priority": st.sampled_from([-10, -1, 0, 0, 0, 1, 10]),
        "max_attempts": st.sampled_from([1, 2, 3]),
        "timeout_ms": st.sampled_from([1, 10, 100, 1_000, 30_000, 30_000]),
        "delay_ms": st.sampled_from([0, 0, 0, 1, 50, 500]),
        "backoff_base_ms": st.sampled_from([0, 1, 10, 100]),
        "backoff_cap_ms": st.sampled_from([0, 1, 10, 100, 200]),
    }
).map(lambda f: {**f, "backoff_cap_ms": max(f["backoff_cap_ms"], f["backoff_base_ms"])})

#: For each Enqueue field, values that break its rule.
BAD_ENQUEUE_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "job_id": st.sampled_from(BAD_JOB_IDS + RESERVED_JOB_IDS),
    "queue": st.sampled_from(BAD_QUEUES),
    "handler": st.sampled_from(["", "h h", "h\n", "h" * 201]),
    "args_json": st.sampled_from([*BAD_JSON, TOO_LARGE_JSON]),
    "priority": st.sampled_from([-11, 11, 100]),
    "max_attempts": st.sampled_from([0, 101, -1]),
    "timeout_ms": st.sampled_from([0, -5, limits.TIMEOUT_MS_MAX + 1]),
    "delay_ms": st.sampled_from([-1, limits.DELAY_MS_MAX + 1]),
    "backoff_cap_ms": st.sampled_from([-1, limits.BACKOFF_CAP_MS_MAX + 1]),
    "backoff_base_ms": st.sampled_from([-1, 10**9]),
    "idempotency_key": st.sampled_from(["", "k k", "k" * 201]),
}


class ModelVsOracle(RuleBasedStateMachine):
    """The model and the oracle side by side, fed the same commands.

    Each rule issues one command (``enqueue_then_lease`` two), on a clock that only
    moves forward, by a drawn amount that is often 0.  The rules that drive the life of
    jobs aim mostly at jobs in the states they act on (``pick_job``), so that the
    interesting paths are not drowned in ``job_not_found``; the refusals have a rule
    of their own (``invalid_input``).
    """

    def __init__(self) -> None:
        super().__init__()
        self.state = initial_state()
        self.oracle = Oracle()
        self.now = 0

    # -- helpers -----------------------------------------------------------------------

    def run(self, command: Command) -> None:
        self.state = step(self.state, self.oracle, command)

    def advance(self, dt: int) -> int:
        self.now += dt
        return self.now

    def pick_job(self, data: st.DataObject, *wanted: JobStatus) -> str:
        """A job id to aim a command at: mostly a job in one of the ``wanted`` states
        (those the command acts on), else any job in the state, an id of the alphabet,
        or one that no job has."""
        fitting = sorted(job_id for job_id, job in self.state.jobs.items() if job.status in wanted)
        anything = sorted(set(self.state.jobs) | set(JOB_IDS) | {"zz"})
        if fitting and data.draw(st.integers(0, 3)) > 0:
            return data.draw(st.sampled_from(fitting))
        return data.draw(st.sampled_from(anything))

    def pick_attempt(self, data: st.DataObject, job_id: str) -> int:
        """Mostly the job's live attempt; else a stale one, a future one, or 0."""
        job = self.state.jobs.get(job_id)
        live = 0 if job is None else job.attempt
        return data.draw(st.sampled_from([live, live, live, live, live, live - 1, live + 1, 0]))

    # -- the life of jobs --------------------------------------------------------------

    @rule(dt=small_dt, fields=valid_enqueue_fields)
    def enqueue(self, dt: int, fields: dict[str, Any]) -> None:
        self.run(Enqueue(now_ms=self.advance(dt), **fields))

    @rule(dt=small_dt, fields=valid_enqueue_fields)
    def enqueue_then_lease(self, dt: int, fields: dict[str, Any]) -> None:
        # A second way in, so that jobs reach IN_FLIGHT often within 50 steps.
        self.run(Enqueue(now_ms=self.advance(dt), **fields))
        self.run(Lease(now_ms=self.now, worker_id="n1-w0"))

    @rule(dt=small_dt, worker_id=st.sampled_from(WORKERS))
    def lease(self, dt: int, worker_id: str) -> None:
        self.run(Lease(now_ms=self.advance(dt), worker_id=worker_id))

    @rule(dt=small_dt, data=st.data())
    def complete(self, dt: int, data: st.DataObject) -> None:
        job_id = self.pick_job(data, JobStatus.IN_FLIGHT)
        attempt = self.pick_attempt(data, job_id)
        result = data.draw(st.sampled_from([*ARGS, *ARGS, *ARGS, *BAD_JSON[:3], TOO_LARGE_JSON]))
        # The seed matters only when the result cannot be stored (the attempt fails).
        seed = data.draw(
            st.one_of(jitter_seeds, jitter_seeds, jitter_seeds, st.sampled_from([-1, 2**64]))
        )
        self.run(
            Complete(
                now_ms=self.advance(dt),
                job_id=job_id,
                attempt=attempt,
                result_json=result,
                jitter_seed=seed,
            )
        )

    @rule(dt=small_dt, data=st.data())
    def fail(self, dt: int, data: st.DataObject) -> None:
        job_id = self.pick_job(data, JobStatus.IN_FLIGHT)
        attempt = self.pick_attempt(data, job_id)
        seed = data.draw(
            st.one_of(jitter_seeds, jitter_seeds, jitter_seeds, st.sampled_from([-1, 2**64]))
        )
        error = data.draw(st.sampled_from(["boom", "", "x" * 5_000, "bad\ud800"]))
        self.run(
            Fail(
                now_ms=self.advance(dt),
                job_id=job_id,
                attempt=attempt,
                error=error,
                jitter_seed=seed,
            )
        )

    @rule(dt=small_dt, data=st.data())
    def release(self, dt: int, data: st.DataObject) -> None:
        # A graceful shutdown hands a running job back; a stale one is refused.
        job_id = self.pick_job(data, JobStatus.IN_FLIGHT)
        attempt = self.pick_attempt(data, job_id)
        self.run(Release(now_ms=self.advance(dt), job_id=job_id, attempt=attempt))

    @rule(
        dt=st.one_of(small_dt, st.sampled_from([10_000, 10**6])),
        retention_ms=st.sampled_from([0, 1, 10, 100, 1_000, limits.RETENTION_MS_DEFAULT]),
        retained_max=st.sampled_from([0, 1, 2, 3, limits.FINISHED_JOBS_RETAINED_MAX_DEFAULT]),
    )
    def tick(self, dt: int, retention_ms: int, retained_max: int) -> None:
        self.run(
            Tick(
                now_ms=self.advance(dt),
                retention_ms=retention_ms,
                finished_jobs_retained_max=retained_max,
            )
        )

    @rule(dt=small_dt)
    def recover(self, dt: int) -> None:
        self.run(Recover(now_ms=self.advance(dt)))

    @rule(dt=small_dt, node=st.sampled_from(NODES))
    def abandon_node(self, dt: int, node: str) -> None:
        self.run(AbandonNode(now_ms=self.advance(dt), node=node))

    @rule(dt=small_dt, data=st.data())
    def cancel(self, dt: int, data: st.DataObject) -> None:
        job_id = self.pick_job(
            data, JobStatus.PENDING, JobStatus.DELAYED, JobStatus.IN_FLIGHT, JobStatus.CANCELLED
        )
        self.run(Cancel(now_ms=self.advance(dt), job_id=job_id))

    @rule(dt=small_dt, data=st.data())
    def requeue(self, dt: int, data: st.DataObject) -> None:
        self.run(Requeue(now_ms=self.advance(dt), job_id=self.pick_job(data, JobStatus.DEAD)))

    @rule(dt=small_dt, pause=st.booleans(), queue=st.sampled_from(QUEUES))
    def pause_or_resume(self, dt: int, pause: bool, queue: str) -> None:
        kind = PauseQueue if pause else ResumeQueue
        self.run(kind(now_ms=self.advance(dt), queue=queue))

    # -- refusals ----------------------------------------------------------------------

    @rule(
        dt=small_dt,
        what=st.sampled_from(
            [
                "enqueue",
                "job_id",
                "attempt",
                "worker_id",
                "queue",
                "tick",
                "node",
                "now_ms",
                "now_ms",
            ]
        ),
        data=st.data(),
    )
    def invalid_input(self, dt: int, what: str, data: st.DataObject) -> None:
        """A command with a field out of bounds (sometimes two, to probe check order)."""
        now = self.advance(dt)
        command: Command
        if what == "enqueue":
            fields = data.draw(valid_enqueue_fields)
            for name in data.draw(
                st.lists(st.sampled_from(sorted(BAD_ENQUEUE_FIELDS)), min_size=1, max_size=2)
            ):
                fields[name] = data.draw(BAD_ENQUEUE_FIELDS[name])
            command = Enqueue(now_ms=now, **fields)
        elif what == "job_id":
            job_id = data.draw(st.sampled_from(BAD_JOB_IDS + RESERVED_JOB_IDS))
            command = data.draw(
                st.sampled_from(
                    [
                        Cancel(now_ms=now, job_id=job_id),
                        Requeue(now_ms=now, job_id=job_id),
                        Complete(now_ms=now, job_id=job_id, attempt=1),
                        Fail(now_ms=now, job_id=job_id, attempt=1, error="e"),
                    ]
                )
            )
        elif what == "attempt":
            # Not an integer: attempt_invalid, after the job lookup (True == 1 in Python,
            # so a missing type check would let True complete attempt 1).  Any integer,
            # however large, that is not the live attempt: stale_attempt.
            job_id = self.pick_job(data, JobStatus.IN_FLIGHT)
            attempt: Any = data.draw(
                st.sampled_from([True, False, 1.0, "1", None, 2**63, -(2**63) - 1, 2**70])
            )
            command = data.draw(
                st.sampled_from(
                    [
                        Complete(now_ms=now, job_id=job_id, attempt=attempt),
                        Fail(now_ms=now, job_id=job_id, attempt=attempt, error="e"),
                    ]
                )
            )
        elif what == "worker_id":
            worker_id = data.draw(st.sampled_from(["", "w w", "w\t", "w" * 129]))
            command = Lease(now_ms=now, worker_id=worker_id)
        elif what == "queue":
            queue = data.draw(st.sampled_from(BAD_QUEUES))
            kind = data.draw(st.sampled_from([PauseQueue, ResumeQueue]))
            command = kind(now_ms=now, queue=queue)
        elif what == "node":
            command = AbandonNode(now_ms=now, node=data.draw(st.sampled_from(BAD_NODES)))
        elif what == "tick":
            command = Tick(
                now_ms=now,
                retention_ms=data.draw(st.sampled_from([-1, 0, limits.TIME_MS_MAX + 1])),
                finished_jobs_retained_max=data.draw(st.sampled_from([-1, 0, limits.JOBS_MAX + 1])),
            )
        else:
            # The time itself out of range; the clock does not move.
            bad_now = data.draw(st.sampled_from([-1, limits.NOW_MS_MAX + 1, limits.TIME_MS_MAX]))
            command = data.draw(
                st.sampled_from(
                    [
                        Lease(now_ms=bad_now, worker_id="w1"),
                        Tick(now_ms=bad_now),
                        Recover(now_ms=bad_now),
                        AbandonNode(now_ms=bad_now, node="n1"),
                        Cancel(now_ms=bad_now, job_id="a"),
                        PauseQueue(now_ms=bad_now, queue="q"),
                        Enqueue(now_ms=bad_now, handler="h"),
                    ]
                )
            )
        self.run(command)

    # -- after every step --------------------------------------------------------------

    @invariant()
    def same_state(self) -> None:
        check_state(self.state, self.oracle)


TestModelVsOracle = ModelVsOracle.TestCase


# -- regressions: disagreements found, replayed deterministically ----------------------
#
# Each test replays the shrunk command sequence of one disagreement through both sides
# (``replay_both`` asserts they agree at every step), then pins the decided outcome.


def rules_of(commands: Sequence[Command]) -> list[str | None]:
    """Replay through both (they must agree); the model's refusal rule per command, or None."""
    replay_both(commands)
    state, rules = initial_state(), []
    for command in commands:
        state, (kind, detail) = run_model(state, command)
        rules.append(detail if kind == "rejected" else None)
    return rules


def test_initial_states_agree() -> None:
    check_state(initial_state(), Oracle())


def test_regression_result_checked_after_the_fence() -> None:
    """Disagreement 1 -- the ORACLE was wrong.

    Found: ``Complete(now_ms=0, job_id='a', attempt=0, result_json='')`` on the empty
    state: model ``job_not_found``, oracle ``result_json_invalid``.  The first oracle
    checked a command's payload (result, jitter seed) before looking the job up, by
    analogy with Enqueue's "field checks first".  semantics.md names the job checks
    first ("the job must exist (job_not_found), be in_flight and its attempt must equal
    the command's (stale_attempt). Complete: result is valid JSON ...; Fail:
    jitter_seed in ..."), and a result for a stale attempt being refused as stale,
    whatever it carries, is the useful answer for a worker.  Oracle fixed.

    Since then the semantics changed (not a disagreement): a live Complete whose
    result cannot be stored is accepted as a failure of the attempt, so the last
    command is accepted; its jitter seed is checked first, as Fail's is.
    """
    assert rules_of(
        [
            Complete(now_ms=0, job_id="a", attempt=0, result_json=""),
            Enqueue(now_ms=0, handler="h", job_id="a"),
            Lease(now_ms=0, worker_id="w"),
            Complete(now_ms=0, job_id="a", attempt=2, result_json="{"),  # stale
            Fail(now_ms=0, job_id="a", attempt=0, error="e", jitter_seed=-1),  # stale
            Fail(now_ms=0, job_id="a", attempt=1, error="e", jitter_seed=2**64),  # live
            Complete(now_ms=0, job_id="a", attempt=1, result_json="{", jitter_seed=-1),
            Complete(now_ms=0, job_id="a", attempt=1, result_json="{"),  # live: fails it
        ]
    ) == [
        "job_not_found",
        None,
        None,
        "stale_attempt",
        "stale_attempt",
        "jitter_seed_out_of_range",
        "jitter_seed_out_of_range",
        None,
    ]


def test_regression_malformed_id_in_a_job_command() -> None:
    """Disagreement 2 -- the MODEL goes beyond semantics.md (the page is silent).

    Found: ``Cancel(now_ms=0, job_id='')``: model ``job_id_invalid``, oracle (reading
    the page literally: "the job must exist") ``job_not_found``.  The model checks the
    id of Cancel, Requeue, Complete and Fail as a token first (empty, white space or
    control -> job_id_invalid; over 128 bytes -> job_id_too_long), but not the reserved
    j<digits> shape, which derived ids have.  The model's rule is the more useful one
    and is kept; the oracle now does the same, and semantics.md should say so (reported
    to its owner).
    """
    assert rules_of(
        [
            Cancel(now_ms=0, job_id=""),
            Requeue(now_ms=0, job_id="a b"),
            Complete(now_ms=0, job_id="a" * 129, attempt=1),
            Fail(now_ms=0, job_id="a\x00", attempt=1, error="e"),
            Cancel(now_ms=0, job_id="j1"),  # the derived shape is a valid id to look up
        ]
    ) == ["job_id_invalid", "job_id_invalid", "job_id_too_long", "job_id_invalid", "job_not_found"]


def test_regression_format_character_in_id() -> None:
    """Disagreement 3 -- semantics.md is loose; the model's reading is kept.

    Found: ``Cancel(now_ms=0, job_id='a\\u200b')`` (after disagreement 2 was settled):
    model ``job_id_invalid``, oracle ``job_not_found``.  "No white space or control
    characters": the oracle first read "control" as Unicode category Cc; the model
    refuses every character that is not printable, which is white space plus all of
    category C (Cc control, Cf format such as U+200B ZERO WIDTH SPACE, Cs surrogate,
    Co private use, Cn unassigned).  Invisible and unassigned characters in ids are a
    hazard for operators, so the model's reading is the sensible one; the oracle now
    refuses category C, and semantics.md should say "no white space, and only printable
    characters" (reported).  Applies to every token: ids, queues, handler, keys.
    """
    assert rules_of(
        [
            Cancel(now_ms=0, job_id="a\u200b"),
            Enqueue(now_ms=0, handler="h", job_id="a\ue000"),  # private use
            Enqueue(now_ms=0, handler="h\u0378"),  # unassigned
            Enqueue(now_ms=0, handler="h", idempotency_key="k\u00ad"),  # soft hyphen, Cf
            Lease(now_ms=0, worker_id="w\u2028"),  # line separator: white space
        ]
    ) == [
        "job_id_invalid",
        "job_id_invalid",
        "handler_invalid",
        "idempotency_key_invalid",
        "worker_id_invalid",
    ]


def test_regression_tick_parameters_in_range() -> None:
    """Disagreement 4 -- the MODEL goes beyond semantics.md (the page is silent).

    Seen in model/decide.py after the oracle was written: a Tick refuses
    ``retention_ms`` outside [0, TIME_MS_MAX] and ``finished_jobs_retained_max`` outside
    [0, JOBS_MAX].  Reasonable bounds; the oracle adopts them; semantics.md should list
    them (reported).
    """
    assert rules_of(
        [
            Tick(now_ms=0, retention_ms=-1),
            Tick(now_ms=0, retention_ms=limits.TIME_MS_MAX + 1),
            Tick(now_ms=0, finished_jobs_retained_max=-1),
            Tick(now_ms=0, finished_jobs_retained_max=limits.JOBS_MAX + 1),
            Tick(now_ms=0, retention_ms=0, finished_jobs_retained_max=0),
        ]
    ) == [
        "retention_ms_out_of_range",
        "retention_ms_out_of_range",
        "finished_jobs_retained_max_out_of_range",
        "finished_jobs_retained_max_out_of_range",
        None,
    ]


def test_regression_huge_attempt_is_stale() -> None:
    """Disagreement 5 -- the MODEL was wrong by semantics.md (fixed in bb7a12c).

    Found after commit fafdda0 ("attempts must be integers"): on a job leased once,
    ``Complete(now_ms=0, job_id='a', attempt=2**63)``: model ``attempt_out_of_range``,
    oracle ``stale_attempt``.  semantics.md: "an attempt that is not an integer is
    attempt_invalid", otherwise a mismatch is ``stale_attempt``; the model's own comment
    says "Any integer that is not the live attempt is simply stale", but its code range
    checks the attempt to 64 bits.  This test was a strict expected failure until
    bb7a12c made the model check only that the attempt is an integer.
    """
    commands: list[Command] = [
        Enqueue(now_ms=0, handler="h", job_id="a"),
        Lease(now_ms=0, worker_id="w"),
        Complete(now_ms=0, job_id="a", attempt=2**63),
        Fail(now_ms=0, job_id="a", attempt=-(2**63) - 1, error="e"),
    ]
    assert rules_of(commands) == [None, None, "stale_attempt", "stale_attempt"]


def test_regression_attempt_must_be_an_integer() -> None:
    """Not a disagreement (semantics.md gained attempt_invalid in fafdda0; the oracle
    followed): True == 1 in Python, so only a type check keeps True from completing
    attempt 1.  The check comes after the job lookup and before the fence."""
    commands: list[Command] = [
        Complete(now_ms=0, job_id="a", attempt=True),
        Enqueue(now_ms=0, handler="h", job_id="a"),
        Lease(now_ms=0, worker_id="w"),
        Complete(now_ms=0, job_id="a", attempt=True),
        Fail(now_ms=0, job_id="a", attempt=1.0, error="e"),  # type: ignore[arg-type]
        Complete(now_ms=0, job_id="a", attempt=1),
        Complete(now_ms=0, job_id="a", attempt="1"),  # type: ignore[arg-type]
    ]
    assert rules_of(commands) == [
        "job_not_found",
        None,
        None,
        "attempt_invalid",
        "attempt_invalid",
        None,
        "attempt_invalid",
    ]


def test_tick_budgets_agree() -> None:
    """Beyond the alphabets of the machine: more than TICK_EXPIRIES_MAX leases expire at once.

    The first Tick expires exactly 1,000 leases (by expiry time, then id); the next Tick
    expires the rest.  Every job (max_attempts=1) is then dead, and forgetting too is
    cut at 1,000 per Tick.
    """
    n = limits.TICK_EXPIRIES_MAX + 5
    commands: list[Command] = [
        Enqueue(now_ms=0, handler="h", job_id=f"x{i:05d}", max_attempts=1, timeout_ms=10)
        for i in range(n)
    ]
    commands += [Lease(now_ms=i % 3, worker_id="w") for i in range(n)]
    commands += [
        Tick(now_ms=100, retention_ms=10**6),
        Tick(now_ms=100, retention_ms=10**6),
        Tick(now_ms=200, retention_ms=0),
        Tick(now_ms=200, retention_ms=0),
    ]
    state, oracle = replay_both(commands, check_each=False)
    assert len(state.jobs) == 0 and oracle.jobs == {}


def test_paused_queues_bound_agrees() -> None:
    """PAUSED_QUEUES_MAX, beyond the machine's three queues: the next new pause is refused,
    re-pausing a paused queue is still a no-op, and a resume makes room again."""
    commands: list[Command] = [
        PauseQueue(now_ms=0, queue=f"q{i}") for i in range(limits.PAUSED_QUEUES_MAX)
    ]
    commands += [
        PauseQueue(now_ms=0, queue="one-too-many"),
        PauseQueue(now_ms=0, queue="q0"),
        ResumeQueue(now_ms=0, queue="q0"),
        PauseQueue(now_ms=0, queue="one-too-many"),
    ]
    assert rules_of(commands)[-4:] == ["paused_queues_max_reached", None, None, None]
