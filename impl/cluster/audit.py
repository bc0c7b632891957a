"""The checker over a cluster's final log: what the demo, the nemesis tests and the
benchmarks conclude from, read from etcd itself and from every member separately.

What it checks (docs/cluster.md, "What the checker proves"):

* **identical on every member**: each member's own copy of the log (a serializable
  read answered by that member alone) holds the same keys and bytes;
* **gapless**: the entries' LSNs run 1, 2, ... without a hole or a repeat;
* **every acknowledged job present exactly once**: one ``JobEnqueued`` per job id
  the producers were told was enqueued, and no job enqueued twice under two ids for
  one idempotency key (the unknown-outcome retries);
* **no completion twice**, and the history properties of spec/history.py;
* **time never runs backwards**: ``at_ms`` does not decrease along the log, across
  leader changes (FloorClock in node.py);
* **every acknowledged job finished** (optional: once faults have stopped).
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Collection, Sequence

import attrs

from beaverq.model import Event, JobCompleted, JobEnqueued, JobStatus, State, initial_state
from beaverq.model.errors import BrokenInvariant
from beaverq.spec.history import check_history

from .etcd_client import EtcdClient, KeyValue, prefix_end
from .etcd_log import ClusterKeys, LogCorrupt, decode_entry, fold_entry
from .snapshots import load_checkpoint

PAGE = 256
FINISHED = (JobStatus.COMPLETED, JobStatus.DEAD, JobStatus.CANCELLED)


@attrs.frozen
class LogAudit:
    members_checked: int
    members_identical: bool
    gapless: bool
    events: int
    acknowledged: int
    lost: tuple[str, ...]
    enqueued_twice: tuple[str, ...]
    completed_twice: tuple[str, ...]
    time_went_back: tuple[int, ...]  # LSNs whose at_ms is below the previous event's
    unfinished: tuple[str, ...]
    history_problem: str | None
    state: State
    from_checkpoint_lsn: int = 0  # 0: the whole log from LSN 1 was read
    #: The events read, in LSN order (for checks of their own: the nemesis tests').
    log: tuple[Event, ...] = ()

    @property
    def ok(self) -> bool:
        return (
            self.members_identical
            and self.gapless
            and not self.lost
            and not self.enqueued_twice
            and not self.completed_twice
            and not self.time_went_back
            and not self.unfinished
            and self.history_problem is None
        )

    def lines(self) -> list[str]:
        def yes(flag: bool) -> str:
            return "yes" if flag else "NO"

        start = (
            ""
            if not self.from_checkpoint_lsn
            else f" after the checkpoint at LSN {self.from_checkpoint_lsn} (the prefix is "
            "compacted)"
        )
        return [
            f"the log{start} on each of {self.members_checked} etcd members: identical "
            f"{yes(self.members_identical)}; {self.events} events, gapless {yes(self.gapless)}",
            f"acknowledged {self.acknowledged}; in the log {self.acknowledged - len(self.lost)}; "
            f"lost {len(self.lost)}; enqueued twice {len(self.enqueued_twice)}",
            f"completed twice: {len(self.completed_twice)}; event times going backwards: "
            f"{len(self.time_went_back)}",
            f"finished {self.acknowledged - len(self.unfinished)}/{self.acknowledged}",
            "history properties (spec/history.py): "
            + ("all hold" if self.history_problem is None else f"BROKEN: {self.history_problem}"),
        ]


def member_log(url: str, keys: ClusterKeys) -> list[KeyValue]:
    """Every log key as the member at ``url`` alone has it (serializable reads)."""
    found: list[KeyValue] = []
    end = prefix_end(keys.log_prefix)
    start = keys.log_prefix
    with EtcdClient([url]) as client:
        while True:
            page = client.range(start, end, limit=PAGE, serializable=True)
            found.extend(page.kvs)
            if not page.more or not page.kvs:
                return found
            start = page.kvs[-1].key + b"\x00"


def audit(
    member_urls: Sequence[str],
    cluster: str,
    acknowledged: Collection[str],
    *,
    require_finished: bool = True,
) -> LogAudit:
    keys = ClusterKeys(cluster)
    logs = [[(kv.key, kv.value) for kv in member_log(url, keys)] for url in member_urls]
    identical = all(log == logs[0] for log in logs[1:])
    state = start = _starting_state(member_urls, keys)
    from_lsn = state.last_lsn
    events: list[Event] = []
    gapless = True
    for key, value in logs[0]:
        entry = decode_entry(key, value)
        if entry.last_lsn <= state.last_lsn:
            continue  # before the checkpoint the audit starts from
        if entry.first_lsn > state.last_lsn + 1:
            gapless = False
        try:
            state, applied = fold_entry(state, entry)
        except (LogCorrupt, BrokenInvariant):
            gapless = False
            break
        events.extend(applied)
    enqueued = collections.Counter(e.job_id for e in events if isinstance(e, JobEnqueued))
    checkpointed = set(start.jobs) if from_lsn else set()
    completed = collections.Counter(e.job_id for e in events if isinstance(e, JobCompleted))
    keyed = collections.Counter(
        e.spec.idempotency_key
        for e in events
        if isinstance(e, JobEnqueued) and e.spec.idempotency_key is not None
    )
    back = tuple(
        later.lsn for earlier, later in itertools.pairwise(events) if later.at_ms < earlier.at_ms
    )
    unfinished = tuple(
        sorted(
            job_id
            for job_id in acknowledged
            if job_id in state.jobs and state.jobs[job_id].status not in FINISHED
        )
    )
    try:
        check_history(events)
        history_problem = None
    except BrokenInvariant as error:
        history_problem = str(error)
    return LogAudit(
        members_checked=len(member_urls),
        members_identical=identical,
        gapless=gapless,
        events=len(events),
        acknowledged=len(acknowledged),
        lost=tuple(
            sorted(
                job_id
                for job_id in acknowledged
                if job_id not in enqueued and job_id not in checkpointed
            )
        ),
        enqueued_twice=tuple(
            sorted(
                [job_id for job_id, n in enqueued.items() if n > 1]
                + [key for key, n in keyed.items() if n > 1]
            )
        ),
        completed_twice=tuple(sorted(job_id for job_id, n in completed.items() if n > 1)),
        time_went_back=back,
        unfinished=unfinished if require_finished else (),
        history_problem=history_problem,
        state=state,
        from_checkpoint_lsn=from_lsn,
        log=tuple(events),
    )


def _starting_state(member_urls: Sequence[str], keys: ClusterKeys) -> State:
    """The empty state, or the newest checkpoint's if the log's prefix is compacted."""
    with EtcdClient(member_urls) as client:
        compacted = client.get(keys.compacted)
        if compacted is None or int(compacted.value) == 0:
            return initial_state()
        loaded = load_checkpoint(client, keys)
    if loaded is None:
        raise LogCorrupt(f"the log up to LSN {int(compacted.value)} is compacted, no checkpoint")
    return loaded.state
