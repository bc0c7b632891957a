"""The WAL's append side (impl/storage/wal.py), read back through ``read_wal``.

What the writer promises: events appended and flushed come back from the files in
order and unchanged; one fsync covers a whole batch (group commit) and nothing is
durable before it returns; a segment is sealed at the first flush that fills it and
the chain runs on, unbroken, into the next; and a failed fsync fails the batch and
the WAL for good, because after a failed fsync the kernel may have dropped the
dirty pages, so no later fsync can be trusted to cover them.
"""

from __future__ import annotations

import errno
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st
from storage_support import (
    NoSyncFS,
    fold,
    frames_of,
    segment_paths,
    workload_events,
)
from strategies import histories

from beaverq.impl.storage.codec import SCHEMA_VERSION, decode_event, encode_event
from beaverq.impl.storage.fs import RealFileSystem
from beaverq.impl.storage.record import FrameProblem, Record, RecordKind, decode_frame
from beaverq.impl.storage.segments import decode_segment_header, parse_segment_name
from beaverq.impl.storage.storage import Storage
from beaverq.impl.storage.wal import WalFailed, WalWriter
from beaverq.impl.storage.wal_reader import read_wal


def new_writer(fs, directory, segment_bytes_max=1 << 20):
    os.makedirs(directory, exist_ok=True)
    return WalWriter(
        fs,
        directory,
        schema_version=SCHEMA_VERSION,
        next_index=0,
        last_lsn=0,
        chain_crc=0,
        event_chain_crc=0,
        segment_bytes_max=segment_bytes_max,
    )


def read_events(fs, directory):
    contents = read_wal(fs, directory, after_lsn=0, after_chain_crc=0)
    return [decode_event(record.payload) for record in contents.records], contents


@st.composite
def batched_histories(draw, max_commands=30):
    """A reachable history's events cut into non-empty consecutive batches."""
    events, _states = draw(histories(max_commands=max_commands))
    batches = []
    position = 0
    while position < len(events):
        size = draw(st.integers(1, 6))
        batches.append(events[position : position + size])
        position += size
    return batches


def write_batches(writer, batches):
    for batch in batches:
        for event in batch:
            writer.append(event.lsn, encode_event(event))
        writer.flush()


@given(batched_histories())
def test_flushed_batches_read_back_in_order(tmp_path_factory, batches):
    """Goal: every flushed event reads back equal and in LSN order, and each frame's
    synced_lsn is the durable LSN when it was framed (the last LSN of the batch
    before): the evidence the damage policy rests on.

    Method: a random reachable history in random batches, one flush per batch;
    read the directory with read_wal from LSN 0.
    """
    directory = str(tmp_path_factory.mktemp("wal"))
    fs = NoSyncFS()
    writer = new_writer(fs, directory)
    write_batches(writer, batches)
    events = [event for batch in batches for event in batch]
    read, contents = read_events(fs, directory)
    assert read == events
    assert contents.last_lsn == len(events) == writer.durable_lsn
    assert contents.torn_tail is None
    synced = [record.synced_lsn for record in contents.records]
    expected = []
    durable = 0
    for batch in batches:
        expected += [durable] * len(batch)
        durable = batch[-1].lsn
    assert synced == expected
    assert fold(read) == fold(events)


def test_one_fsync_covers_a_batch(tmp_path):
    """Goal: group commit: a flush of many events costs one fsync; an empty flush none.

    Method: count the fsyncs of a writer over a batch of 16 appends, then over an
    empty flush; read the events back.
    """
    fs = NoSyncFS()
    writer = new_writer(fs, str(tmp_path))
    assert fs.fsyncs == 1 and fs.dir_fsyncs == 1  # the first segment's header and name
    events = workload_events()
    for event in events:
        writer.append(event.lsn, encode_event(event))
    assert fs.fsyncs == 1
    assert writer.flush() == len(events)
    assert fs.fsyncs == 2
    assert writer.flush() == len(events)
    assert fs.fsyncs == 2
    assert read_events(fs, str(tmp_path))[0] == events


def test_durable_lsn_advances_only_at_flush(tmp_path):
    """Goal: an appended event is neither durable nor on disk until flush returns.

    Method: append events one by one; after each append, durable_lsn has not moved,
    the segment file has not grown and read_wal does not see the event; after the
    flush all three change together.
    """
    fs = NoSyncFS()
    directory = str(tmp_path)
    writer = new_writer(fs, directory)
    (path,) = segment_paths(directory)
    events = workload_events()[:6]
    for flushed, event in enumerate(events):
        size = os.path.getsize(path)
        writer.append(event.lsn, encode_event(event))
        assert writer.appended_lsn == event.lsn
        assert writer.durable_lsn == flushed
        assert os.path.getsize(path) == size
        assert read_events(fs, directory)[1].last_lsn == flushed
        assert writer.flush() == event.lsn == writer.durable_lsn
        assert os.path.getsize(path) > size
        assert read_events(fs, directory)[1].last_lsn == event.lsn


