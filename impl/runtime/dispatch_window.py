"""The dispatch window: how many leased tasks the controller lets the pool hold at once.

Flow control, not a lifecycle decision: the model decides *whether* a job may be
leased; this decides only how far ahead of the workers the controller leases.

Why lease ahead at all: a worker may start a job only once its ``LeaseGranted`` is
durable (R2 in impl/runtime/controller.py), and a durable append costs one fsync, a few
milliseconds here.  Leasing only for idle workers hands out ``workers`` jobs per fsync,
so short jobs run at ``workers / fsync latency`` whatever the CPU could do (measured:
4 workers, no-op jobs, about 2,100 jobs/s).  Leasing a few fsyncs ahead fills a whole
group-commit batch instead.

Why not lease far ahead: a lease's clock starts when it is granted.  A task waiting in
the pool's queue spends its timeout waiting, and at shutdown it is handed back.  So the
window admits waiting tasks only as many as the workers can *start* within
``horizon_s``, judged by the handlers' recent running times: for no-op jobs that is the
whole pool's capacity; for one-second jobs, none beyond one per worker.
"""

from __future__ import annotations

import math

import attrs

#: How soon a task leased ahead should start: a few fsyncs' worth.
HORIZON_S_DEFAULT = 0.05
#: Weight of the newest running time in the moving average.
SMOOTHING = 0.2
#: The safety net (loops.withdraw_waiting): a task that has waited this fraction
#: of its timeout without starting is taken back and its lease released, uncounted,
#: well before the lease could expire and count.  The window is sized from *past*
#: running times, so after a run of quick jobs a batch of slow ones can be leased
#: further ahead than the workers will start them.
WITHDRAW_AFTER = 0.5


@attrs.define
class DispatchWindow:
    workers: int
    capacity: int  # the pool's: tasks it holds at most, running plus waiting
    horizon_s: float = HORIZON_S_DEFAULT
    # Exponentially weighted mean running time; None until a first result arrives,
    # so a runner starts cautious (one task per worker) and widens as it learns.
    mean_duration_s: float | None = None

    def __attrs_post_init__(self) -> None:
        if not 1 <= self.workers <= self.capacity:
            raise ValueError(f"need 1 <= workers <= capacity, got {self.workers}, {self.capacity}")
        if not (math.isfinite(self.horizon_s) and self.horizon_s >= 0):
            raise ValueError(f"horizon_s must be a finite number >= 0, got {self.horizon_s}")

    def observe(self, duration_s: float) -> None:
        """Fold in one handler's running time (seconds, >= 0)."""
        duration_s = max(0.0, duration_s)
        mean = self.mean_duration_s
        self.mean_duration_s = (
            duration_s if mean is None else mean + SMOOTHING * (duration_s - mean)
        )

    def size(self) -> int:
        """Tasks the pool may hold now: at least one per worker, at most its capacity."""
        mean = self.mean_duration_s
        if mean is None or self.horizon_s == 0:
            return self.workers  # nothing known yet, or leasing ahead turned off
        if mean <= 0.0:
            return self.capacity
        # Little's law: in horizon_s, the workers start workers * horizon_s / mean tasks.
        ahead = self.workers * self.horizon_s / mean
        return min(self.capacity, self.workers + int(min(ahead, self.capacity)))
