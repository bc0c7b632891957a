"""How the controller says it will take no more commands, or that one's fate is open."""

from __future__ import annotations

from beaverq.impl.storage.wal import WalFailed


class ControllerStopped(Exception):
    """The controller is stopping or stopped: it takes no more commands."""


class ControllerFailed(Exception):
    """A loop failed (e.g. the WAL failed); the runner must stop and recover from disk."""


def nothing_done(failure: BaseException) -> ControllerFailed:
    """A call refused because the controller (or its log) failed before it: nothing
    of the call reached the log, and the caller is told so."""
    return ControllerFailed(f"the controller failed, so nothing of this call was done: {failure}")


class OutcomeUnknown(ControllerFailed, WalFailed):
    """The log failed while a call's events were being made durable: some or all of
    them may be on disk, so the call may or may not have taken effect (recovery keeps
    whatever reached the disk).  A ``ControllerFailed`` to the front ends, and still
    the ``WalFailed`` it is to callers of the controller."""

    @classmethod
    def after(cls, failure: WalFailed) -> OutcomeUnknown:
        return cls(
            f"{failure}; so this call may or may not have taken effect (once restarted, "
            "the queue keeps whatever reached the disk: check with 'status' or 'show')"
        )
