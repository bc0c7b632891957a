"""The lifecycle is written twice; these tests hold the two copies together.

Goal: ``model/lifecycle.py`` (the ``TRANSITIONS`` table that ``evolve`` asserts
against) and ``spec/lifecycle.py`` (an independent ``transitions.Machine``) state
the same relation, the model actually moves jobs only along it, and the generated
diagram in ``docs/lifecycle.md`` shows it.

Method:

1. compare the two edge sets, edge for edge, with a diff in the failure message;
2. fire every (status, trigger) pair that has no edge at the spec machine and
   require ``MachineError`` with the status unchanged (the negative space);
3. walk a fixed scenario that takes every edge of the table through ``decide`` and
   ``evolve``, and random command runs (a small local strategy), mirroring each job
   in a ``LifecycleMachine`` that must accept every move the model makes;
4. run ``docs/make_lifecycle_diagram.py --check``, and show that it notices a
   stale file.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from transitions import MachineError

from beaverq.model import (
    JOB_EVENT_TYPES,
    TRANSITIONS,
    Cancel,
    Command,
    Complete,
    Enqueue,
    Event,
    Fail,
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
    edges,
    evolve,
    initial_state,
)
from beaverq.model.lifecycle import triggers
from beaverq.spec.history import job_id_of
from beaverq.spec.lifecycle import STATES, TRIGGERS, LifecycleMachine, spec_edges

REPO_ROOT = Path(__file__).resolve().parent.parent
DIAGRAM_SCRIPT = REPO_ROOT / "docs" / "make_lifecycle_diagram.py"
LIFECYCLE_DOC = REPO_ROOT / "docs" / "lifecycle.md"

ModelEdgeText = tuple[str, str, str]


def model_edges() -> frozenset[ModelEdgeText]:
    """The model's table with statuses as their string values, as the spec names them."""
    return frozenset((source.value, name, target.value) for source, name, target in edges())


def _edge_lines(found: Iterable[ModelEdgeText]) -> str:
    return "\n".join(f"    {s} --{e}--> {t}" for s, e, t in sorted(found)) or "    (none)"


# -- 1. The two tables are one relation. -----------------------------------------------


def test_model_table_equals_spec_machine() -> None:
    """Every edge of the model's table is an edge of the spec machine, and back."""
    model, spec = model_edges(), spec_edges()
    assert model == spec, (
        "model/lifecycle.py and spec/lifecycle.py disagree.\n"
        f"  only in the model's TRANSITIONS:\n{_edge_lines(model - spec)}\n"
        f"  only in the spec machine:\n{_edge_lines(spec - model)}"
    )


def test_spec_names_the_model_statuses_and_job_events() -> None:
    """Same vocabulary: the machine's states are the JobStatus values and its triggers
    are the job event classes, so an edge cannot hide behind a spelling."""
    assert set(STATES) == {status.value for status in JobStatus}
    assert set(TRIGGERS) == {event_type.__name__ for event_type in JOB_EVENT_TYPES}
    assert {trigger for _, trigger, _ in spec_edges()} == set(TRIGGERS)


# -- 2. Both the positive and the negative space of the machine. -----------------------

_ILLEGAL_PAIRS = [
    (status, trigger)
    for status in STATES
    for trigger in TRIGGERS
    if (JobStatus(status), trigger) not in triggers()
]


def test_illegal_pairs_are_most_pairs() -> None:
    """Guards the next test against being vacuous: 7 states x 12 triggers, 15 legal
    pairs, which lead along 24 edges (one table entry per recorded target)."""
    assert len(_ILLEGAL_PAIRS) == len(STATES) * len(TRIGGERS) - len(triggers())
    assert len(triggers()) == 15
    assert len(TRANSITIONS) == len(edges()) == 24


@pytest.mark.parametrize(("status", "trigger"), _ILLEGAL_PAIRS)
def test_illegal_trigger_raises_machine_error(status: str, trigger: str) -> None:
    """A trigger with no edge from the status raises, whatever target is asked for,
    and the status is unchanged."""
    for target in STATES:
        job = LifecycleMachine(status)
        with pytest.raises(MachineError):
            job.fire(trigger, target)
        assert job.status == status


@pytest.mark.parametrize(("source", "trigger", "target"), sorted(spec_edges()))
def test_every_edge_fires(source: str, trigger: str, target: str) -> None:
    job = LifecycleMachine(source)
    assert job.fire(trigger, target) == target


