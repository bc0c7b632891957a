"""The damage policy of recovery (impl/storage/wal_reader.py, impl/storage/storage.py), etcd style.

A table of corrupting functions ``corrupt(path, offset)`` is applied to a real data
directory, at every byte offset where it makes sense, and recovery is checked
against what the policy says:

* **Torn tail** (the last segment ends in bytes that are not a valid
  continuation, and nothing after them proves they were acknowledged): recovery
  cuts the segment at the last whole frame, keeps the cut bytes beside it in
  ``<segment>.cut-<offset>``, never applies the partial record, and the log then
  takes new appends and recovers again (break, repair, read, append, read).
* **Corruption** (damage in a sealed segment, a missing, duplicated or spliced
  segment, or damage in the last segment followed by a frame whose synced_lsn
  shows the damaged record was durable): recovery refuses with ``WalCorrupt``
  naming the file and the byte offset of the damaged frame, and changes nothing
  in the directory (compared byte for byte).

The data directories are written by ``Storage`` from model events; each case
works on a fresh copy of a template directory.
"""

from __future__ import annotations

import os
import random
import shutil

import attrs
import pytest
from storage_support import (
    NoSyncFS,
    files_of,
    fold,
    frames_of,
    more_events,
    reopen,
    scratch_directory,
    segment_paths,
    toggle_events,
    workload_events,
    write_log,
)
from strategies import run

from beaverq.impl.storage.codec import encode_event
from beaverq.impl.storage.record import (
    ALIGNMENT,
    HEADER_BYTES,
    RecordKind,
    encode_frame,
    find_valid_frames_after,
)
from beaverq.impl.storage.storage import Storage, StorageOptions
from beaverq.impl.storage.wal_reader import WalCorrupt
from beaverq.model import Enqueue, Fail, Lease, evolve, replay

SECTOR = 512

# -- Templates. ----------------------------------------------------------------------------


@attrs.frozen
class Template:
    directory: str
    events: tuple
    segments: tuple  # paths, in order
    states: tuple  # states[n]: the fold of the first n events (computed once)

    def copy(self, target: str) -> Template:
        shutil.copytree(self.directory, target)
        return attrs.evolve(
            self,
            directory=target,
            segments=tuple(os.path.join(target, os.path.basename(path)) for path in self.segments),
        )


def _template(directory, phases):
    """Write ``phases`` (events, batch sizes, segment_bytes_max) one open each."""
    events = []
    for phase_events, batch_sizes, segment_bytes_max in phases:
        write_log(
            directory,
            phase_events,
            batch_sizes,
            StorageOptions(segment_bytes_max=segment_bytes_max),
        )
        events += phase_events
    states = [fold([])]
    for event in events:
        states.append(evolve(states[-1], event))
    assert states[-1] == reopen_copy(directory).state
    return Template(directory, tuple(events), tuple(segment_paths(directory)), tuple(states))


@attrs.frozen
class Reopened:
    state: object
    report: object


def reopen_copy(directory):
    """Recover a throwaway copy (recovery itself adds a segment to the original)."""
    copy = directory.rstrip("/") + ".check"
    shutil.copytree(directory, copy)
    try:
        state, report = reopen(copy)
    finally:
        shutil.rmtree(copy)
    return Reopened(state, report)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    with scratch_directory(str(tmp_path_factory.mktemp("repair"))) as path:
        yield path


@pytest.fixture(scope="module")
def main_template(scratch):
    """Several sealed segments, then a last segment of small events in five batches.

    The first open writes the workload into segments of 600 bytes; the second open
    (which starts a new segment) writes eight small queue events in batches of 1,
    2, 1, 3, 1 into one last segment.
    """
    first = workload_events()
    second = toggle_events(fold(first), 8)
    template = _template(
        os.path.join(scratch, "main"),
        [(first, (3, 1, 2), 600), (second, (1, 2, 1, 3, 1), 1 << 20)],
    )
    assert len(template.segments) >= 4
    assert len(frames_of(_read(template.segments[-1]))) == 9
    return template


@pytest.fixture(scope="module")
def single_template(scratch):
    """One segment holding everything (the last segment is also the first)."""
    events = toggle_events(fold([]), 5)
    template = _template(os.path.join(scratch, "single"), [(events, (2, 1, 2), 1 << 20)])
    assert len(template.segments) == 1
    return template