def test_close_flushes_and_then_refuses(tmp_path):
    """Goal: close makes the batch durable; the closed writer refuses further work.

    Method: append without flushing, close, read back; then append raises WalFailed.
    """
    fs = NoSyncFS()
    writer = new_writer(fs, str(tmp_path))
    events = workload_events()[:3]
    for event in events:
        writer.append(event.lsn, encode_event(event))
    writer.close()
    assert read_events(fs, str(tmp_path))[0] == events
    with pytest.raises(WalFailed, match="closed"):
        writer.append(4, b"x")


# -- Segments and rotation. -------------------------------------------------------------


# Above the 72 bytes of a segment header frame: a smaller maximum is full at birth.
@given(batched_histories(max_commands=40), st.integers(80, 1500))
def test_a_segment_is_sealed_by_the_first_event_that_finds_it_full(
    tmp_path_factory, batches, segment_bytes_max
):
    """Goal: an event that finds its segment at segment_bytes_max or more starts a new
    segment; no other event does.  Segments are numbered without gaps, each starts
    at the LSN its predecessor ended with, and the log reads back whole across them,
    however the batches straddle the files.

    Method: write random batches with a small maximum.  For every sealed segment:
    its size is at least the maximum, and before its last event it was below
    (unless that event is the segment's only one).  Every segment holds at least one
    event (rotation happens at an append).  File name and header agree on index and
    base LSN, and the LSNs continue across files.
    """
    directory = str(tmp_path_factory.mktemp("wal"))
    fs = NoSyncFS()
    writer = new_writer(fs, directory, segment_bytes_max)
    write_batches(writer, batches)
    events = [event for batch in batches for event in batch]
    assert read_events(fs, directory)[0] == events
    paths = segment_paths(directory)
    last_lsn = 0
    for index, path in enumerate(paths):
        with open(path, "rb") as file:
            data = file.read()
        records = frames_of(data)
        header = decode_segment_header(records[0].payload)
        assert parse_segment_name(os.path.basename(path)) == (index, last_lsn)
        assert (header.index, header.base_lsn) == (index, last_lsn)
        assert header.schema_version == SCHEMA_VERSION
        event_records = records[1:]
        assert [record.lsn for record in event_records] == list(
            range(last_lsn + 1, last_lsn + 1 + len(event_records))
        )
        assert event_records or (path == paths[-1])
        if path != paths[-1]:
            assert len(data) >= segment_bytes_max
            before_last = len(data) - event_records[-1].size
            assert before_last < segment_bytes_max or len(event_records) == 1
        if event_records:
            last_lsn = event_records[-1].lsn
    assert last_lsn == len(events)


def test_the_chain_runs_across_segments(tmp_path):
    """Goal: each segment header carries the chain value of the previous segment's
    last frame, so the chain is one across files.

    Method: write the workload with one event per segment, in batches of three (so
    every batch spans three files); for each pair of segments,
    the next header decodes when chained from the previous segment's last chain
    value and is refused when chained from anything else (0, or the chain value
    one frame earlier).
    """
    fs = NoSyncFS()
    directory = str(tmp_path)
    writer = new_writer(fs, directory, segment_bytes_max=1)  # one event per segment
    events = workload_events()
    write_batches(writer, [events[i : i + 3] for i in range(0, len(events), 3)])
    paths = segment_paths(directory)
    assert len(paths) == len(events) + 1
    chain = 0
    for path in paths:
        with open(path, "rb") as file:
            data = file.read()
        records = frames_of(data)
        header = decode_segment_header(records[0].payload)
        assert header.previous_chain_crc == chain
        assert isinstance(decode_frame(data, 0, chain), Record)
        assert isinstance(decode_frame(data, 0, chain ^ 1), FrameProblem)
        if len(records) > 1:
            earlier = records[-2].chain_crc
            assert records[-1].kind is RecordKind.EVENT
            assert earlier != records[-1].chain_crc
        chain = records[-1].chain_crc
    assert read_events(fs, directory)[0] == events


# -- Failures. ----------------------------------------------------------------------------


class FailingFS:
    """RealFileSystem whose ``fail_at``-th call of ``operation`` raises OSError(errno)."""

    def __init__(self, operation, fail_at, code=errno.EIO):
        self._inner = RealFileSystem()
        self._operation = operation
        self._fail_at = fail_at
        self._code = code
        self.calls = 0

    def __getattr__(self, name):
        method = getattr(self._inner, name)
        if name != self._operation:
            return method

        def counted(*args):
            self.calls += 1
            if self.calls == self._fail_at:
                raise OSError(self._code, os.strerror(self._code), args[0])
            return method(*args)

        return counted


