"""How the controller says it will take no more commands, or that one's fate is open."""

from beaverq.impl.storage.wal import WalFailed


class ControllerStopped(Exception):
    """The controller is stopping or stopped: it takes no more commands."""


class ControllerFailed(Exception):
    """A loop failed (e.g. the WAL failed); the runner must stop and recover from disk."""


class OutcomeUnknown(ControllerFailed, WalFailed):
    """The log failed while a call's events were being made durable: some or all of
    them may be on disk, so the call may or may not have taken effect (recovery keeps
    whatever reached the disk).  A ``ControllerFailed`` to the front ends, and still
    the ``WalFailed`` it is to callers of the controller."""
