"""Garbage-collector settings for a process that holds the queue's state.

Why: the state is a large graph of small immutable objects (jobs, their records, the
nodes of the persistent maps), acyclic by construction: reference counting frees every
part the moment the state stops using it.  CPython's *cyclic* collector does not know
that.  It runs a young collection every 700 net allocations, and each event allocates
dozens of objects; older generations are scanned whole, and with a large state each such
scan walks every job.  Measured (tools in docs/performance.md, 40,000 jobs, one worker,
no-op jobs): 376 µs of CPU per job with the interpreter's defaults, 109 µs with this
policy, about what the collector switched off entirely gives (91 µs).  The collector
was three quarters of the runtime's CPU.

What (``tune_for_long_lived_state``, called once the state is recovered):

* ``gc.freeze()``: every object alive now (the recovered state) moves to a permanent
  generation that collections skip.  Reference counting still frees them when the state
  drops them; only garbage *cycles* among them would never be collected, and the model
  makes none.
* young collections every ``YOUNG_THRESHOLD`` allocations instead of 700, full ones a
  hundred times rarer than that: cycles that do occur (an exception's traceback, a
  thread's bookkeeping) are still collected, just in larger, rarer batches.

This is a process-wide setting, so the runner applies it (``beaverq run``,
``impl.api.Runner``, which releases it at ``stop``: the last runner to stop puts back
the thresholds it found); a program that embeds a ``Controller`` decides for itself.
"""

from __future__ import annotations

import gc
import threading

from beaverq.model.errors import BrokenInvariant

#: Allocations between young collections (the interpreter's default is 700).
YOUNG_THRESHOLD = 50_000
#: Young collections per middle one (20), middle ones per full one (100): a full
#: collection comes once per 2,000 young ones, 100 million allocations.
MIDDLE_EVERY = 20
FULL_EVERY = 100


class _Tuning:
    """Who holds the tuning, and what to put back when the last one lets go.

    A process may run several runners (tests do); the first to tune saves the
    thresholds in effect, the last to release restores them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders = 0
        self._saved: tuple[int, int, int] = gc.get_threshold()

    def acquire(self) -> None:
        with self._lock:
            gc.collect()  # nothing that is garbage now gets frozen
            gc.freeze()  # every holder's state: each freezes what is alive at its start
            if self._holders == 0:
                self._saved = gc.get_threshold()
                gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_EVERY, FULL_EVERY)
            self._holders += 1

    def release(self) -> None:
        with self._lock:
            if not (self._holders > 0):
                raise BrokenInvariant("release_tuning() without tune_for_long_lived_state()")
            self._holders -= 1
            if self._holders == 0:
                gc.set_threshold(*self._saved)
                # Back into the collected generations: everything frozen, which includes
                # anything the program froze itself (gc has no partial unfreeze; such a
                # program should run its runners with tune_gc=False).
                gc.unfreeze()

    @property
    def holders(self) -> int:
        return self._holders


_TUNING = _Tuning()


def tune_for_long_lived_state() -> None:
    """Freeze what is alive now and space collections out (see the module doc).
    Pair every call with ``release_tuning()``."""
    _TUNING.acquire()


def release_tuning() -> None:
    """Undo one ``tune_for_long_lived_state``; the last one restores what was there."""
    _TUNING.release()


def tuning_holders() -> int:
    """How many tunings are in force (for tests)."""
    return _TUNING.holders
