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
``impl.api.Runner``); a program that embeds a ``Controller`` decides for itself.
"""

from __future__ import annotations

import gc

#: Allocations between young collections (the interpreter's default is 700).
YOUNG_THRESHOLD = 50_000
#: Young collections per middle one, middle ones per full one.
MIDDLE_EVERY = 20
FULL_EVERY = 100
#: What the interpreter had before any tuning (CPython 3.11: 700, 10, 10).
INTERPRETER_DEFAULTS = gc.get_threshold()


def tune_for_long_lived_state() -> None:
    """Freeze what is alive now and space collections out (see the module doc)."""
    gc.collect()  # nothing that is garbage now gets frozen
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_EVERY, FULL_EVERY)


def restore_interpreter_defaults() -> None:
    """Undo ``tune_for_long_lived_state`` (for benchmarks and tests that compare)."""
    gc.unfreeze()
    gc.set_threshold(*INTERPRETER_DEFAULTS)
