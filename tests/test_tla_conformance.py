"""The Python model only does what the TLA+ spec allows, and reaches what the spec reaches.

Goal: show mechanically that ``beaverq.model`` conforms to ``tla/BeaverQueue.tla``.

Method, in three parts:

1. Trace validation.  Random runs of the model, each inside a simulated process with a
   WAL, a snapshot, workers and crashes (``tests/tla_traces.py``), are written as TLA+
   traces; ``tla/BeaverQueueTrace.tla`` makes TLC follow each trace with the spec's
   actions and check that every step lands in the recorded state.  All traces go into
   one TLC run.  Runs come from seeded ``random.Random`` drivers and from Hypothesis.
2. Broken models are rejected.  The same driver around a ``decide`` that ignores the
   attempt fence, and around a recovery that keeps dead workers' leases, produces
   traces TLC must refuse, at the step where the model went wrong.
3. State-space comparison.  In the scope of the CI configuration, a breadth-first search
   of the model and TLC's exhaustive search of the spec (the CI safety run, which prints
   every job table through ``tla/BeaverQueueCompare.tla``) must reach the same job
   tables (per job: status, attempt, attempts used, cancellation flag, budget), up to
   renaming the jobs.
"""

from __future__ import annotations

import collections
import functools
import itertools
import random
import re
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import tla_traces
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tla_tlc import (
    TLA_DIR,
    ModelValue,
    TlcResult,
    TlcUnavailable,
    ci_safety_run,
    parse_value,
    printed_values,
    run_tlc,
)
from tla_traces import ModelRun, Trace

from beaverq.model import Cancel, Command, Event, JobStatus, State, decide
from beaverq.spec.invariants import check_all

SPEC = TLA_DIR / "BeaverQueue.tla"
TRACE_MODULE = TLA_DIR / "BeaverQueueTrace.tla"
TRACE_CONFIG = TLA_DIR / "BeaverQueueTrace.cfg"

SEEDED_RUNS = 250
HYPOTHESIS_RUNS = 100
COMMANDS_PER_RUN = 70

# Every kind of step a trace can hold (the spec's actions, plus refusals).
SPEC_ACTIONS = (
    "JobEnqueued",
    "DelayElapsed",
    "LeaseGranted",
    "JobCompleted",
    "JobFailed",
    "LeaseExpired",
    "LeaseAbandoned",
    "LeaseReleased",
    "CancelRequested",
    "JobCancelled",
    "JobRequeued",
    "StaleResultRefused",
    "Sync",
    "Snapshot",
    "TruncateLog",
    "Crash",
    "Recover",
    "Refused",
)


def check_traces(traces: Sequence[Trace]) -> TlcResult:
    data = tla_traces.trace_module("BeaverQueueTraceData", traces)
    try:
        return run_tlc(
            TRACE_MODULE.name,
            TRACE_CONFIG.name,
            files={"BeaverQueueTraceData.tla": data},
            sources=[SPEC, TRACE_MODULE, TRACE_CONFIG],
            check_deadlock=True,  # a trace the spec cannot follow ends in a deadlock
        )
    except TlcUnavailable as missing:
        pytest.fail(f"cannot run TLC: {missing}")


def rejected_step(result: TlcResult) -> tuple[int, int]:
    """(trace number, step number), both 1-based, where TLC got stuck."""
    assert result.deadlock, result.explain()
    last = result.error_states()[-1]
    return int(last["t"]), int(last["i"])


def hypothesis_traces(count: int) -> list[Trace]:
    """``count`` runs whose every choice Hypothesis draws."""
    traces: list[Trace] = []

    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def collect(data: Any) -> None:
        run = ModelRun(tla_traces.DataChooser(data))
        run.run(COMMANDS_PER_RUN)
        traces.append(Trace.of(f"hypothesis {len(traces) + 1}", run))

    collect()
    return traces


def test_model_runs_are_behaviours_of_the_spec() -> None:
    # The seeded runs also check the spec/ invariants on every in-memory state.
    traces = tla_traces.generate(
        range(SEEDED_RUNS), COMMANDS_PER_RUN, functools.partial(ModelRun, check=check_all)
    )
    traces += hypothesis_traces(HYPOTHESIS_RUNS)
    actions = collections.Counter(step["act"] for trace in traces for step in trace.steps)
    steps = sum(actions.values())
    print(f"\n{len(traces)} model runs, {steps} steps: {dict(sorted(actions.items()))}")

    result = check_traces(traces)
    if not result.ok and result.deadlock:
        number, step = rejected_step(result)
        trace = traces[number - 1]
        pytest.fail(
            f"TLC rejected step {step} of the run from {trace.origin}: "
            f"{trace.steps[step - 1]}\n{result.explain()}"
        )
    assert result.ok, result.explain()
    print(f"TLC accepted all {len(traces)} traces: {result.summary()}")

    # The runs exercise every action the spec has, crashes and recovery included.
    for action in SPEC_ACTIONS:
        assert actions[action] >= 10, (action, actions)
    assert result.distinct is not None and result.distinct >= steps


