"""The two kinds of failure in the model, and the policy that separates them.

1. An *expected* refusal: a command that is malformed, out of bounds, or not
   allowed in the job's current state.  ``decide`` raises :class:`Rejected`.  The
   state is untouched (the model is pure, so this holds by construction, and the
   tests check it anyway).  The message names the command, the job, the job's
   state and the rule broken, so an operator can act on it without reading code.
2. A *broken invariant*: something that cannot happen unless the code or the log
   is wrong.  That is a bare ``assert``: loud, never caught, never repaired.
"""

from __future__ import annotations

import attrs


@attrs.frozen(kw_only=True)
class Rejection:
    """Why a command was refused, as data (so tests and the CLI can inspect it)."""

    command: str
    rule: str
    detail: str
    job_id: str | None = None
    status: str | None = None

    def describe(self) -> str:
        job = f" job {self.job_id!r}" if self.job_id is not None else ""
        state = f" (state: {self.status})" if self.status is not None else ""
        return f"{self.command} rejected:{job}{state}: {self.rule}: {self.detail}"


class Rejected(Exception):
    """Raised by ``decide`` when a command is refused; carries a :class:`Rejection`."""

    def __init__(self, rejection: Rejection) -> None:
        super().__init__(rejection.describe())
        self.rejection = rejection