@pytest.mark.parametrize(("source", "trigger"), sorted({(s, e) for s, e, _ in spec_edges()}))
def test_legal_trigger_to_an_unreachable_target_raises(source: str, trigger: str) -> None:
    """An event that may leave ``source`` still cannot lead just anywhere."""
    reachable = {t for s, e, t in spec_edges() if (s, e) == (source, trigger)}
    for target in sorted(set(STATES) - reachable):
        job = LifecycleMachine(source)
        with pytest.raises(MachineError, match="cannot lead to"):
            job.fire(trigger, target)
        assert job.status == source


def test_unknown_trigger_raises() -> None:
    job = LifecycleMachine("pending")
    with pytest.raises(MachineError, match="unknown trigger"):
        job.fire("QueuePaused", "pending")
    assert job.status == "pending"


# -- 3. The model moves jobs only along the machine's edges. ---------------------------


def run_commands(
    commands: Iterable[Command], state: State | None = None
) -> tuple[list[Event], list[State]]:
    """Decide and apply each command from ``state`` (the initial one by default); a
    rejected command leaves no trace.  Returns the events and the states around them:
    ``states[0]`` is ``state`` and ``states[i + 1]`` the state after ``events[i]``."""
    state = initial_state() if state is None else state
    events: list[Event] = []
    states = [state]
    for command in commands:
        try:
            decided = decide(state, command)
        except Rejected:
            continue
        for event in decided:
            state = evolve(state, event)
            events.append(event)
            states.append(state)
    return events, states


def mirror_in_spec_machines(events: Sequence[Event], states: Sequence[State]) -> set[ModelEdgeText]:
    """Fire each job event at a ``LifecycleMachine`` per job; return the edges walked.

    A move the spec machine does not allow raises ``MachineError`` here.  The job's
    machine must also agree with the model about where the job was before the move.
    """
    machines: dict[str, LifecycleMachine] = {}
    walked: set[ModelEdgeText] = set()
    for index, event in enumerate(events):
        job_id = job_id_of(event)
        if job_id is None:
            continue
        source = _status(states[index], job_id)
        target = _status(states[index + 1], job_id)
        machine = machines.setdefault(job_id, LifecycleMachine())
        assert machine.status == source, (event, machine.status, source)
        machine.fire(type(event).__name__, target)
        walked.add((source, type(event).__name__, target))
    return walked


def _status(state: State, job_id: str) -> str:
    job = state.jobs.get(job_id)
    return "absent" if job is None else job.status.value


def _every_edge_scenario() -> list[Command]:
    """One job at a time (so each Lease takes the job meant), taking every edge."""
    no_backoff = {"backoff_base_ms": 0, "backoff_cap_ms": 0}
    return [
        # a: pending -> in_flight -> completed.
        Enqueue(now_ms=0, handler="h", job_id="a"),
        Lease(now_ms=0, worker_id="w"),
        Complete(now_ms=0, job_id="a", attempt=1),
        # b: delayed -> pending -> in_flight -> delayed (backoff) -> cancelled.
        Enqueue(now_ms=0, handler="h", job_id="b", delay_ms=10, backoff_base_ms=10),
        Tick(now_ms=10),
        Lease(now_ms=10, worker_id="w"),
        Fail(now_ms=10, job_id="b", attempt=1, error="e"),
        Cancel(now_ms=10, job_id="b"),
        # c: failed to pending (zero backoff), then dead, requeued, cancelled while pending.
        Enqueue(now_ms=10, handler="h", job_id="c", max_attempts=2, **no_backoff),
        Lease(now_ms=10, worker_id="w"),
        Fail(now_ms=10, job_id="c", attempt=1, error="e"),
        Lease(now_ms=10, worker_id="w"),
        Fail(now_ms=10, job_id="c", attempt=2, error="e"),
        Requeue(now_ms=10, job_id="c"),
        Cancel(now_ms=10, job_id="c"),
        # d: cancel requested while in flight, then the failure cancels it.
        Enqueue(now_ms=20, handler="h", job_id="d"),
        Lease(now_ms=20, worker_id="w"),
        Cancel(now_ms=20, job_id="d"),
        Fail(now_ms=20, job_id="d", attempt=1, error="e"),
        # e: expiries to pending, to dead, and (after a requeue) to cancelled.
        Enqueue(now_ms=30, handler="h", job_id="e", max_attempts=2, timeout_ms=5),
        Lease(now_ms=30, worker_id="w"),
        Tick(now_ms=35),
        Lease(now_ms=35, worker_id="w"),
        Tick(now_ms=40),
        Requeue(now_ms=40, job_id="e"),
        Lease(now_ms=40, worker_id="w"),
        Cancel(now_ms=40, job_id="e"),
        Tick(now_ms=45),
        # f: abandoned leases to pending, to dead, and (after a requeue) to cancelled.
        Enqueue(now_ms=50, handler="h", job_id="f", max_attempts=2),
        Lease(now_ms=50, worker_id="w"),
        Recover(now_ms=50),
        Lease(now_ms=50, worker_id="w"),
        Recover(now_ms=50),
        Requeue(now_ms=50, job_id="f"),
        Lease(now_ms=50, worker_id="w"),
        Cancel(now_ms=50, job_id="f"),
        Recover(now_ms=50),
        # h: released back to pending (even on its last attempt), then released
        # with a cancellation requested: cancelled.
        Enqueue(now_ms=55, handler="h", job_id="h", max_attempts=1),
        Lease(now_ms=55, worker_id="w"),
        Release(now_ms=55, job_id="h", attempt=1),
        Lease(now_ms=55, worker_id="w"),
        Cancel(now_ms=55, job_id="h"),
        Release(now_ms=55, job_id="h", attempt=2),
        # g: dead at once; then everything finished is forgotten.
        Enqueue(now_ms=60, handler="h", job_id="g", max_attempts=1),
        Lease(now_ms=60, worker_id="w"),
        Fail(now_ms=60, job_id="g", attempt=1, error="e"),
        Tick(now_ms=60, retention_ms=0),
    ]