@pytest.fixture
def work(scratch, request):
    target = os.path.join(scratch, f"work-{request.node.name}")
    yield lambda template, name="": template.copy(f"{target}{name}")
    for name in os.listdir(scratch):
        if name.startswith(f"work-{request.node.name}"):
            shutil.rmtree(os.path.join(scratch, name))


def _read(path):
    with open(path, "rb") as file:
        return file.read()


def _write(path, data):
    with open(path, "r+b") as file:
        file.write(data)


# -- The corrupting functions. ------------------------------------------------------------


def truncate(path, offset):
    os.truncate(path, offset)


def zero_tail(path, offset):
    """Zeroes from ``offset`` to the end: the file size reached the disk, the data not."""
    _write_at(path, offset, bytes(len(_read(path)) - offset))


def garble_tail(path, offset):
    """Random bytes from ``offset`` to the end: sectors half-written with garbage."""
    size = len(_read(path)) - offset
    _write_at(path, offset, random.Random(offset).randbytes(size))


def zero_sector(path, offset):
    """Zero the 512-byte sector that holds ``offset`` (clipped to the file)."""
    start = offset - offset % SECTOR
    size = min(SECTOR, len(_read(path)) - start)
    _write_at(path, start, bytes(size))


def flip_byte(path, offset):
    data = _read(path)
    _write_at(path, offset, bytes([data[offset] ^ 0x20]))


def _write_at(path, offset, data):
    with open(path, "r+b") as file:
        file.seek(offset)
        file.write(data)


# -- Torn tails: cut, kept, and the log goes on. -------------------------------------------


def _expected_cut(frames, original, damaged):
    """Offset of the first frame the damage touched (None: every frame intact)."""
    for frame in frames:
        end = frame.offset + frame.size
        if damaged[frame.offset : end] != original[frame.offset : end]:
            return frame.offset
    return None


def _check_torn_tail_recovery(template, corrupt, offset):
    """Apply ``corrupt`` at ``offset`` of the last segment, recover, check the cut,
    append, recover again."""
    segment = template.segments[-1]
    original = _read(segment)
    frames = frames_of(original)
    corrupt(segment, offset)
    damaged = _read(segment)
    cut = _expected_cut(frames, original, damaged)
    if cut is None:
        cut = len(original)
    whole = [frame for frame in frames if frame.offset + frame.size <= cut]
    last_lsn = whole[-1].lsn if whole else frames[0].lsn  # a header's LSN is the base
    torn = cut < len(damaged) or cut == 0
    where = (corrupt.__name__, offset, cut)

    fs = NoSyncFS()
    storage, state, report = Storage.open(fs, template.directory)
    try:
        assert state == template.states[last_lsn], where
        assert report.last_lsn == last_lsn, where
        assert report.records_replayed == last_lsn, where
        copy = f"{segment}.cut-{cut}"
        if torn:
            assert report.torn_tail is not None, where
            assert (report.torn_tail.path, report.torn_tail.offset) == (segment, cut), where
            assert report.torn_tail.size == len(damaged), where
            assert report.bytes_truncated == len(damaged) - cut, where
            assert report.cut_copy_path == copy, where
            assert _read(copy) == damaged[cut:], where
            if cut == 0:
                assert not os.path.exists(segment) or _read(segment) != damaged, where
            else:
                assert _read(segment) == original[:cut], where
        else:
            assert report.torn_tail is None and report.cut_copy_path is None, where
            assert not os.path.exists(copy)
        # Append after the repair, close, and recover once more.
        new = toggle_events(state, 2, now_ms=300_000)
        storage.append(new)
        storage.flush()
        storage.close()
    finally:
        fs.close()
    again, report = reopen(template.directory)
    assert again == replay(template.states[last_lsn], new), where
    assert report.torn_tail is None, where
    if torn:
        assert _read(copy) == damaged[cut:], where


TAIL_CORRUPTIONS = [truncate, zero_tail, garble_tail]


