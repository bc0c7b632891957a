"""Every bound the model enforces, in one place.

TigerBeetle's rule "put a limit on everything" applied to a job queue: each number
below caps a size, a count or a loop, and every rejection that quotes a limit names
it by the constant's name.  Names carry their unit and qualifier last
(``timeout_ms_max``, never ``max_timeout``).  The checks at the bottom relate the
limits to each other, so an edit that makes them inconsistent fails at import time.
"""

from __future__ import annotations

from .errors import BrokenInvariant

# Identifiers and names (measured in UTF-8 bytes, because that is what reaches disk).
JOB_ID_BYTES_MAX = 128
QUEUE_NAME_BYTES_MAX = 64
HANDLER_NAME_BYTES_MAX = 200
WORKER_ID_BYTES_MAX = 128
# A cluster node's name: shorter than a worker id, which is the name plus "-w<index>"
# (model/nodes.py checks that the longest one fits).
NODE_NAME_BYTES_MAX = 64
IDEMPOTENCY_KEY_BYTES_MAX = 200

# Payloads.
ARGS_JSON_BYTES_MAX = 64 * 1024
RESULT_JSON_BYTES_MAX = 64 * 1024
# How deep arrays and objects may nest in a JSON payload (args, result).  Python's
# JSON reader and writer recurse once per level and fail near 1,000 levels, in
# whichever process meets the text first (a CLI, the runner, a worker): the text is
# refused before any of them parses it.  No job's arguments need more.
JSON_DEPTH_MAX = 64
ERROR_BYTES_MAX = 4 * 1024

# Scheduling.  Higher priority is leased first.
PRIORITY_MIN = -10
PRIORITY_MAX = 10
PRIORITY_DEFAULT = 0

ATTEMPTS_MAX = 100
ATTEMPTS_DEFAULT = 3

TIMEOUT_MS_MIN = 1
TIMEOUT_MS_MAX = 24 * 3600 * 1000
TIMEOUT_MS_DEFAULT = 30_000

DELAY_MS_MAX = 366 * 24 * 3600 * 1000

BACKOFF_BASE_MS_DEFAULT = 1_000
BACKOFF_CAP_MS_DEFAULT = 5 * 60 * 1000
BACKOFF_CAP_MS_MAX = 24 * 3600 * 1000

# Time is an integer count of milliseconds since an epoch the caller chooses.
# 2**53 keeps every timestamp exact in a JSON double as well.
TIME_MS_MAX = 2**53
# A command's ``now_ms`` stays below half of that, so every time derived from it
# (now + delay, + backoff, + timeout, + retention is compared, never stored) is
# still at most TIME_MS_MAX.
NOW_MS_MAX = TIME_MS_MAX // 2

# Sizes of the state.
JOBS_MAX = 10_000_000
IN_FLIGHT_MAX = 10_000
PAUSED_QUEUES_MAX = 1_000

# Retention of finished (completed, dead, cancelled) jobs.
RETENTION_MS_DEFAULT = 7 * 24 * 3600 * 1000
FINISHED_JOBS_RETAINED_MAX_DEFAULT = 100_000

# Per-job history: the most recent attempts are kept, older ones are dropped.
ATTEMPT_HISTORY_MAX = 20

# Work one Tick may do.  A Tick after a long outage finds much to do; the budget
# bounds the size of one decision, and the next Tick carries on where it stopped.
TICK_EXPIRIES_MAX = 1_000
TICK_PROMOTIONS_MAX = 1_000
TICK_FORGETS_MAX = 1_000


# Relations between limits: each would make some rule meaningless if broken.  They
# are checked when the module is imported, with or without ``python -O``.
def _check_relations() -> None:
    relations = {
        "PRIORITY_MIN <= PRIORITY_DEFAULT <= PRIORITY_MAX": (
            PRIORITY_MIN <= PRIORITY_DEFAULT <= PRIORITY_MAX
        ),
        "1 <= ATTEMPTS_DEFAULT <= ATTEMPTS_MAX": 1 <= ATTEMPTS_DEFAULT <= ATTEMPTS_MAX,
        "TIMEOUT_MS_MIN <= TIMEOUT_MS_DEFAULT <= TIMEOUT_MS_MAX": (
            TIMEOUT_MS_MIN <= TIMEOUT_MS_DEFAULT <= TIMEOUT_MS_MAX
        ),
        "0 <= BACKOFF_BASE_MS_DEFAULT <= BACKOFF_CAP_MS_DEFAULT <= BACKOFF_CAP_MS_MAX": (
            0 <= BACKOFF_BASE_MS_DEFAULT <= BACKOFF_CAP_MS_DEFAULT <= BACKOFF_CAP_MS_MAX
        ),
        # decide refuses a lease at IN_FLIGHT_MAX, and every lease is of a job in the state.
        "IN_FLIGHT_MAX <= JOBS_MAX": IN_FLIGHT_MAX <= JOBS_MAX,
        # A job's deadline (now + delay + backoff + timeout) must stay a representable time.
        "NOW_MS_MAX + DELAY_MS_MAX + BACKOFF_CAP_MS_MAX + TIMEOUT_MS_MAX <= TIME_MS_MAX": (
            NOW_MS_MAX + DELAY_MS_MAX + BACKOFF_CAP_MS_MAX + TIMEOUT_MS_MAX <= TIME_MS_MAX
        ),
    }
    broken = [relation for relation, holds in relations.items() if not holds]
    if broken:
        raise BrokenInvariant(f"limits.py: relations broken: {'; '.join(broken)}")


_check_relations()