def test_scenario_walks_every_edge_through_the_model() -> None:
    """The model can take every edge of the table, and each move it makes is an edge
    the spec machine accepts.  Without this, equal tables could hide an edge that
    ``evolve`` never takes (or takes some other way)."""
    events, states = run_commands(_every_edge_scenario())
    walked = mirror_in_spec_machines(events, states)
    assert walked == spec_edges(), (
        f"edges the scenario misses:\n{_edge_lines(spec_edges() - walked)}\n"
        f"edges it takes outside the spec:\n{_edge_lines(walked - spec_edges())}"
    )
    assert not states[-1].jobs, "the final Tick forgets every finished job"


# A small local strategy of abstract steps, resolved against the state they meet:
# ``pick`` chooses among the jobs that fit the step (in-flight jobs for a result,
# dead ones for a requeue), so most steps do something instead of being rejected.
# Kinds repeat to weight them: a run needs many enqueues and leases to have jobs
# in flight for the other steps to act on.
_KINDS = (
    *["enqueue"] * 4,
    *["lease"] * 4,
    *["complete", "fail", "fail", "release", "tick", "tick", "cancel"],
    *["requeue", "pause", "resume", "recover"],
)


@attrs.frozen
class Step:
    kind: str
    pick: int  # which fitting job; for a tick, finished_jobs_retained_max
    number: int  # delay for an enqueue, jitter seed for a fail, retention for a tick
    advance_ms: int  # how far the clock moves before the step


steps = st.builds(
    Step,
    kind=st.sampled_from(_KINDS),
    pick=st.integers(0, 3),
    number=st.integers(0, 30),
    advance_ms=st.sampled_from([0, 0, 1, 5, 20, 100]),
)


# Hypothesis keeps lists short on its own (most under ten elements); a run needs
# tens of steps to get jobs through retries, expiry and retention, so the length
# is drawn first, uniformly.
plans = st.integers(0, 50).flatmap(lambda size: st.lists(steps, min_size=size, max_size=size))


def _pick(job_ids: Sequence[str], pick: int) -> str | None:
    return sorted(job_ids)[pick % len(job_ids)] if job_ids else None


