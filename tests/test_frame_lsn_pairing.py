"""The LSN in a WAL frame is the LSN of the event it holds, in every schema and reader.

Goal: docs/model.md, "Rejections and broken invariants": the LSN in a frame is
checked against the LSN in the event it holds.  Recovery checked it only for the
events it applied: a schema-1 event the upcaster found already covered was skipped
before the check, and ``beaverq verify`` never checked it, so a frame holding an
earlier event (a duplicate, the chain and CRCs intact) was skipped by ``evolve``'s
LSN guard and the directory verified OK while recovery refused it.  Method: a log
written by the real WAL writer in schema 1 or 2 whose last frame, at LSN 3, holds
the event of LSN 2; recovery must raise the pairing's BrokenInvariant naming the
frame, and verify must report an error naming it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from strategies import step
from test_upcast_roundtrip import _down_cast

from beaverq.impl.storage import codec
from beaverq.impl.storage.fs import RealFileSystem
from beaverq.impl.storage.storage import Storage
from beaverq.impl.storage.verify import verify_data_dir
from beaverq.impl.storage.wal import WalWriter
from beaverq.model import BrokenInvariant, Enqueue, Event, initial_state


def _payload(event: Event, schema_version: int) -> bytes:
    if schema_version == 1:
        return codec._schema1_converter.dumps(_down_cast(event), codec.Schema1Event)
    return codec.encode_event(event)


def _log_whose_last_frame_holds_an_earlier_event(directory: Path, schema_version: int) -> None:
    state, events = initial_state(), []
    for job_id in ("a", "b"):
        new, state = step(state, Enqueue(now_ms=0, handler="h", job_id=job_id))
        events.extend(new)
    fs = RealFileSystem()
    fs.mkdir(str(directory))
    writer = WalWriter(
        fs,
        str(directory),
        schema_version=schema_version,
        next_index=0,
        last_lsn=0,
        chain_crc=0,
        event_chain_crc=0,
    )
    for lsn, event in ((1, events[0]), (2, events[1]), (3, events[1])):
        writer.append(lsn, _payload(event, schema_version))
    writer.flush()
    writer.close()


@pytest.mark.parametrize("schema_version", [1, 2])
def test_recovery_names_a_frame_holding_another_lsn(tmp_path: Path, schema_version: int) -> None:
    directory = tmp_path / "data"
    _log_whose_last_frame_holds_an_earlier_event(directory, schema_version)
    with pytest.raises(BrokenInvariant, match="frame LSN 3"):
        Storage.open(RealFileSystem(), str(directory))


@pytest.mark.parametrize("schema_version", [1, 2])
def test_verify_reports_a_frame_holding_another_lsn(tmp_path: Path, schema_version: int) -> None:
    directory = tmp_path / "data"
    _log_whose_last_frame_holds_an_earlier_event(directory, schema_version)
    report = verify_data_dir(RealFileSystem(), str(directory))
    assert not report.ok
    assert any("frame LSN 3" in error for error in report.errors), report.errors
