"""A WAL segment of a schema newer than this code is refused by every reader.

Goal: docs/storage.md, "Schema evolution": code that meets a schema newer than it
knows refuses the directory, naming both versions, because it may hold facts this
code cannot see; it never guesses.  Recovery checked only the schemas of the
*records* it replays, so a newer segment holding none (a newer beaverq that
started its segment and stopped before its first event was durable) was accepted,
and this code appended its own segments after it; and ``wal dump`` decoded every
segment not of today's schema as schema 1, so a newer segment's events were shown
in schema 1's shape, their new fields silently dropped.  Method: a data directory
written by today's code, then a segment framed by the real WAL writer with schema
3 (empty, or holding events); recovery, verify and wal dump read it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from beaverq.impl.storage.codec import SCHEMA_VERSION, encode_event
from beaverq.impl.storage.fs import RealFileSystem, StorageError
from beaverq.impl.storage.storage import Storage
from beaverq.impl.storage.verify import verify_data_dir
from beaverq.impl.storage.wal import WalWriter
from beaverq.impl.storage.wal_dump import dump_wal
from beaverq.impl.storage.wal_reader import read_wal
from beaverq.model import Enqueue, Event, decide, evolve

NEWER = SCHEMA_VERSION + 1


def _directory_with_a_newer_segment(directory: Path, events_in_it: int) -> list[Event]:
    """Today's log of two enqueues, then a segment of schema ``NEWER`` holding the
    next ``events_in_it`` events (encoded as today's, which is all this test needs)."""
    fs = RealFileSystem()
    storage, state, _report = Storage.open(fs, str(directory))
    events: list[Event] = []
    for job_id in ("a", "b", "c", "d")[: 2 + events_in_it]:
        (event,) = decide(state, Enqueue(now_ms=0, handler="h", job_id=job_id))
        state = evolve(state, event)
        events.append(event)
    storage.append(events[:2])
    storage.flush()
    storage.close()
    contents = read_wal(fs, str(directory), after_lsn=0, after_chain_crc=0)
    writer = WalWriter(
        fs,
        str(directory),
        schema_version=NEWER,
        next_index=contents.segments[-1].index + 1,
        last_lsn=contents.last_lsn,
        chain_crc=contents.chain_crc,
        event_chain_crc=contents.event_chain_crc,
    )
    for event in events[2:]:
        writer.append(event.lsn, encode_event(event))
    writer.flush()
    writer.close()
    return events


@pytest.mark.parametrize("events_in_it", [0, 2], ids=["empty", "with events"])
def test_recovery_refuses_a_segment_of_a_newer_schema(tmp_path: Path, events_in_it: int) -> None:
    directory = tmp_path / "data"
    _directory_with_a_newer_segment(directory, events_in_it)
    before = sorted(path.name for path in directory.iterdir())
    with pytest.raises(StorageError, match=f"schema version {NEWER}"):
        Storage.open(RealFileSystem(), str(directory))
    # Refused before anything was written after the newer segment.
    assert sorted(path.name for path in directory.iterdir()) == before


@pytest.mark.parametrize("events_in_it", [0, 2], ids=["empty", "with events"])
def test_verify_reports_a_segment_of_a_newer_schema(tmp_path: Path, events_in_it: int) -> None:
    directory = tmp_path / "data"
    _directory_with_a_newer_segment(directory, events_in_it)
    report = verify_data_dir(RealFileSystem(), str(directory))
    assert not report.ok
    assert any(f"schema version {NEWER}" in error for error in report.errors), report.errors


def test_wal_dump_does_not_read_a_newer_schema_as_schema_1(tmp_path: Path) -> None:
    directory = tmp_path / "data"
    _directory_with_a_newer_segment(directory, 2)
    lines = list(dump_wal(RealFileSystem(), str(directory)))
    newer = [line for line in lines if "lsn        3" in line or "lsn        4" in line]
    assert len(newer) == 2, lines
    for line in newer:
        # Not shown in another schema's shape: named as unreadable, with the versions.
        assert "JobEnqueued" not in line, line
        assert f"schema version {NEWER}" in line, line