def _script(writer, events):
    """The steps of a small workload: appends, flushes and rotations."""
    steps = []
    for number, event in enumerate(events):
        steps.append(("append", event))
        if number % 3 == 2:
            steps.append(("flush", None))
        if number % 7 == 6:
            steps.append(("rotate", None))
    steps.append(("flush", None))
    return steps


def _do(writer, step):
    kind, event = step
    if kind == "append":
        writer.append(event.lsn, encode_event(event))
    elif kind == "flush":
        writer.flush()
    else:
        writer.rotate()


# Small segments, so that batches also cross into new files (seal, create, fsync_dir).
SCRIPT_SEGMENT_BYTES = 400


def _count_calls(tmp_path, operation, events):
    fs = FailingFS(operation, fail_at=0)
    directory = str(tmp_path / "count")
    writer = new_writer(fs, directory, SCRIPT_SEGMENT_BYTES)
    for step in _script(writer, events):
        _do(writer, step)
    return fs.calls


@pytest.mark.parametrize("operation", ["fsync", "fsync_dir", "append"])
def test_a_failed_write_or_fsync_fails_the_batch_and_the_wal_for_good(tmp_path, operation):
    """Goal: when the n-th fsync (or directory fsync, or write) fails, the call that
    made it raises WalFailed, nothing of the batch is reported durable, and every
    later append, flush or rotate raises WalFailed: the WAL never retries.

    Method: count the calls a scripted workload (appends, flushes every third
    event, a rotation every seventh, segments small enough that batches cross
    files) makes; then, for every n, rerun it on a file
    system whose n-th call raises OSError(EIO).  The failure surfaces at exactly one
    step; durable_lsn there is what it was before that step and never moves again;
    the error chains the OSError.  Then reopen the directory: recovery holds at
    least every event that was durable.
    """
    events = workload_events()
    total = _count_calls(tmp_path, operation, events)
    assert total >= 5, total
    for fail_at in range(1, total + 1):
        fs = FailingFS(operation, fail_at)
        directory = str(tmp_path / f"{operation}-{fail_at}")
        try:
            writer = new_writer(fs, directory, SCRIPT_SEGMENT_BYTES)
        except WalFailed as error:
            assert isinstance(error.__cause__, OSError)
            assert error.__cause__.errno == errno.EIO
            continue
        failed = None
        for step in _script(writer, events):
            durable = writer.durable_lsn
            if failed is None:
                try:
                    _do(writer, step)
                except WalFailed as error:
                    assert isinstance(error.__cause__, OSError), error
                    assert error.__cause__.errno == errno.EIO
                    assert fs.calls == fail_at
                    assert writer.durable_lsn == durable
                    failed = durable
            else:
                with pytest.raises(WalFailed, match="refuses"):
                    _do(writer, step)
                assert writer.durable_lsn == failed
        assert failed is not None, f"call {fail_at} of {operation} never failed"
        with pytest.raises(WalFailed):
            writer.flush()
        writer.close()  # no flush is attempted after a failure
        recovered, _contents = read_events(RealFileSystem(), directory)
        assert recovered[:failed] == events[:failed]


def test_storage_refuses_after_a_failed_fsync_and_recovers_what_was_durable(tmp_path):
    """Goal: through Storage, a failed fsync fails the flush, later appends and
    flushes are refused, and a reopen recovers at least the durable prefix.

    Method: open Storage on a file system whose third fsync fails (the first two
    are the segment header and the first flush); flush twice; the second flush
    raises WalFailed; append then raises WalFailed; close releases the lock; a
    fresh open recovers a state that is the fold of a prefix at least as long as
    the first flush.
    """
    directory = str(tmp_path / "data")
    fs = FailingFS("fsync", fail_at=3)
    storage, _state, _report = Storage.open(fs, directory)
    events = workload_events()
    storage.append(events[:4])
    assert storage.flush() == 4
    storage.append(events[4:8])
    with pytest.raises(WalFailed) as caught:
        storage.flush()
    assert caught.value.__cause__.errno == errno.EIO
    assert storage.durable_lsn == 4
    with pytest.raises(WalFailed):
        storage.append(events[8:9])
    with pytest.raises(WalFailed):
        storage.flush()
    storage.close()
    fresh = RealFileSystem()
    reopened, recovered, _report = Storage.open(fresh, directory)
    reopened.close()
    assert recovered.last_lsn >= 4
    assert recovered == fold(events[: recovered.last_lsn])
