"""The runtime's clocks: where the shell gets the time it puts into commands.

The model never reads a clock (model/__init__.py): every command carries ``now_ms``.
The controller asks a :class:`Clock` for two different times, for two reasons:

``now_ms()``
    wall-clock milliseconds since the Unix epoch.  It goes into commands and so into
    the log: lease expiries, retry times and delays are absolute times that must
    keep their meaning across a restart, which only a wall clock gives.
``monotonic()``
    seconds on a clock that never jumps: for how long to wait (tick and snapshot
    intervals, a handler's deadline, a shutdown's grace).  A wall-clock step (NTP)
    must not make a loop spin or stall.

``SystemClock.now_ms`` never goes back within one process even if the wall clock
does: a command must not carry an earlier time than the events before it, or a
lease could be granted "before" the enqueue it follows.  (Across a restart the
clamp is lost; the model accepts any ``now_ms`` in range, and a step back only
delays expiries and retries by the size of the step.)

A clock that moves only when a test tells it to, so that a deterministic run
(tests/test_controller.py) is a function of its seed and never of the machine, is
``beaverq.teaching.fake_clock.FakeClock``: it is not part of the shell.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int:
        """Wall time in integer milliseconds (goes into commands, hence the log)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps (for intervals and deadlines)."""
        ...


class SystemClock:
    """The machine's clocks; ``now_ms`` clamped so that it never decreases."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = 0

    def now_ms(self) -> int:
        wall_ms = time.time_ns() // 1_000_000
        with self._lock:
            # Upholds: commands carry non-decreasing times (see the module doc).
            if wall_ms > self._last_ms:
                self._last_ms = wall_ms
            return self._last_ms

    def monotonic(self) -> float:
        return time.monotonic()
