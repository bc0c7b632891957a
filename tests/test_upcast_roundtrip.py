"""The upcaster inverts the down-cast on every reachable history.

Goal: model/upcast.py must turn each schema-1 event into exactly the schema-2
event today's code writes for the same decision, wherever the event stands in its
log.  The committed fixture (tests/test_upcast.py) checks one log written by the
schema-1 release; this checks every history Hypothesis can reach.

Method: the schema-1 code is not available at run time, but the schema-1 shape of
an event is today's event without the fields schema 2 added (``target``, and for
the three endings that retried at once ``retry_at_ms``): schema 1 recorded the same
decisions and left those outcomes to its ``evolve``.  So each event of a random
history is down-cast to that shape and upcast back with the state just before it;
the result must equal the event.  Once through the model, once through the disk:
the down-cast log is written as schema-1 segments by the real WAL writer (with a
schema-1 snapshot at a random point, or none), and recovery and verify must reach
the history's last state.  A few schema-1 events that schema 2 never produces (a
retry due before its failure) are checked by hand against the old ``evolve``
(``git show 3322584:model/evolve.py``).
"""

from __future__ import annotations

import tempfile
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import histories, step

from beaverq.impl.storage import codec
from beaverq.impl.storage.fs import RealFileSystem
from beaverq.impl.storage.snapshot import encode_snapshot, write_snapshot
from beaverq.impl.storage.storage import Storage
from beaverq.impl.storage.verify import verify_data_dir
from beaverq.impl.storage.wal import WalWriter
from beaverq.model import BrokenInvariant, Enqueue, Event, Lease, evolve, initial_state
from beaverq.model.checkpoint import checkpoint_of
from beaverq.model.lifecycle import DEAD, PENDING
from beaverq.model.upcast import SCHEMA1_RENAMED, Schema1JobFailed, upcast_schema1

_SCHEMA1_OF = {new: old for old, new in SCHEMA1_RENAMED.items()}


def _down_cast(event: Event) -> Any:
    """``event`` as schema 1 wrote it: the same class, or its schema-1 shape with
    only the fields that shape has."""
    old = _SCHEMA1_OF.get(type(event))
    if old is None:
        return event
    return old(**{field.name: getattr(event, field.name) for field in attrs.fields(old)})


@settings(max_examples=300)
@given(history=histories())
def test_upcasting_the_down_cast_gives_back_every_event(history) -> None:
    events, states = history
    for index, event in enumerate(events):
        old = _down_cast(event)
        assert upcast_schema1(states[index], old) == event, (index, old)
        # A state that already holds the event (a snapshot taken later) skips it.
        assert upcast_schema1(states[index + 1], old) is None


def _write_schema1_directory(directory: str, events: list[Event], states: list, at: int | None):
    """The down-cast log as schema-1 segments, and a schema-1 snapshot of
    ``states[at]`` if ``at`` is given (the checkpoint's encoding did not change)."""
    fs = RealFileSystem()
    fs.mkdir(directory)
    writer = WalWriter(
        fs,
        directory,
        schema_version=1,
        next_index=0,
        last_lsn=0,
        chain_crc=0,
        event_chain_crc=0,
        segment_bytes_max=1024,  # several segments
    )
    for index, event in enumerate(events):
        if index == at:
            _snapshot(fs, directory, writer, states[at])
        # The schema-1 encoder: the same tags, the schema-1 shapes (codec.py).
        payload = codec._schema1_converter.dumps(_down_cast(event), codec.Schema1Event)
        writer.append(event.lsn, payload)
        writer.flush()
    if at == len(events):
        _snapshot(fs, directory, writer, states[at])
    writer.close()


def _snapshot(fs: RealFileSystem, directory: str, writer: WalWriter, state) -> None:
    body = codec.encode_checkpoint(checkpoint_of(state))
    data = encode_snapshot(state.last_lsn, writer.durable_event_chain_crc, 1, body)
    write_snapshot(fs, directory, state.last_lsn, data)


@settings(max_examples=40, deadline=None)
@given(history=histories(), data=st.data())
def test_a_schema_1_log_of_any_history_recovers_its_last_state(history, data) -> None:
    events, states = history
    at = data.draw(st.one_of(st.none(), st.integers(0, len(events))), label="snapshot at")
    with tempfile.TemporaryDirectory() as scratch:
        directory = f"{scratch}/data"
        _write_schema1_directory(directory, events, states, at)
        report = verify_data_dir(RealFileSystem(), directory)
        assert report.ok, report.errors
        assert checkpoint_of(report.state) == checkpoint_of(states[-1])
        storage, state, _report = Storage.open(RealFileSystem(), directory)
        storage.close()
    assert checkpoint_of(state) == checkpoint_of(states[-1])


def test_a_schema_1_retry_due_before_its_failure_is_ready_at_the_failure() -> None:
    """Schema 2 never records a retry before its event, but a schema-1 log may hold
    one; the old evolve made the job PENDING, ready at the failure's time."""
    state = initial_state()
    for command in (Enqueue(now_ms=0, handler="h", job_id="a"), Lease(now_ms=0, worker_id="w")):
        _events, state = step(state, command)
    old = Schema1JobFailed(lsn=3, at_ms=10, job_id="a", attempt=1, error="e", retry_at_ms=4)
    new = upcast_schema1(state, old)
    assert (new.target, new.retry_at_ms) == (PENDING, 10)
    job = evolve(state, new).jobs["a"]
    assert (job.status, job.ready_at_ms) == (PENDING, 10)


def test_a_schema_1_failure_that_ends_the_job_but_carries_a_retry_time_is_refused() -> None:
    """Schema 1's evolve refused it (``assert retry_at_ms is None or not
    isinstance(event, JobFailed)`` when the job finished): its decide never wrote
    one, so such a record is a damaged log.  The upcaster must not quietly drop the
    retry time and recover a state the old code refused to recover."""
    state = initial_state()
    for command in (
        Enqueue(now_ms=0, handler="h", job_id="a", max_attempts=1),
        Lease(now_ms=0, worker_id="w"),
    ):
        _events, state = step(state, command)
    old = Schema1JobFailed(lsn=3, at_ms=10, job_id="a", attempt=1, error="e", retry_at_ms=None)
    assert upcast_schema1(state, old).target is DEAD
    with pytest.raises(BrokenInvariant, match="retry"):
        upcast_schema1(state, attrs.evolve(old, retry_at_ms=12))
