"""Events record decisions: old logs open, and replay never asks today's rules.

Goal: two promises of schema 2 (model/events.py, model/upcast.py, docs/storage.md
"Schema evolution").

1. A data directory written by the schema-1 release still opens, and recovers to
   exactly the state the schema-1 code recovered.  Method: ``tests/fixtures/
   schema1/`` holds a data directory written by that release (its WAL segments and
   snapshot are schema 1; ``make_fixture.py`` says how) and the checkpoint that
   release recovered from it.  Today's code opens a copy and must produce the same
   checkpoint, from the snapshot + tail and from the whole log alone (the snapshot
   removed, so every schema-1 ending is upcast); and after appending schema-2
   events, a log of both schemas reopens to the same state.
2. Replaying a log gives the same state whatever the retry rule says today.
   Method: fold reachable histories (and the fixture) with the rule replaced by one
   that decides the opposite (everything DEAD, no backoff); the states must not move.
"""

from __future__ import annotations

import importlib
import shutil
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from strategies import histories, replay_all

from beaverq.impl.storage.codec import SCHEMA_VERSION, decode_checkpoint, decode_schema1_event
from beaverq.impl.storage.fs import RealFileSystem
from beaverq.impl.storage.record import decode_frame
from beaverq.impl.storage.segments import decode_segment_header
from beaverq.impl.storage.storage import Storage
from beaverq.impl.storage.verify import verify_data_dir
from beaverq.impl.storage.wal_dump import dump_wal
from beaverq.impl.storage.wal_reader import read_wal
from beaverq.model import Enqueue, Lease, State, decide, evolve, initial_state
from beaverq.model.checkpoint import checkpoint_of
from beaverq.model.endings import AttemptEnding
from beaverq.model.lifecycle import DEAD, JobStatus
from beaverq.model.upcast import SCHEMA1_RENAMED, upcast_schema1

FIXTURE = Path(__file__).parent / "fixtures" / "schema1"


@pytest.fixture
def schema1_dir(tmp_path: Path) -> Path:
    """A private copy of the fixture: opening a data directory writes to it."""
    target = tmp_path / "datadir"
    shutil.copytree(FIXTURE / "datadir", target)
    return target


def _expected_checkpoint():
    return decode_checkpoint((FIXTURE / "expected.checkpoint").read_bytes())


def _open(directory: Path) -> State:
    storage, state, _report = Storage.open(RealFileSystem(), str(directory))
    storage.close()
    return state


def _segment_schemas(directory: Path) -> list[int]:
    schemas = []
    for path in sorted(directory.glob("wal-*.log")):
        # The segment header is the first frame of every segment.
        header = decode_frame(path.read_bytes(), 0, None)
        schemas.append(decode_segment_header(header.payload).schema_version)
    return schemas


def test_the_fixture_is_schema_1() -> None:
    """Guards the other tests against a fixture rewritten by mistake with new code."""
    assert SCHEMA_VERSION == 2
    assert set(_segment_schemas(FIXTURE / "datadir")) == {1}


def test_a_schema_1_directory_recovers_the_state_the_old_code_recovered(schema1_dir) -> None:
    state = _open(schema1_dir)
    assert checkpoint_of(state) == _expected_checkpoint()
    # Opening continued the log in a fresh segment of today's schema.
    assert _segment_schemas(schema1_dir)[-1] == SCHEMA_VERSION


def test_the_whole_schema_1_log_alone_recovers_the_same_state(schema1_dir) -> None:
    """Without the snapshot every event is replayed, so every schema-1 ending in the
    fixture goes through its upcaster."""
    for snapshot in schema1_dir.glob("snapshot-*"):
        snapshot.unlink()
    assert checkpoint_of(_open(schema1_dir)) == _expected_checkpoint()


def test_the_fixture_exercises_every_upcaster_and_every_outcome() -> None:
    """Guards the two tests above against a fixture that skips a case: every changed
    event type appears, and the ending events reach each target schema 1 allowed."""
    contents = read_wal(RealFileSystem(), str(FIXTURE / "datadir"), after_lsn=0, after_chain_crc=0)
    state, seen = initial_state(), set()
    for record in contents.records:
        event = upcast_schema1(state, decode_schema1_event(record.payload))
        assert event is not None
        seen.add((type(event).__name__, getattr(event, "target", None)))
        state = evolve(state, event)
    renamed = {new.__name__ for new in SCHEMA1_RENAMED.values()}
    assert renamed <= {name for name, _ in seen}
    assert {
        ("JobEnqueued", JobStatus.PENDING),
        ("JobEnqueued", JobStatus.DELAYED),
        ("JobFailed", JobStatus.DELAYED),
        ("JobFailed", JobStatus.DEAD),
        ("JobFailed", JobStatus.CANCELLED),
        ("LeaseExpired", JobStatus.PENDING),
        ("LeaseExpired", JobStatus.DEAD),
        ("LeaseReleased", JobStatus.PENDING),
        ("LeaseReleased", JobStatus.CANCELLED),
        ("LeaseAbandoned", JobStatus.PENDING),
        ("LeaseAbandoned", JobStatus.DEAD),
        ("LeaseAbandoned", JobStatus.CANCELLED),
    } <= seen


