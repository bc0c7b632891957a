"""The controller's options (every one has a default that serves a real runner)."""

from __future__ import annotations

import attrs

from beaverq.impl.storage.storage import SNAPSHOT_EVERY_EVENTS_DEFAULT
from beaverq.model import limits

from .dispatch_window import HORIZON_S_DEFAULT


@attrs.frozen(kw_only=True)
class ControllerOptions:
    """How a controller runs: its loops' periods, its snapshot policy, its retention."""

    # The node's name: worker ids are model.worker_id_of(runner_id, n); default p<pid>.
    runner_id: str | None = None
    tick_interval_s: float = 0.05  # the timeout loop's period
    snapshot_interval_s: float = 2.0  # the original design: "e.g. every 2 s"
    snapshot_every_events: int = SNAPSHOT_EVERY_EVENTS_DEFAULT
    # An interval snapshot waits for at least this many new events per job in the
    # state (see _snapshot_is_due); the every-N-events one never waits.
    snapshot_tail_per_job: float = 0.1
    retention_ms: int = limits.RETENTION_MS_DEFAULT
    finished_jobs_retained_max: int = limits.FINISHED_JOBS_RETAINED_MAX_DEFAULT
    result_batch_max: int = 1_000  # results decided under one lock hold
    # How soon a task leased ahead of the workers should start (impl/runtime/dispatch_window.py).
    dispatch_horizon_s: float = HORIZON_S_DEFAULT
    final_snapshot: bool = True  # on stop()
    jitter_seed: int | None = None  # seeds the retry-jitter draws (None: from the OS)
    # One node of a cluster (impl/cluster/node.py), where the log is shared and
    # workers on every node pull leases (impl/runtime/remote_leases.py).  Then this
    # controller abandons no lease at open (``Recover`` would abandon the live
    # nodes' leases too: the node issues ``AbandonNode`` for the dead ones), leases
    # to no local slot, and releases no lease at stop (they are other nodes').
    cluster_member: bool = False
