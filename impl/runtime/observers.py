"""Onlookers of the controller: told of every result and every durable batch.

The metrics (impl/frontends/metrics.py) are one observer.  Both calls come from the
controller's threads, and a durable batch may be told while a snapshot holds the
controller's lock: an observer must not block, call the controller or take its lock.
An observer that raises is dropped (and counted in ``stats.observer_errors``): the
queue does not stop for its onlookers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .read_models import Stats
from .workers import TaskResult


class ControllerObserver(Protocol):
    """What happens, told as it happens (see the module doc for the rules)."""

    def result_received(self, result: TaskResult) -> None:
        """A worker reported how an attempt ended (before the fence judges it)."""

    def batch_durable(self, events: int, seconds: float) -> None:
        """One group-commit batch is durable: its size, and its write + fsync time."""


class Observers:
    """The controller's observers, copied on write so that telling needs no lock."""

    def __init__(self, stats: Stats) -> None:
        self._stats = stats
        self._observers: tuple[ControllerObserver, ...] = ()

    def add(self, observer: ControllerObserver) -> None:
        """Under the controller's lock, so that two adds do not lose one."""
        self._observers = (*self._observers, observer)

    def batch_durable(self, events: int, seconds: float) -> None:
        # On the flusher thread: an exception here would end it and leave every
        # producer waiting for durability forever.
        for observer in self._observers:
            try:
                observer.batch_durable(events, seconds)
            except Exception as error:
                self._drop(observer, error)

    def results(self, results: Sequence[TaskResult]) -> None:
        for observer in self._observers:
            try:
                for result in results:
                    observer.result_received(result)
            except Exception as error:
                self._drop(observer, error)

    def _drop(self, observer: ControllerObserver, error: Exception) -> None:
        # Copy on write without the lock (a snapshot may hold it while this runs on
        # the flusher thread); a lost race only delays the drop to the next call.
        self._observers = tuple(kept for kept in self._observers if kept is not observer)
        self._stats.observer_errors += 1
        self._stats.observer_error_last = f"{type(error).__name__}: {error}"
