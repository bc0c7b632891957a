"""A node's copy of the state: the etcd log, read and folded with ``evolve``.

Every node runs one, the leader included.  It reads the log from its position to the
head (pages of entries), then follows it with a watch from the revision it read at;
each entry is folded in LSN order.  The LSN guard in ``evolve`` and the gap check in
``fold_entry`` make a repeated or missing entry a loud error, never a silent fork.

What it serves: reads on a node that is not the leader (status, show, jobs: a
projection of the log, as fresh as the watch, which measured p99 4 ms behind the
writer), and the starting state of a node that wins the election, which must first
reach the head (``catch_up``): a leader that decided on a stale state would be
refused by the head compare anyway (etcd_log.py), but it would fail for nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from beaverq.model import State, initial_state

from .etcd_client import EtcdError, prefix_end
from .etcd_log import EtcdLog, LogEntry, decode_entry, fold_entry

#: After a broken watch or an etcd error, wait this long before reading again.
RETRY_S = 0.2

#: (LSN of the state, etcd revision) -> a state from a checkpoint to continue from
#: (and the time of its last event), or None to read the log (snapshots.py).
Restorer = Callable[[int, int], "tuple[State, int] | None"]


class LogFollower:
    def __init__(
        self, log: EtcdLog, state: State | None = None, *, restore: Restorer | None = None
    ) -> None:
        self._log = log
        self._restore = restore
        self._state = state or initial_state()
        self._last_at_ms = 0
        self._revision = 0  # the etcd revision the state reflects the log at
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="beaverq-follower", daemon=True)
        self.failure: BaseException | None = None
        # While this node leads, its controller folds every event already: folding them
        # again here would only double the leader's CPU per event (measured: a fifth
        # of the leader's time).  Paused, the follower drops what the watch brings and,
        # on resume, reads the log from where its state is (``catch_up``).
        self._paused = threading.Event()

    @property
    def state(self) -> State:
        return self._state

    @property
    def last_at_ms(self) -> int:
        """The time of the last event folded: a new leader's clock starts no earlier
        (time never runs backwards across leaders: model/timers.py needs it)."""
        return self._last_at_ms

    def start(self) -> None:
        self.catch_up()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._changed:
            self._changed.notify_all()
        if self._thread.is_alive():
            self._thread.join()

    def pause(self) -> None:
        self._paused.set()

    def resume(self) -> None:
        """Fold again, from the state's LSN to the head (the events skipped while paused)."""
        self._paused.clear()
        self.catch_up()

    def wait_for(self, lsn: int, timeout_s: float) -> bool:
        """Wait until the state covers ``lsn``; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while self._state.last_lsn < lsn:
                if self.failure is not None:
                    raise self.failure
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stop.is_set():
                    return False
                self._changed.wait(remaining)
        return True

    def catch_up(self) -> int:
        """Read the log up to its head as of now (linearizably); the LSN reached."""
        head, revision = self._log.head()
        if self._restore is not None:
            # The log before ``compacted`` may be gone, or a checkpoint far ahead:
            # both read at ``revision``, the same cut as the entries below.
            restored = self._restore(self._state.last_lsn, revision)
            if restored is not None:
                with self._changed:
                    if restored[0].last_lsn > self._state.last_lsn:
                        self._state = restored[0]
                        self._last_at_ms = max(self._last_at_ms, restored[1])
                        self._changed.notify_all()
        for entry in self._log.entries_after(self._state.last_lsn, revision=revision):
            self._fold(entry)
        with self._changed:
            self._revision = max(self._revision, revision)
        if self._state.last_lsn < head:
            raise EtcdError(
                f"the log's head says LSN {head}, its entries end at {self._state.last_lsn}"
            )
        return head

    def _fold(self, entry: LogEntry) -> None:
        with self._changed:
            state, events = fold_entry(self._state, entry)
            if events:
                self._state = state
                self._last_at_ms = max(self._last_at_ms, events[-1].at_ms)
                self._changed.notify_all()

    def _run(self) -> None:
        keys = self._log.keys
        resync = False
        while not self._stop.is_set():
            try:
                if resync:
                    # A broken stream or a compacted revision: read by range (or from the
                    # checkpoint, if the log behind the state is deleted), then watch
                    # again.  Inside the try: a checkpoint that cannot be loaded is loud.
                    self._stop.wait(RETRY_S)
                    self.catch_up()
                    resync = False
                for change in self._log.client.watch(
                    keys.log_prefix,
                    prefix_end(keys.log_prefix),
                    start_revision=self._revision + 1,
                    stop=self._stop,
                ):
                    if self._paused.is_set():
                        # resume() reads these again by range; the next watch starts
                        # after them, not again from the revision leadership began at.
                        with self._changed:
                            self._revision = max(self._revision, change.kv.mod_revision)
                        continue
                    if not change.deleted:  # deletions are compaction (snapshot_loop.py)
                        entry = decode_entry(change.kv.key, change.kv.value)
                        if entry.first_lsn > self._state.last_lsn + 1:
                            # Entries skipped while paused: read them by range.  A real
                            # hole in the log makes catch_up's fold fail, loudly.
                            self.catch_up()
                        self._fold(entry)
                    with self._changed:
                        self._revision = max(self._revision, change.kv.mod_revision)
            except EtcdError:
                resync = True
            except BaseException as error:  # a corrupt log: loud, to every waiter
                with self._changed:
                    self.failure = error
                    self._changed.notify_all()
                raise
