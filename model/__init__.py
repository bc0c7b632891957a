"""The pure model of beaverq: the job lifecycle and recovery as an event-sourced
state machine.

Read it in this order: ``lifecycle`` (the states and the table of moves),
``events`` and ``commands`` (the vocabulary), ``state`` (the value), ``decide``
(every decision), ``evolve`` (applying a decision), ``recovery`` (after a crash).
Nothing in this package performs I/O, reads a clock, starts a thread or draws a
random number: time, ids and jitter seeds arrive inside commands.
"""

from __future__ import annotations

from .backoff import backoff_ms
from .commands import (
    COMMAND_TYPES,
    AbandonNode,
    Cancel,
    Command,
    Complete,
    Enqueue,
    Fail,
    Lease,
    PauseQueue,
    Recover,
    Release,
    Requeue,
    ResumeQueue,
    Tick,
)
from .decide import decide, derived_job_id, enqueued_job_id, next_ready_job
from .errors import BrokenInvariant, Rejected, Rejection
from .events import (
    EVENT_TYPES,
    JOB_EVENT_TYPES,
    QUEUE_EVENT_TYPES,
    CancelRequested,
    DelayElapsed,
    Event,
    JobCancelled,
    JobCompleted,
    JobEnqueued,
    JobEvent,
    JobFailed,
    JobForgotten,
    JobRequeued,
    LeaseAbandoned,
    LeaseExpired,
    LeaseGranted,
    LeaseReleased,
    QueueEvent,
    QueuePaused,
    QueueResumed,
)
from .evolve import apply_event, evolve, replay
from .jobs import AttemptRecord, Job, JobSpec
from .lifecycle import FINISHED, TRANSITIONS, UNFINISHED, JobStatus, edges
from .nodes import WORKER_SEPARATOR, check_node_name, node_of_worker, worker_id_of
from .recovery import abandon_leases, abandon_node_leases
from .state import Counts, State, initial_state

__all__ = [
    "COMMAND_TYPES",
    "EVENT_TYPES",
    "FINISHED",
    "JOB_EVENT_TYPES",
    "QUEUE_EVENT_TYPES",
    "TRANSITIONS",
    "UNFINISHED",
    "WORKER_SEPARATOR",
    "AbandonNode",
    "AttemptRecord",
    "BrokenInvariant",
    "Cancel",
    "CancelRequested",
    "Command",
    "Complete",
    "Counts",
    "DelayElapsed",
    "Enqueue",
    "Event",
    "Fail",
    "Job",
    "JobCancelled",
    "JobCompleted",
    "JobEnqueued",
    "JobEvent",
    "JobFailed",
    "JobForgotten",
    "JobRequeued",
    "JobSpec",
    "JobStatus",
    "Lease",
    "LeaseAbandoned",
    "LeaseExpired",
    "LeaseGranted",
    "LeaseReleased",
    "PauseQueue",
    "QueueEvent",
    "QueuePaused",
    "QueueResumed",
    "Recover",
    "Rejected",
    "Rejection",
    "Release",
    "Requeue",
    "ResumeQueue",
    "State",
    "Tick",
    "abandon_leases",
    "abandon_node_leases",
    "apply_event",
    "backoff_ms",
    "check_node_name",
    "decide",
    "derived_job_id",
    "edges",
    "enqueued_job_id",
    "evolve",
    "initial_state",
    "next_ready_job",
    "node_of_worker",
    "replay",
    "worker_id_of",
]