def _command_for(step: Step, state: State, now_ms: int) -> Command | None:
    """The concrete command a step stands for in ``state``, or None when it has no
    job to act on."""
    jobs = state.jobs
    if step.kind == "enqueue":
        return Enqueue(
            now_ms=now_ms,
            handler="h",
            job_id=[None, None, "a", "b"][step.pick],
            queue=["q1", "q2"][step.number % 2],
            max_attempts=1 + step.pick % 2,
            timeout_ms=10,
            delay_ms=step.number if step.number % 3 == 0 else 0,
            backoff_base_ms=step.number % 5,
            backoff_cap_ms=4,
            idempotency_key="k" if step.pick == 3 else None,
        )
    if step.kind == "lease":
        return Lease(now_ms=now_ms, worker_id="w")
    if step.kind in ("complete", "fail", "release"):
        job_id = _pick(list(state.in_flight), step.pick)
        if job_id is None:
            return None
        attempt = jobs[job_id].attempt
        if step.kind == "complete":
            return Complete(now_ms=now_ms, job_id=job_id, attempt=attempt)
        if step.kind == "release":
            return Release(now_ms=now_ms, job_id=job_id, attempt=attempt)
        return Fail(
            now_ms=now_ms, job_id=job_id, attempt=attempt, error="e", jitter_seed=step.number
        )
    if step.kind == "tick":
        return Tick(
            now_ms=now_ms, retention_ms=step.number * 10, finished_jobs_retained_max=step.pick
        )
    if step.kind == "cancel":
        # Half the time aim at a job in flight: a cancel that waits for the
        # attempt's end is the path to most of the edges into ``cancelled``.
        aimed = list(state.in_flight) if step.number % 2 == 0 else []
        job_id = _pick(aimed or list(jobs), step.pick)
        return None if job_id is None else Cancel(now_ms=now_ms, job_id=job_id)
    if step.kind == "requeue":
        dead = [job_id for job_id, job in jobs.items() if job.status is JobStatus.DEAD]
        job_id = _pick(dead, step.pick)
        return None if job_id is None else Requeue(now_ms=now_ms, job_id=job_id)
    if step.kind in ("pause", "resume"):
        queue = ["q1", "q2"][step.pick % 2]
        if step.kind == "pause":
            return PauseQueue(now_ms=now_ms, queue=queue)
        return ResumeQueue(now_ms=now_ms, queue=queue)
    assert step.kind == "recover"
    return Recover(now_ms=now_ms)


def run_steps(plan: Sequence[Step]) -> tuple[list[Event], list[State]]:
    """Resolve and run each step in turn; the clock never goes back."""
    state = initial_state()
    events: list[Event] = []
    states = [state]
    now_ms = 0
    for step in plan:
        now_ms += step.advance_ms
        command = _command_for(step, state, now_ms)
        if command is None:
            continue
        more_events, more_states = run_commands([command], state)
        events += more_events
        states += more_states[1:]
        state = states[-1]
    return events, states


@given(plans)
def test_every_model_move_is_a_spec_edge(plan: list[Step]) -> None:
    """On random runs, every move ``evolve`` makes is accepted by the spec machine,
    job by job, and every edge walked is in the spec's edge set."""
    events, states = run_steps(plan)
    walked = mirror_in_spec_machines(events, states)
    assert walked <= spec_edges()


# -- 4. The generated diagram cannot drift. --------------------------------------------


def _run_diagram_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(DIAGRAM_SCRIPT), *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO_ROOT,
    )


def test_lifecycle_doc_is_fresh() -> None:
    """docs/lifecycle.md holds the diagram of today's table and a section per event."""
    proc = _run_diagram_script("--check")
    assert proc.returncode == 0, (
        f"docs/lifecycle.md is stale:\n{proc.stderr}{proc.stdout}"
        "Run: .venv/bin/python docs/make_lifecycle_diagram.py"
    )


def test_diagram_check_notices_a_stale_doc(tmp_path: Path) -> None:
    """The check above can fail: an edited diagram or a missing section is caught,
    and regenerating repairs the diagram."""
    doc = tmp_path / "lifecycle.md"
    shutil.copy(LIFECYCLE_DOC, doc)
    text = doc.read_text(encoding="utf-8")
    doc.write_text(text.replace("dead --> pending: JobRequeued", "dead --> pending: X"), "utf-8")
    assert _run_diagram_script("--check", "--doc", str(doc)).returncode == 1
    assert _run_diagram_script("--doc", str(doc)).returncode == 0
    assert doc.read_text(encoding="utf-8") == text
    doc.write_text(text.replace("### `JobRequeued`", "### Requeue"), "utf-8")
    proc = _run_diagram_script("--check", "--doc", str(doc))
    assert proc.returncode == 1
    assert "JobRequeued" in proc.stderr
