"""TLC model-checks the cluster module (tla/BeaverQueueCluster.tla): beaverq on etcd.

Goal: the cluster's own invariants (one appender per epoch, every node's table the fold
of a prefix of the one log, acknowledged enqueues in the log exactly once, no job
completed twice, abandonment only for the leases of workers that died) hold in every
reachable state of the CI configuration; mapped onto BeaverQueue's variables, every
behaviour is a behaviour of BeaverQueue (the refinement, a PROPERTY); and each fence the
design relies on, taken out (the ``Bug`` constant), is caught by the check meant to catch
it.

Method: as tests/test_tla.py, whose helpers this reuses: TLC on each
``tla/BeaverQueueCluster*.cfg`` in a fresh directory, with BeaverQueue.tla beside the
module (it instantiates it).  The refinement has no name of its own in TLC's report: a
broken refinement is reported at the place in BeaverQueue.tla where the action it breaks
is written, ``[][NextWithLostWorkers]_vars``, and the tests name that ``Refinement``.
"""

from __future__ import annotations

import re

import pytest
from test_tla import SPEC, check, report
from tla_tlc import TLA_DIR, TlcResult

CLUSTER = TLA_DIR / "BeaverQueueCluster.tla"
CONFIG = "BeaverQueueCluster.cfg"
LIFECYCLE = "BeaverQueueClusterLifecycle.cfg"

# Where TLC reports a broken refinement: the action part of SafetySpecWithLostWorkers.
REFINEMENT_ACTION = "[][NextWithLostWorkers]_vars"

# Each fence taken out, the configuration that does it, and the invariant or property
# TLC must report (the first one it meets, breadth first).
KNOWN_BUGS = {
    "NoEpochFence": ("BeaverQueueCluster_NoEpochFence.cfg", "OneAppenderPerEpoch"),
    "NoHeadCompare": ("BeaverQueueCluster_NoHeadCompare.cfg", "Refinement"),
    "GlobalRecover": ("BeaverQueueCluster_GlobalRecover.cfg", "OnlyLostLeasesAbandoned"),
}


def check_cluster(config: str) -> TlcResult:
    return check(config, spec=CLUSTER, imports=[SPEC])


def violated(result: TlcResult) -> str | None:
    """The invariant or property TLC reported, with the refinement called by its name."""
    if result.violated_property == REFINEMENT_ACTION:
        return "Refinement"
    return result.violated_invariant or result.violated_property


def test_cluster_safety_and_refinement_hold() -> None:
    result = check_cluster(CONFIG)
    report(CONFIG, result)
    assert result.ok, result.explain()
    # The scope is not vacuous: tens of thousands of states (59,614 when written).
    assert result.distinct is not None and result.distinct > 20_000, result.summary()


def test_cluster_lifecycle_holds() -> None:
    """Every event, on one job: the actions BeaverQueueCluster.cfg leaves out are checked
    here, refinement included."""
    result = check_cluster(LIFECYCLE)
    report(LIFECYCLE, result)
    assert result.ok, result.explain()
    assert result.distinct is not None and result.distinct > 10_000, result.summary()


@pytest.mark.parametrize("bug", sorted(KNOWN_BUGS))
def test_known_cluster_bug_is_caught(bug: str) -> None:
    config, expected = KNOWN_BUGS[bug]
    result = check_cluster(config)
    report(config, result)
    assert violated(result) == expected, (
        f"Bug={bug}: expected TLC to report {expected} violated, got "
        f"{violated(result) or result.errors}\n{result.explain()}"
    )
    trace = result.error_states()
    assert len(trace) >= 2, result.explain()
    print(f"  {expected} violated after {len(trace) - 1} steps")


def test_cluster_appends_every_event_of_the_spec() -> None:
    """Goal: the cluster decides every event BeaverQueue has, by an action named after it.

    Method: read the event types of BeaverQueue.tla and the Event(...) calls of the
    cluster module; every type is appended, by the action of its name, except
    LeaseAbandoned, which AbandonNode appends (the node-scoped Recover)."""
    base = SPEC.read_text()
    event_types = re.search(r"EventTypes == \{(.*?)\}", base, flags=re.DOTALL)
    assert event_types is not None
    spec_events = set(re.findall(r'"(\w+)"', event_types.group(1)))

    text = CLUSTER.read_text()
    appended: dict[str, set[str]] = {}
    for action, body in re.findall(
        r"^(\w+)\([^)]*\) ==\n(.*?)(?=^\S|\Z)", text, flags=re.MULTILINE | re.DOTALL
    ):
        for event in re.findall(r'Event\("(\w+)"', body):
            appended.setdefault(event, set()).add(action)
    assert set(appended) == spec_events
    for event, actions in appended.items():
        assert actions == ({"AbandonNode"} if event == "LeaseAbandoned" else {event}), event


def test_every_cluster_configuration_is_checked() -> None:
    checked = {CONFIG, LIFECYCLE} | {config for config, _ in KNOWN_BUGS.values()}
    present = {path.name for path in TLA_DIR.glob("BeaverQueueCluster*.cfg")}
    assert present == checked
