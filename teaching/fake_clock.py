"""A clock that moves only when told to: time for simulations and tests.

The model never reads a clock; every command carries ``now_ms``.  The shell that
builds those commands asks a clock for the time.  In a simulation that clock is
this one: an integer count of milliseconds that the simulation loop advances,
so a run is a function of its seed and never of how fast the machine is.  The
controller's deterministic tests (tests/test_controller.py) drive it the same way: it
has both of the runtime's times (``beaverq.impl.runtime.clock.Clock``).
"""

from __future__ import annotations


class FakeClock:
    """Integer milliseconds since an arbitrary epoch; monotonic by construction.

    ``monotonic()`` is ``now_ms() / 1000``: in a test one fake time is enough, and
    keeping the two in step means a tick interval and a lease timeout are measured
    on the same axis.
    """

    def __init__(self, start_ms: int = 0) -> None:
        if start_ms < 0:
            raise ValueError(f"start_ms must be >= 0, got {start_ms}")
        self._now_ms = start_ms

    def now_ms(self) -> int:
        return self._now_ms

    def advance_to(self, at_ms: int) -> None:
        # Going back would let a later command carry an earlier time than the
        # events already in the log; real clocks used by the runtime are monotonic too.
        if at_ms < self._now_ms:
            raise ValueError(f"time cannot go back: now {self._now_ms} ms, asked {at_ms} ms")
        self._now_ms = at_ms

    def advance(self, by_ms: int) -> None:
        if by_ms < 0:
            raise ValueError(f"time cannot go back: advance by {by_ms} ms")
        self._now_ms += by_ms

    def monotonic(self) -> float:
        return self.now_ms() / 1000.0