def broken_traces(make_run: Callable[[tla_traces.Chooser], ModelRun], wanted: int) -> list[Trace]:
    """Runs of a broken model, keeping those where the model did go wrong."""
    traces = []
    for seed in range(2_000):
        run = make_run(random.Random(seed))
        run.run(COMMANDS_PER_RUN)
        if run.deviations:
            traces.append(Trace.of(f"seed {seed}", run))
        if len(traces) == wanted:
            return traces
    raise AssertionError(f"only {len(traces)} of 2000 runs exercised the bug")


@pytest.mark.parametrize(
    "variant",
    ["decide ignores the attempt fence", "recovery keeps dead workers' leases"],
)
def test_broken_model_is_rejected(variant: str) -> None:
    make_run: Callable[[tla_traces.Chooser], ModelRun]
    if variant == "decide ignores the attempt fence":

        def make_run(rng: tla_traces.Chooser) -> ModelRun:
            return ModelRun(rng, decide=tla_traces.decide_without_fence)

    else:

        def make_run(rng: tla_traces.Chooser) -> ModelRun:
            return ModelRun(rng, abandon_on_recover=False)

    traces = broken_traces(make_run, wanted=40)
    result = check_traces(traces)
    number, step = rejected_step(result)
    trace = traces[number - 1]
    print(f"\n{variant}: TLC rejected step {step} of the run from {trace.origin}")
    # TLC stops at the first step the spec cannot take: the step where the model went
    # wrong, and not earlier.
    assert step == trace.deviations[0], (trace.deviations, step, result.explain())


# -- State-space comparison. ------------------------------------------------------------


def canonical(table: Sequence[Any]) -> tuple[Any, ...]:
    """A job table up to renaming the jobs (TLC explores one state per symmetry class)."""
    return min(tuple(order) for order in itertools.permutations(table))


def spec_tables(result: TlcResult) -> set[tuple[Any, ...]]:
    tables = set()
    for printed in printed_values(result.output, "table"):
        jobs = sorted(printed, key=lambda job: job.name)
        tables.add(canonical([printed[job] for job in jobs]))
    return tables


def test_model_and_spec_reach_the_same_job_tables() -> None:
    try:
        result = ci_safety_run()  # shared with tests/test_tla.py: one TLC run for both
    except TlcUnavailable as missing:
        pytest.fail(f"cannot run TLC: {missing}")
    assert result.ok, result.explain()
    spec = spec_tables(result)

    reached, nodes = tla_traces.reachable_projections()
    model = {canonical(table) for table in reached}
    print(
        f"\nspec: {len(spec)} job tables in {result.distinct} states ({result.summary()}); "
        f"model: {len(model)} job tables in {nodes} search nodes"
    )
    only_spec, only_model = sorted(spec - model), sorted(model - spec)
    assert not only_spec and not only_model, (
        f"{len(only_spec)} tables only the spec reaches, e.g. {only_spec[:5]}; "
        f"{len(only_model)} only the model reaches, e.g. {only_model[:5]}"
    )


def test_comparison_sees_a_model_that_reaches_less() -> None:
    """The comparison is not vacuous: a model that ignores cancellation of running jobs
    misses every table with a cancellation pending, and the comparison says so."""

    def decide_ignoring_cancel_of_running_jobs(state: State, command: Command) -> tuple[Event, ...]:
        job = state.jobs.get(command.job_id) if isinstance(command, Cancel) else None
        if job is not None and job.status is JobStatus.IN_FLIGHT:
            return ()
        return decide(state, command)

    try:
        spec = spec_tables(ci_safety_run())
    except TlcUnavailable as missing:
        pytest.fail(f"cannot run TLC: {missing}")
    reached, _ = tla_traces.reachable_projections(decide_=decide_ignoring_cancel_of_running_jobs)
    model = {canonical(table) for table in reached}
    missing_tables = spec - model
    assert model < spec
    assert all(any(job[3] for job in table) for table in missing_tables)


def test_comparison_scope_is_the_ci_scope() -> None:
    """The model search and the CI configuration explore the same scope."""
    text = (TLA_DIR / "BeaverQueue.cfg").read_text()
    constants = dict(re.findall(r"^\s+(\w+) = (.+)$", text, flags=re.MULTILINE))
    assert constants["Jobs"].count(",") + 1 == len(tla_traces.COMPARE_JOB_IDS)
    assert constants["Budgets"] == tla_traces.tla(set(tla_traces.COMPARE_BUDGETS))
    assert int(constants["MaxRequeues"]) == tla_traces.COMPARE_REQUEUES_MAX
    assert int(constants["MaxCrashes"]) == tla_traces.COMPARE_RECOVERS_MAX
    assert int(constants["MaxReleases"]) == tla_traces.COMPARE_RELEASES_MAX
    # Enough workers that the spec can run every job at once, as the model can.
    assert constants["Workers"].count(",") + 1 >= len(tla_traces.COMPARE_JOB_IDS)


def test_value_reader_reads_what_tlc_prints() -> None:
    text = '[ a |-> <<"x", 1, TRUE>>, b |-> (j1 :> {} @@ j2 :> {w1}) ]'
    value = parse_value(text)
    assert value["a"] == ("x", 1, True)
    assert value["b"] == {ModelValue("j1"): frozenset(), ModelValue("j2"): {ModelValue("w1")}}