@pytest.mark.parametrize("corrupt", TAIL_CORRUPTIONS, ids=lambda function: function.__name__)
def test_a_torn_tail_at_every_offset_is_cut_kept_and_the_log_goes_on(main_template, work, corrupt):
    """Goal: a last segment cut short, zeroed or garbled from any byte on is a torn
    tail: recovery cuts at the last whole frame before the damage, keeps the cut
    bytes in ``<segment>.cut-<offset>``, replays exactly the whole records, and the
    log then takes appends and recovers cleanly.

    Method: for every byte offset of the last segment (five batches of small events
    after a header), corrupt a fresh copy of the template at that offset and run
    break, repair, read, append, read.  The expected cut is the start of the first
    frame whose bytes changed; a cut at a frame boundary with nothing after it is a
    clean end, not a tear.  Offsets inside the segment's header leave no whole
    frame: the segment file is removed (its bytes kept) and recovery ends at the
    previous segment.
    """
    size = len(_read(main_template.segments[-1]))
    for offset in range(size):
        copy = work(main_template, f"-{offset}")
        _check_torn_tail_recovery(copy, corrupt, offset)
        shutil.rmtree(copy.directory)


def test_truncation_of_the_only_segment_at_every_offset(single_template, work):
    """Goal: the same holds when the last segment is also the first (a data
    directory that was never reopened), down to a cut at byte 0.

    Method: truncate the single segment at every offset and run the same checks;
    with the header torn, recovery starts the log again from LSN 0.
    """
    size = len(_read(single_template.segments[-1]))
    for offset in range(size):
        copy = work(single_template, f"-{offset}")
        _check_torn_tail_recovery(copy, truncate, offset)
        shutil.rmtree(copy.directory)


def test_a_zeroed_sector_at_the_tail_is_torn(main_template, work):
    """Goal: the last sector of the last segment zeroed (a lost write) is a torn tail.

    Method: zero the sector holding the last frame's first byte, and the sector
    holding the last byte; each is cut and repaired like any torn tail.
    """
    segment = main_template.segments[-1]
    frames = frames_of(_read(segment))
    size = len(_read(segment))
    assert size > SECTOR  # so that the first sector and its header survive
    for name, offset in [("last-frame", frames[-1].offset), ("last-byte", size - 1)]:
        _check_torn_tail_recovery(work(main_template, name), zero_sector, offset)


def test_a_flipped_byte_in_the_last_batch_is_a_torn_tail(main_template, work):
    """Goal: damage in the last batch, which nothing after it proves durable, is
    treated as a torn tail: cut at the damaged frame, its bytes kept.

    This is the limit of the policy: a frame of the last batch that rotted after
    its fsync cannot be told from one the crash cut short.

    Method: flip each byte of the last batch (the last frame) and check the cut.
    """
    segment = main_template.segments[-1]
    last = frames_of(_read(segment))[-1]
    for offset in range(last.offset, last.offset + last.size):
        copy = work(main_template, f"-{offset}")
        _check_torn_tail_recovery(copy, flip_byte, offset)
        shutil.rmtree(copy.directory)


# -- Corruption: refused, named, nothing changed. ---------------------------------------------


def _assert_refused(directory, path, offset, reason=""):
    """Recovery raises WalCorrupt naming ``path`` and ``offset``, twice, and the
    directory is byte-for-byte what it was."""
    before = files_of(directory)
    for _attempt in range(2):  # a refused open releases the lock and changes nothing
        fs = NoSyncFS()
        try:
            with pytest.raises(WalCorrupt) as caught:
                Storage.open(fs, directory)
        finally:
            fs.close()
        error = caught.value
        assert (error.path, error.offset) == (path, offset), str(error)
        assert f"{path}: corrupt at byte {offset}" in str(error)
        assert reason in error.reason, error.reason
    assert files_of(directory) == before


def _frame_at(frames, offset):
    return next(frame for frame in frames if frame.offset <= offset < frame.offset + frame.size)


def test_a_flipped_byte_before_the_last_batch_is_refused(main_template, work):
    """Goal: damage in the last segment followed by a frame whose synced_lsn shows
    the damaged record was durable is corruption: WalCorrupt names the segment and
    the damaged frame's offset, and the directory is unchanged.

    Method: flip every byte of the last segment before its last batch (the header
    and the first four batches); frames of a later batch carry a synced_lsn at or
    beyond the damaged record.
    """
    segment = main_template.segments[-1]
    frames = frames_of(_read(segment))
    last_batch_start = frames[-1].offset
    assert frames[-1].synced_lsn > frames[-2].synced_lsn  # the last frame is its own batch
    for offset in range(last_batch_start):
        copy = work(main_template, f"-{offset}")
        path = copy.segments[-1]
        flip_byte(path, offset)
        _assert_refused(copy.directory, path, _frame_at(frames, offset).offset)
        shutil.rmtree(copy.directory)


