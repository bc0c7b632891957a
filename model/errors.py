"""The two kinds of failure in the model, and the policy that separates them.

1. An *expected* refusal: a command that is malformed, out of bounds, or not
   allowed in the job's current state.  ``decide`` raises :class:`Rejected`.  The
   state is untouched (the model is pure, so this holds by construction, and the
   tests check it anyway).  The message names the command, the job, the job's
   state and the rule broken, so an operator can act on it without reading code.
   Every rule has a name below; callers that react to a rule test membership in a
   named set (``STALE_RESULT_RULES``), never compare strings they typed themselves.
2. A *broken invariant*: something that cannot happen unless the code or the log
   is wrong.  That raises :class:`BrokenInvariant`: loud, never caught, never
   repaired.  It is an ``if``, not an ``assert``, on purpose: ``python -O`` strips
   every ``assert``, and a check that guards data must not disappear with a
   command-line flag (measured before this rule: an event at LSN 5 applied to a
   state at LSN 0 was refused normally and silently applied under ``-O``).
   ``assert`` remains only in tests, where ``-O`` is never used to run them.
"""

from __future__ import annotations

import attrs

# -- Rules: the names of the refusals ``decide`` can make. -------------------------------
#
# A field that fails validation is refused with a rule built from the field's name:
# ``<field>_invalid``, ``<field>_too_long`` (tokens) or ``<field>_too_large`` (JSON
# payloads); see validation.py.  The rules about the state have fixed names:

JOB_NOT_FOUND = "job_not_found"
JOB_ID_TAKEN = "job_id_taken"
JOB_ID_RESERVED = "job_id_reserved"
JOB_FINISHED = "job_finished"
JOB_NOT_DEAD = "job_not_dead"
STALE_ATTEMPT = "stale_attempt"
QUEUE_INVALID = "queue_invalid"
#: A node name that is not a token, or that holds the worker separator (model/nodes.py).
NODE_INVALID = "node_invalid"
ERROR_INVALID = "error_invalid"
JOBS_MAX_REACHED = "jobs_max_reached"
IN_FLIGHT_MAX_REACHED = "in_flight_max_reached"
PAUSED_QUEUES_MAX_REACHED = "paused_queues_max_reached"

#: A result (or a release) that names an attempt which is no longer live, or a job
#: which is no longer in the state: the work was superseded (expired, abandoned,
#: released, forgotten), and the runtime drops the result instead of failing.
STALE_RESULT_RULES: frozenset[str] = frozenset({STALE_ATTEMPT, JOB_NOT_FOUND})


def invalid_rule(field: str) -> str:
    """The rule of a field whose value has the wrong type or form."""
    return f"{field}_invalid"


def too_long_rule(field: str) -> str:
    """The rule of a token (id, name, key) longer than its byte limit."""
    return f"{field}_too_long"


def too_large_rule(field: str) -> str:
    """The rule of a JSON payload larger than its byte limit."""
    return f"{field}_too_large"


#: A value a message quotes (an id, a name) is cut to this many characters: a message
#: is one line for a person, and a 10 MB id must not make a 10 MB error.
ECHO_CHARS_MAX = 80


def echo(value: object) -> str:
    """``repr(value)`` for a message, cut to ECHO_CHARS_MAX characters of the value
    with how many more there were."""
    if isinstance(value, str) and len(value) > ECHO_CHARS_MAX:
        return f"{value[:ECHO_CHARS_MAX]!r}... ({len(value) - ECHO_CHARS_MAX} more characters)"
    shown = repr(value)
    if len(shown) > ECHO_CHARS_MAX:
        return f"{shown[:ECHO_CHARS_MAX]}... ({len(shown) - ECHO_CHARS_MAX} more characters)"
    return shown


@attrs.frozen(kw_only=True)
class Rejection:
    """Why a command was refused, as data (so tests and the CLI can inspect it)."""

    command: str
    rule: str
    detail: str
    job_id: str | None = None
    status: str | None = None

    def describe(self) -> str:
        job = f" job {echo(self.job_id)}" if self.job_id is not None else ""
        state = f" (state: {self.status})" if self.status is not None else ""
        return f"{self.command} rejected:{job}{state}: {self.rule}: {self.detail}"


class Rejected(Exception):
    """Raised by ``decide`` when a command is refused; carries a :class:`Rejection`."""

    def __init__(self, rejection: Rejection) -> None:
        super().__init__(rejection.describe())
        self.rejection = rejection


class BrokenInvariant(Exception):
    """A rule that holds of every correct run does not hold: a bug, or a damaged log.

    Never caught to carry on.  The message names the invariant and the values that
    break it, so the failure can be read without a debugger.
    """


def invariant(holds: bool, message: str) -> None:
    """Raise :class:`BrokenInvariant` with ``message`` unless ``holds``.

    For checks off the hot path.  ``message`` is built before the call, so where a
    check runs per event and its message formats values, the caller writes
    ``if not holds: raise BrokenInvariant(...)`` instead, and pays for the message
    only when it fails.
    """
    if not holds:
        raise BrokenInvariant(message)
