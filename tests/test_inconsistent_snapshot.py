"""A snapshot whose bytes are intact but whose state is inconsistent: recovery and
``verify`` say the same thing.

Goal: damaged bytes (a bad CRC, an undecodable body) are damage, and recovery falls
back to an older snapshot; intact bytes that decode to a state breaking an invariant
(counts that disagree with the jobs) are a bug of the writer, and recovery refuses
the directory loudly with ``BrokenInvariant``.  ``verify`` must not promise that
recovery would skip such a snapshot (it used to).

Method: write a directory with a real snapshot, then replace the snapshot by one whose
checkpoint has the counts of an empty state, re-encoded with valid CRCs; open it, and
verify it.
"""

from __future__ import annotations

import attrs
import pytest

from beaverq.impl.storage.codec import SCHEMA_VERSION, encode_checkpoint
from beaverq.impl.storage.fs import RealFileSystem
from beaverq.impl.storage.snapshot import encode_snapshot, list_snapshots
from beaverq.impl.storage.storage import Storage
from beaverq.impl.storage.verify import verify_data_dir
from beaverq.model import BrokenInvariant, Enqueue, decide, evolve, initial_state
from beaverq.model.checkpoint import checkpoint_of


def test_recovery_and_verify_both_refuse_an_intact_but_inconsistent_snapshot(tmp_path) -> None:
    directory = str(tmp_path / "data")
    fs = RealFileSystem()
    storage, state, _report = Storage.open(fs, directory)
    events = decide(state, Enqueue(now_ms=1, handler="h", job_id="a"))
    storage.append(events)
    for event in events:
        state = evolve(state, event)
    storage.take_snapshot(state)
    storage.close()
    (snapshot,) = list_snapshots(fs, directory)
    lying = attrs.evolve(checkpoint_of(state), counts=checkpoint_of(initial_state()).counts)
    data = encode_snapshot(state.last_lsn, 0, SCHEMA_VERSION, encode_checkpoint(lying))
    with open(snapshot.path, "wb") as file:
        file.write(data)

    report = verify_data_dir(fs, directory)
    assert not report.ok
    assert any("broken invariant" in error for error in report.errors), report.errors
    assert not any("recovery skips it" in line for line in report.lines), report.lines
    with pytest.raises(BrokenInvariant, match="counts"):
        Storage.open(fs, directory)