@pytest.mark.parametrize("which", [0, -2], ids=["first", "next-to-last"])
def test_a_flipped_byte_in_a_sealed_segment_is_refused(main_template, work, which):
    """Goal: any damaged byte in a sealed (non-last) segment is corruption, its own
    last frames included.

    Method: flip every byte of the first and of the next-to-last segment; the
    error names that segment and the damaged frame.
    """
    frames = frames_of(_read(main_template.segments[which]))
    size = frames[-1].offset + frames[-1].size
    for offset in range(size):
        copy = work(main_template, f"-{offset}")
        path = copy.segments[which]
        flip_byte(path, offset)
        damaged = _frame_at(frames, offset).offset
        # Past the header the reason says the segment is sealed; a damaged header
        # is refused as such, whichever segment it heads.
        _assert_refused(copy.directory, path, damaged, "sealed" if damaged else "")
        shutil.rmtree(copy.directory)


def test_a_truncated_sealed_segment_is_refused(main_template, work):
    """Goal: a sealed segment cut short at any offset is corruption.

    Method: truncate the next-to-last segment at every offset.  Cut inside a frame,
    the error names the segment and that frame; cut at a frame boundary, the
    segment is intact but short, and the error names the next segment, whose base
    LSN no longer follows.
    """
    frames = frames_of(_read(main_template.segments[-2]))
    starts = {frame.offset for frame in frames}
    size = frames[-1].offset + frames[-1].size
    for offset in range(size):
        copy = work(main_template, f"-{offset}")
        truncate(copy.segments[-2], offset)
        if offset in starts and offset > 0:
            _assert_refused(copy.directory, copy.segments[-1], 0, "starts after")
        else:
            _assert_refused(copy.directory, copy.segments[-2], _frame_at(frames, offset).offset)
        shutil.rmtree(copy.directory)


def test_a_deleted_segment_is_refused(main_template, work):
    """Goal: a missing segment (first or any middle one) is corruption.

    Method: delete each segment but the last in turn; the error names the segment
    after the gap at byte 0 (a middle one is "missing"; without the first, the log
    starts after LSN 0 with no snapshot to cover it).
    """
    for index in range(len(main_template.segments) - 1):
        copy = work(main_template, f"-{index}")
        os.unlink(copy.segments[index])
        reason = "starts after" if index == 0 else "missing"
        _assert_refused(copy.directory, copy.segments[index + 1], 0, reason)
        shutil.rmtree(copy.directory)


@pytest.fixture(scope="module")
def twin_templates(scratch):
    """Two data directories with one event per segment (so the same file names) but
    different histories: material for duplicated and spliced segments."""
    ours = more_events(fold([]), 6)
    theirs = toggle_events(fold([]), 6)
    return (
        _template(os.path.join(scratch, "ours"), [(ours, (2, 1), 1)]),
        _template(os.path.join(scratch, "theirs"), [(theirs, (2, 1), 1)]),
    )


def test_a_segment_spliced_from_another_data_directory_is_refused(twin_templates, work):
    """Goal: a segment file replaced by the same-named segment of another data
    directory breaks the chain, wherever it sits (second, middle or last).

    Method: for each segment of ours whose bytes differ from theirs, replace it by
    theirs (identical name, intact frames, other history).  The first segments are
    byte-identical (a header-only segment at LSN 0, since a one-byte maximum is full
    at birth), so swapping them changes nothing and recovery must succeed.  Every
    other splice is refused at the first header that does not continue the chain:
    the spliced segment's own, or, when the segments before it are the same in both
    directories (so its header does continue them), the next segment's.
    """
    ours, theirs = twin_templates
    assert [os.path.basename(path) for path in ours.segments] == [
        os.path.basename(path) for path in theirs.segments
    ]
    assert _read(ours.segments[0]) == _read(theirs.segments[0])
    copy = work(ours, "-0")
    shutil.copyfile(theirs.segments[0], copy.segments[0])
    assert reopen_copy(copy.directory).state == ours.states[-1]
    for index in range(1, len(ours.segments)):
        assert _read(ours.segments[index]) != _read(theirs.segments[index])
        copy = work(ours, f"-{index}")
        shutil.copyfile(theirs.segments[index], copy.segments[index])
        same_before = _read(ours.segments[index - 1]) == _read(theirs.segments[index - 1])
        refused_at = index + 1 if same_before else index
        _assert_refused(copy.directory, copy.segments[refused_at], 0, "chain")
        shutil.rmtree(copy.directory)