def test_a_log_of_both_schemas_reopens_to_the_same_state(schema1_dir) -> None:
    """Schema-1 segments, then schema-2 ones: each record is read in its own schema."""
    fs = RealFileSystem()
    storage, state, _report = Storage.open(fs, str(schema1_dir))
    for command in (
        Enqueue(now_ms=40_000, handler="h", job_id="after-upgrade"),
        Lease(now_ms=40_000, worker_id="w"),
    ):
        events = decide(state, command)
        storage.append(events)
        state = replay_all(events, state)
    storage.flush()
    storage.close()
    assert set(_segment_schemas(schema1_dir)) == {1, SCHEMA_VERSION}
    assert checkpoint_of(_open(schema1_dir)) == checkpoint_of(state)


# -- 2. Today's rule is never asked at replay. ----------------------------------------


#: Every module of the model, imported before the rule is replaced in each.
MODEL_MODULES = tuple(
    f"beaverq.model.{path.stem}"
    for path in sorted((Path(__file__).parent.parent / "model").glob("*.py"))
    if path.stem != "__init__"
)


def _opposite_rule(job, now_ms: int, retry_at_ms: int) -> AttemptEnding:
    """A retry rule that disagrees with the real one on almost every job."""
    return AttemptEnding(DEAD, None)


def _install_opposite_rule(patch: pytest.MonkeyPatch) -> None:
    """Replace the retry rule and the backoff wherever the model could reach them:
    in every module of the model that holds a name for them, ``evolve``'s included.
    A list of the modules that use the rule today would leave out the one this test
    is about: an ``evolve`` that imported the rule by name would keep the real one,
    agree with ``decide`` on every history, and pass.

    ``sys.modules``: ``beaverq.model.decide`` the attribute is the function that the
    package re-exports, not the module.
    """
    for name in MODEL_MODULES:
        importlib.import_module(name)
    for name, module in sorted(sys.modules.items()):
        if not name.startswith("beaverq.model.") or module is None:
            continue
        if hasattr(module, "attempt_ending"):
            patch.setattr(module, "attempt_ending", _opposite_rule)
        if hasattr(module, "backoff_ms"):
            patch.setattr(module, "backoff_ms", lambda *a: 0)


@pytest.fixture
def opposite_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    _install_opposite_rule(monkeypatch)


@settings(max_examples=60)
@given(history=histories())
def test_replay_gives_the_same_state_whatever_the_rule_says_today(history) -> None:
    events, states = history
    with pytest.MonkeyPatch.context() as patch:
        _install_opposite_rule(patch)
        replayed = replay_all(events)
    assert replayed == states[-1]


def test_the_schema_1_fixture_replays_the_same_under_another_rule(
    schema1_dir, opposite_rule
) -> None:
    """The upcaster applies schema 1's frozen rule, not today's."""
    assert checkpoint_of(_open(schema1_dir)) == _expected_checkpoint()


def test_verify_and_wal_dump_read_a_log_of_both_schemas(schema1_dir) -> None:
    """The offline readers follow each segment's schema too: verify reaches the state
    recovery reaches, and wal dump shows schema-1 events in their own shape, marked,
    and today's events in today's (docs/storage.md, "Schema evolution")."""
    fs = RealFileSystem()
    storage, state, _report = Storage.open(fs, str(schema1_dir))
    events = decide(state, Enqueue(now_ms=40_000, handler="h", job_id="after-upgrade"))
    storage.append(events)
    storage.flush()
    storage.close()
    state = replay_all(events, state)
    report = verify_data_dir(fs, str(schema1_dir))
    assert report.ok, report.errors
    assert checkpoint_of(report.state) == checkpoint_of(state)
    lines = list(dump_wal(fs, str(schema1_dir)))
    old = [line for line in lines if "(schema 1)" in line]
    # Every event of the fixture's two schema-1 segments, and nothing else, is marked.
    assert len(old) == _expected_checkpoint().last_lsn
    assert all("target=" not in line for line in old)
    failed = [line for line in old if "JobFailed" in line]
    assert failed and all("retry_at_ms=" in line for line in failed)
    (new,) = [line for line in lines if "after-upgrade" in line]
    assert "(schema" not in new and "target=<JobStatus.PENDING" in new
