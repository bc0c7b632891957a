"""How the controller says it will take no more commands."""


class ControllerStopped(Exception):
    """The controller is stopping or stopped: it takes no more commands."""


class ControllerFailed(Exception):
    """A loop failed (e.g. the WAL failed); the runner must stop and recover from disk."""