def test_a_duplicated_segment_is_refused(twin_templates, work):
    """Goal: a segment's content appearing again under another segment's name (a
    bad restore copying one file twice) is refused.

    Method: copy segment i over segment i + 1 for each i; the header inside names
    index i, not the file's: "does not match the file name".
    """
    ours, _theirs = twin_templates
    for index in range(len(ours.segments) - 1):
        copy = work(ours, f"-{index}")
        shutil.copyfile(copy.segments[index], copy.segments[index + 1])
        _assert_refused(copy.directory, copy.segments[index + 1], 0, "file name")
        shutil.rmtree(copy.directory)


def test_a_segment_appended_to_itself_is_not_replayed_twice(twin_templates, work):
    """Goal: a last segment whose frames were written twice (a duplicated write) is
    never replayed twice: the repeated frames break the chain where they start.

    Method: append the last segment's own bytes to it.  Nothing after the repeat
    proves more than what is before it, so it is a torn tail: cut at the repeat,
    kept, and the state is the fold of the log once.
    """
    ours, _theirs = twin_templates
    copy = work(ours)
    segment = copy.segments[-1]
    data = _read(segment)
    with open(segment, "ab") as file:
        file.write(data)
    state, report = reopen(copy.directory)
    assert state == fold(ours.events)
    assert report.torn_tail is not None and report.torn_tail.offset == len(data)
    assert _read(report.cut_copy_path) == data


# -- Evidence must come from the log, not from the data in it. ---------------------------------


def _frame_as_text():
    """A valid frame whose bytes are valid UTF-8, so a str can carry it verbatim.

    Its magic (E5 B7) is a UTF-8 lead byte and a continuation byte; the LSN's low
    byte (0x80) completes the character; every other byte is ASCII, the CRCs by
    search over the payload.  It claims synced_lsn 0x4040404000: "everything up to
    there was durable".
    """
    lsn, synced = 0x40_4040_4080, 0x40_4040_4000
    for number in range(100_000):
        frame, _chain = encode_frame(
            RecordKind.EVENT, lsn, synced, f"{number:08d}".encode(), 0x41414141
        )
        if all(byte < 0x80 for byte in frame[24:32]):
            return frame.decode("utf-8")
    raise AssertionError("no frame with ASCII CRCs found")


def test_a_frame_inside_a_payload_is_not_evidence(scratch):
    """Goal: a worker's error text that happens to contain the bytes of a frame
    does not turn a torn tail into "corruption".

    The evidence search (``find_valid_frames_after``) looks at every aligned
    position after the damage, inside payloads too.  Error texts come from
    workers (exception messages about user data) and the model takes them as they
    are, so a payload can hold a well-formed frame claiming any synced_lsn.

    Method: a log of two batches: [enqueue a, lease a] then [enqueue b, fail a
    with an error holding a frame that claims synced_lsn 0x4040404000, placed at an
    aligned file offset].  Flip a byte of "enqueue b", the first frame of the last
    batch.  Nothing *in the log* after it proves it durable (the real frame after
    it says synced_lsn 2), so by the policy this is a torn tail: cut, kept, state
    at LSN 2.
    """
    text = _frame_as_text()
    base = [
        Enqueue(now_ms=0, handler="h", job_id="a"),
        Lease(now_ms=0, worker_id="w"),
        Enqueue(now_ms=1, handler="h", job_id="b"),
    ]
    for filler in range(ALIGNMENT):
        events, states = run(
            [*base, Fail(now_ms=2, job_id="a", attempt=1, error="x" * filler + text)]
        )
        assert len(events) == 4
        if encode_event(events[-1]).find(text.encode()) % ALIGNMENT == 0:
            break
    directory = os.path.join(scratch, "hidden-frame")
    write_log(directory, events, (2, 2))
    (segment,) = segment_paths(directory)
    frames = frames_of(_read(segment))
    assert [frame.lsn for frame in frames[1:]] == [1, 2, 3, 4]
    assert frames[4].synced_lsn == 2
    hidden = find_valid_frames_after(_read(segment), frames[4].offset)
    assert [frame.synced_lsn for frame in hidden] == [0x40_4040_4000]  # the planted frame
    flip_byte(segment, frames[3].offset + HEADER_BYTES)
    state, report = reopen(directory)
    assert report.torn_tail is not None and report.torn_tail.offset == frames[3].offset
    assert state == states[2]
