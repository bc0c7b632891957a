"""The job lifecycle, declared a second time, independently, with ``transitions``.

Theory of operation.  ``model/lifecycle.py`` owns the lifecycle: its ``TRANSITIONS``
table is what ``evolve`` asserts every move against.  A table checked only against
itself proves nothing, so this module states the same relation again in a different
notation, a ``transitions.Machine``, written from ``docs/semantics.md`` and not from
the model's code.  ``tests/test_lifecycle_agrees.py`` then requires the two to be
equal edge for edge, and requires every move ``evolve`` makes on random runs to be an
edge of this machine.  A typo in either table, or a new event added to one and not
the other, fails that test.

How the relation is read off.  ``spec_edges()`` builds a machine and walks the
machine's own ``events`` and their ``transitions``: the edges are what the library
registered, after it expanded multi-source entries, not a copy of the literal list
below.  So a declaration the library reads differently from how we meant it (a
misspelt state, a list where a string was meant) shows up as a difference.

Conventions.

* States are the strings of ``JobStatus`` values, including the pseudo-state
  ``"absent"`` (not in the state: before ``JobEnqueued``, after ``JobForgotten``).
  They are spelled out here rather than imported, to keep the declaration
  independent of the model.
* Triggers are event class names (``"JobEnqueued"``).  Queue events
  (``QueuePaused``, ``QueueResumed``) move no job and are not triggers.
* ``auto_transitions=False``: the library would otherwise add a ``to_<state>``
  trigger for every state, that is an edge from everywhere to everywhere.  With it
  off, and ``ignore_invalid_triggers`` left off, a trigger with no edge from the
  current state raises ``transitions.MachineError``.
* Several events have more than one target: the job's own data decides (see
  ``model/lifecycle.py``, second NB).  This module does not decide; it checks.  Each
  edge is declared separately with the condition "this is the target the caller
  asked for", so ``LifecycleMachine.fire(trigger, target)`` moves only along a
  declared edge, and the edge set is exactly the list of declarations.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from transitions import EventData, Machine, MachineError

from beaverq.model.errors import BrokenInvariant

if TYPE_CHECKING:
    # Only in the library's stubs: the shape of one transition declaration.
    from transitions.core import TransitionConfigDict

# The states, as strings.  Order matters only for readability of diagrams.
ABSENT = "absent"
PENDING = "pending"
DELAYED = "delayed"
IN_FLIGHT = "in_flight"
COMPLETED = "completed"
DEAD = "dead"
CANCELLED = "cancelled"

STATES: tuple[str, ...] = (ABSENT, PENDING, DELAYED, IN_FLIGHT, COMPLETED, DEAD, CANCELLED)

# The triggers: the events that move a job (every job event, from docs/semantics.md).
TRIGGERS: tuple[str, ...] = (
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
    "JobForgotten",
)

SpecEdge = tuple[str, str, str]  # (source, trigger, target)


def _is_requested_target(event_data: EventData) -> bool:
    """Condition on every edge: take it only if it leads where the caller said.

    With ``send_event=True`` the library passes one ``EventData``; it sets
    ``event_data.transition`` to the edge under test before calling this.
    """
    transition = event_data.transition
    if transition is None:
        raise BrokenInvariant("transitions evaluates conditions on a transition")
    return event_data.kwargs.get("target") == transition.dest


def _edge(trigger: str, source: str | list[str], target: str) -> TransitionConfigDict:
    """One declaration: ``trigger`` moves a job from ``source`` (one or several) to
    ``target``, provided the caller asked for ``target`` (see the module doc)."""
    return {
        "trigger": trigger,
        "source": source,
        "dest": target,
        "conditions": _is_requested_target,
    }


# Each line is one sentence of docs/semantics.md.  Where an event has several
# possible targets, each target is its own declaration.
_DECLARATIONS: list[TransitionConfigDict] = [
    # Enqueue: pending when ready_at <= now, else delayed.
    _edge("JobEnqueued", ABSENT, PENDING),
    _edge("JobEnqueued", ABSENT, DELAYED),
    # Tick, phase 2: a delayed job whose time has come becomes pending.
    _edge("DelayElapsed", DELAYED, PENDING),
    # Lease: the chosen pending job goes in flight.
    _edge("LeaseGranted", PENDING, IN_FLIGHT),
    # Complete: the live attempt succeeded.
    _edge("JobCompleted", IN_FLIGHT, COMPLETED),
    # Fail: cancelled if a cancellation was requested, dead if attempts are used
    # up, else a retry: delayed for a backoff, or pending when the backoff is 0.
    _edge("JobFailed", IN_FLIGHT, CANCELLED),
    _edge("JobFailed", IN_FLIGHT, DEAD),
    _edge("JobFailed", IN_FLIGHT, DELAYED),
    _edge("JobFailed", IN_FLIGHT, PENDING),
    # Tick, phase 1, and Recover: fate as for a failure, but a retry is immediate.
    _edge("LeaseExpired", IN_FLIGHT, CANCELLED),
    _edge("LeaseExpired", IN_FLIGHT, DEAD),
    _edge("LeaseExpired", IN_FLIGHT, PENDING),
    _edge("LeaseAbandoned", IN_FLIGHT, CANCELLED),
    _edge("LeaseAbandoned", IN_FLIGHT, DEAD),
    _edge("LeaseAbandoned", IN_FLIGHT, PENDING),
    # Release: the attempt is given back uncounted, so never dead; cancelled if a
    # cancellation was requested, else pending at once.
    _edge("LeaseReleased", IN_FLIGHT, CANCELLED),
    _edge("LeaseReleased", IN_FLIGHT, PENDING),
    # Cancel of an in-flight job: the job stays in flight, flagged.
    _edge("CancelRequested", IN_FLIGHT, IN_FLIGHT),
    # Cancel of a job no worker holds.
    _edge("JobCancelled", [PENDING, DELAYED], CANCELLED),
    # Requeue: only dead jobs, back to pending with a fresh budget.
    _edge("JobRequeued", DEAD, PENDING),
    # Tick, phase 3: a finished job leaves the state.
    _edge("JobForgotten", [COMPLETED, DEAD, CANCELLED], ABSENT),
]


def build_machine(model: object | None = None, initial: str = ABSENT) -> Machine:
    """A fresh machine over the declarations; ``model`` None builds it without a model
    (enough to read the edges off it)."""
    if initial not in STATES:
        raise BrokenInvariant(f"unknown initial state {initial!r}; states are {STATES}")
    return Machine(
        model=model,
        states=list(STATES),
        transitions=_DECLARATIONS,
        initial=initial,
        auto_transitions=False,
        send_event=True,
        model_attribute="status",
    )


def spec_edges() -> frozenset[SpecEdge]:
    """The relation as the library registered it: (source, trigger, target) edges."""
    machine = build_machine()
    found: set[SpecEdge] = set()
    for trigger, event in machine.events.items():
        for source, transitions in event.transitions.items():
            for transition in transitions:
                # Every declaration names a target; None would be an internal move.
                if transition.dest is None:
                    raise BrokenInvariant(f"{trigger} from {source!r} declares no target")
                found.add((source, trigger, transition.dest))
    if not found:
        raise BrokenInvariant("the machine registered no edges")
    return frozenset(found)


class LifecycleMachine:
    """One job's lifecycle as a small object, for docs and for checking runs.

    >>> job = LifecycleMachine()
    >>> job.fire("JobEnqueued", "pending")
    'pending'
    >>> job.fire("JobCompleted", "completed")
    Traceback (most recent call last):
    ...
    transitions.core.MachineError: "Can't trigger event JobCompleted from state pending!"

    ``fire`` moves only along a declared edge: a trigger with no edge from the
    current status, an unknown trigger, or a target the trigger cannot reach from
    here all raise ``MachineError`` and leave the status unchanged.
    """

    status: str  # set by the machine (model_attribute="status")

    def __init__(self, status: str = ABSENT) -> None:
        self.machine = build_machine(self, initial=status)
        if self.status != status:
            raise BrokenInvariant(f"the machine starts in {self.status!r}, not {status!r}")

    def fire(self, trigger: str, target: str) -> str:
        """Move along the edge (status, trigger, target); return the new status."""
        event = self.machine.events.get(trigger)
        if event is None:
            raise MachineError(f"unknown trigger {trigger!r}; triggers are {TRIGGERS}")
        source = self.status
        # Raises MachineError itself when no edge of ``trigger`` leaves ``source``.
        moved = event.trigger(self, target=target)
        if not moved:
            # An edge of ``trigger`` leaves ``source``, but none leads to ``target``.
            reachable = sorted(
                str(t.dest) for t in self.machine.get_transitions(trigger, source=source)
            )
            raise MachineError(
                f"{trigger} from {source!r} cannot lead to {target!r}, only to {reachable}"
            )
        if self.status != target:
            raise BrokenInvariant(
                f"{trigger} from {source!r} to {target!r} left the machine in {self.status!r}"
            )
        return self.status
