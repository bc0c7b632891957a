"""Properties of CrashFS's crashes: the fault model in ``tests/sim/crashfs.py``, checked.

What CrashFS does short of a crash is checked against the real file system by
``tests/test_fs_contract.py``.  Here the question is what a crash leaves behind: that
synced data always survives, that each policy allows exactly the outcomes the fault
model states (checked by enumerating every outcome and comparing with a deliberately
dumb oracle that computes the allowed set directly), that tears stay inside unsynced
writes and on sector boundaries, and that the failure injections do what they claim.

Small sector sizes (1 to 8 bytes) stand in for 512 so that a few bytes of data span
several sectors.
"""

from __future__ import annotations

import errno
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sim.crashfs import (
    ALL_POLICIES,
    NOTHING_UNSYNCED,
    PROCESS_KILL,
    REVERTED_ENTRIES,
    TORN_WRITES,
    WRITE_PREFIX,
    WRITE_SUBSET,
    CrashFS,
    CrashPolicy,
    Entries,
    EnumeratingChooser,
    HypothesisChooser,
    Tree,
    UseAfterCrash,
    Writes,
    all_crash_states,
    crash_policies,
    enumerate_choices,
)

# -- helpers ---------------------------------------------------------------------------------


def fresh(sector_bytes: int = 512, directories: tuple[str, ...] = ("/d",)) -> CrashFS:
    """A CrashFS whose ``directories`` exist durably."""
    return CrashFS.from_tree(dict.fromkeys(directories), sector_bytes=sector_bytes)


def durable_file(fs: CrashFS, path: str, content: bytes) -> None:
    """Creates ``path`` with ``content`` and makes both the bytes and the name durable."""
    fs.create(path)
    fs.append(path, content)
    fs.fsync(path)
    fs.fsync_dir(path.rsplit("/", 1)[0] or "/")


def trees(states: list[CrashFS]) -> list[Tree]:
    return [state.tree() for state in states]


def files_under(tree: Tree, path: str) -> dict[str, bytes | None]:
    return {key: value for key, value in tree.items() if key.startswith(path + "/")}


class RecordingChooser:
    """Wraps a chooser and remembers every piece of garbage it handed out."""

    def __init__(self, inner: HypothesisChooser) -> None:
        self.inner = inner
        self.garbage: list[bytes] = []

    def choose(self, label: str, options: int) -> int:
        return self.inner.choose(label, options)

    def garble(self, label: str, size: int) -> bytes:
        garbage = self.inner.garble(label, size)
        self.garbage.append(garbage)
        return garbage


# A file operation for the oracles: ("append", bytes) | ("truncate", size) | ("fsync",).
file_operations = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.binary(min_size=1, max_size=7)),
        st.tuples(st.just("truncate"), st.integers(0, 12)),
        st.tuples(st.just("fsync")),
    ),
    max_size=7,
)


def oracle_apply(content: bytes, operation: tuple) -> bytes:
    """The oracle's own file semantics, written independently of CrashFS: an append is a
    write at the offset the file had when it was issued (so a lost earlier append leaves
    zeros in front of it); a truncate cuts or zero-extends."""
    kind, argument = operation[0], operation[1]
    if kind == "truncate":
        return content[:argument] + bytes(max(0, argument - len(content)))
    offset, data = argument
    padded = content + bytes(max(0, offset - len(content)))
    return padded[:offset] + data + padded[offset + len(data) :]


def run_file_operations(fs: CrashFS, path: str, operations: list[tuple]) -> tuple[list, list]:
    """Applies ``operations`` to ``path``; returns (synced, unsynced) operations in the
    oracle's form, appends resolved to ("write", (offset, data))."""
    synced: list[tuple] = []
    unsynced: list[tuple] = []
    for operation in operations:
        if operation[0] == "fsync":
            fs.fsync(path)
            synced += unsynced
            unsynced = []
        elif operation[0] == "append":
            unsynced.append(("write", (fs.size(path), operation[1])))
            fs.append(path, operation[1])
        else:
            unsynced.append(operation)
            fs.truncate(path, operation[1])
    return synced, unsynced


def fold(content: bytes, operations: list[tuple]) -> bytes:
    for operation in operations:
        content = oracle_apply(content, operation)
    return content


# -- synced data survives --------------------------------------------------------------------

churn_operations = st.lists(
    st.one_of(
        st.tuples(st.just("create"), st.sampled_from(["x", "y", "sub/z"])),
        st.tuples(st.just("append"), st.sampled_from(["x", "y", "sub/z"]), st.binary(max_size=9)),
        st.tuples(st.just("truncate"), st.sampled_from(["x", "y"]), st.integers(0, 9)),
        st.tuples(st.just("rename"), st.sampled_from([("x", "y"), ("y", "x")])),
        st.tuples(st.just("unlink"), st.sampled_from(["x", "y", "sub/z"])),
        st.tuples(st.just("mkdir"), st.just("sub")),
        st.tuples(st.just("fsync"), st.sampled_from(["x", "y", "sub/z"])),
        st.tuples(st.just("fsync_dir"), st.sampled_from(["", "sub"])),
        st.tuples(st.just("fail_next_fsync"), st.sampled_from(["x", "y", ""])),
        st.tuples(st.just("keep_append"), st.sampled_from(["k0", "k1"]), st.binary(max_size=9)),
        st.tuples(st.just("keep_fsync"), st.sampled_from(["k0", "k1"])),
    ),
    max_size=20,
)


def churn(fs: CrashFS, operations: list[tuple]) -> None:
    """Runs random operations in /churn (and appends to /keep), ignoring refusals."""
    for name, *arguments in operations:
        try:
            if name == "rename":
                source, target = arguments[0]
                fs.rename(f"/churn/{source}", f"/churn/{target}")
            elif name == "keep_append":
                fs.append(f"/keep/{arguments[0]}", arguments[1])
            elif name == "keep_fsync":
                fs.fsync(f"/keep/{arguments[0]}")
            else:
                path = f"/churn/{arguments[0]}".rstrip("/")
                getattr(fs, name)(path, *arguments[1:])
        except OSError:
            # Churn only: a random operation the file system refuses (a missing file,
            # an existing name) is part of the workload; the assertions come after it.
            continue


@given(
    keep=st.lists(st.binary(max_size=20), min_size=2, max_size=2),
    operations=churn_operations,
    sector_bytes=st.sampled_from([1, 4, 8]),
    policy=crash_policies(),
    data=st.data(),
)
def test_synced_data_survives_every_policy(
    keep: list[bytes],
    operations: list[tuple],
    sector_bytes: int,
    policy: CrashPolicy,
    data: st.DataObject,
) -> None:
    """Goal: whatever else happens, bytes and names made durable survive any crash.
    Method: write two files in /keep and sync them and their names; then run random
    operations (writes, renames, unlinks, syncs, failed syncs) in /churn and appends to
    the /keep files; crash under a random policy with Hypothesis choices.  /keep must
    still list both files, each starting with its synced bytes."""
    fs = fresh(sector_bytes, directories=("/keep", "/churn"))
    for index, content in enumerate(keep):
        durable_file(fs, f"/keep/k{index}", content)
    churn(fs, operations)
    crashed = fs.crash(policy, HypothesisChooser(data)).tree()
    assert sorted(files_under(crashed, "/keep")) == ["/keep/k0", "/keep/k1"]
    for index, content in enumerate(keep):
        survivor = crashed[f"/keep/k{index}"]
        assert survivor is not None
        assert survivor[: len(content)] == content, (index, policy)


# -- each write policy allows exactly what the model says ------------------------------------


@given(base=st.binary(max_size=9), operations=file_operations)
def test_each_write_policy_allows_exactly_its_outcomes(
    base: bytes, operations: list[tuple]
) -> None:
    """Goal: NONE keeps exactly the synced state, PREFIX exactly the prefixes, SUBSET
    exactly the subsets of the unsynced operations (those before the last fsync are
    always there), ALL everything.
    Method: a durable file gets random appends, truncates and fsyncs; the dumb oracle
    lists the allowed contents directly (folding prefixes / every subset of the unsynced
    operations over the synced content); all_crash_states must yield exactly that set."""
    fs = fresh()
    durable_file(fs, "/d/f", base)
    synced, unsynced = run_file_operations(fs, "/d/f", operations)
    settled = fold(base, synced)
    expected = {
        NOTHING_UNSYNCED: {settled},
        WRITE_PREFIX: {fold(settled, unsynced[:k]) for k in range(len(unsynced) + 1)},
        WRITE_SUBSET: {
            fold(settled, [op for op, kept in zip(unsynced, mask, strict=True) if kept])
            for mask in itertools.product([False, True], repeat=len(unsynced))
        },
        PROCESS_KILL: {fold(settled, unsynced)},
    }
    assert fs.read("/d/f") == fold(settled, unsynced)
    for policy, contents in expected.items():
        outcomes = [state.read("/d/f") for state in all_crash_states(fs, [policy])]
        assert len(outcomes) == len(set(outcomes))
        assert set(outcomes) == contents, policy


@given(base=st.binary(max_size=9), operations=file_operations, data=st.data())
def test_hypothesis_choices_stay_inside_the_enumerated_outcomes(
    base: bytes, operations: list[tuple], data: st.DataObject
) -> None:
    """Goal: the two choosers drive the same fault model: whatever Hypothesis picks is one
    of the outcomes the enumerator lists.  Method: a random workload as above, one crash
    per non-torn policy with Hypothesis choices, membership in all_crash_states."""
    fs = fresh()
    durable_file(fs, "/d/f", base)
    fs.create("/d/g")  # an unsynced name, so entry policies have something to decide
    run_file_operations(fs, "/d/f", operations)
    for policy in ALL_POLICIES:
        if policy.writes is Writes.TORN:
            continue  # Hypothesis garbage differs from the enumerator's fixed pattern
        tree = fs.crash_tree(policy, HypothesisChooser(data))
        assert tree in trees(list(all_crash_states(fs, [policy]))), policy


def test_the_enumerator_counts_every_outcome_of_two_writes() -> None:
    """Goal: the exact outcome sets for the smallest interesting case.
    Method: an empty durable file and two unsynced 4-byte appends inside one sector.
    By hand: NONE leaves b""; PREFIX adds A and AB; SUBSET adds the hole-then-B case;
    TORN lets each write be lost, kept, zeroed or garbled (G = 0xA5 bytes), 16 cases of
    which 13 differ (a lost write under a surviving later one reads as zeros)."""
    fs = fresh()
    durable_file(fs, "/d/f", b"")
    fs.append("/d/f", b"AAAA")
    fs.append("/d/f", b"BBBB")
    zeros, garbage = b"\0" * 4, b"\xa5" * 4

    def outcomes(policy: CrashPolicy) -> list[bytes]:
        return [state.read("/d/f") for state in all_crash_states(fs, [policy])]

    assert outcomes(NOTHING_UNSYNCED) == [b""]
    assert sorted(outcomes(WRITE_PREFIX)) == sorted([b"", b"AAAA", b"AAAABBBB"])
    assert sorted(outcomes(WRITE_SUBSET)) == sorted([b"", b"AAAA", zeros + b"BBBB", b"AAAABBBB"])
    torn = outcomes(TORN_WRITES)
    first_alone = [b"", b"AAAA", zeros, garbage]
    both = [a + b for a in [b"AAAA", zeros, garbage] for b in [b"BBBB", zeros, garbage]]
    assert len(torn) == 13
    assert sorted(torn) == sorted(first_alone + both)
    assert sorted(state.read("/d/f") for state in all_crash_states(fs)) == sorted(torn)


def test_enumerate_choices_walks_every_sequence_once() -> None:
    """Goal: the depth-first enumerator visits each choice sequence exactly once, even
    when later choices depend on earlier ones.  Method: a run that asks 2 options, then
    (if it got 1) 3 more options: 1 + 3 = 4 sequences."""

    def run(chooser: EnumeratingChooser) -> tuple[int, ...]:
        first = chooser.choose("first", 2)
        return (first,) if first == 0 else (first, chooser.choose("second", 3))

    assert list(enumerate_choices(run)) == [(0,), (1, 0), (1, 1), (1, 2)]


# -- torn writes -----------------------------------------------------------------------------


@given(
    base=st.binary(max_size=10),
    appends=st.lists(st.binary(min_size=1, max_size=12), min_size=1, max_size=4),
    sector_bytes=st.sampled_from([1, 4, 8]),
    data=st.data(),
)
def test_torn_writes_alter_only_unsynced_bytes_on_sector_boundaries(
    base: bytes, appends: list[bytes], sector_bytes: int, data: st.DataObject
) -> None:
    """Goal: a torn crash never touches synced bytes, and within each unsynced write
    every sector piece is wholly new, wholly zero, wholly garbage or absent.
    Method: a synced file, random unsynced appends, one TORN crash with recorded garbage.
    Cut the appended range into pieces at sector boundaries and write ends; the crashed
    file must keep the synced bytes, end on a piece boundary, and hold in each piece it
    covers exactly the new bytes, zeros, or garbage handed out by the chooser."""
    fs = fresh(sector_bytes)
    durable_file(fs, "/d/f", base)
    pieces: list[tuple[int, bytes]] = []  # (offset, the bytes the write put there)
    offset = len(base)
    for append in appends:
        fs.append("/d/f", append)
        start = offset
        while start < offset + len(append):
            end = min(offset + len(append), (start // sector_bytes + 1) * sector_bytes)
            pieces.append((start, append[start - offset : end - offset]))
            start = end
        offset += len(append)
    chooser = RecordingChooser(HypothesisChooser(data))
    image = fs.crash(TORN_WRITES, chooser).read("/d/f")
    assert image[: len(base)] == base
    assert len(image) in {len(base)} | {start + len(piece) for start, piece in pieces}
    for start, piece in pieces:
        if start >= len(image):
            continue  # lost at the end
        found = image[start : start + len(piece)]
        assert found in (piece, bytes(len(piece)), *chooser.garbage), (start, found)


def test_a_torn_write_spanning_sectors_tears_per_sector() -> None:
    """Goal: the tear points are absolute sector boundaries, not write boundaries.
    Method: sector 4, durable b"xy", one unsynced 6-byte append [2, 8) = pieces [2, 4)
    and [4, 8); the TORN outcomes are every combination of the two pieces' fates
    (lost last piece shortens the file; a lost first piece under a kept second is zeros)."""
    fs = fresh(sector_bytes=4)
    durable_file(fs, "/d/f", b"xy")
    fs.append("/d/f", b"abcdef")
    outcomes = {state.read("/d/f") for state in all_crash_states(fs, [TORN_WRITES])}
    first = [b"ab", b"\0\0", b"\xa5\xa5"]
    second = [b"cdef", b"\0" * 4, b"\xa5" * 4]
    expected = {b"xy"} | {b"xy" + a for a in first} | {b"xy" + a + b for a in first for b in second}
    assert outcomes == expected


# -- directory operations --------------------------------------------------------------------


def test_unsynced_directory_operations_revert_in_prefix_order() -> None:
    """Goal: staged entry operations survive as a prefix, per directory; a reverted
    create takes its (even fsynced) data with it; a reverted unlink brings the file back
    with its durable bytes; a rename is all or nothing.
    Method: durable old=O and gone=G; then create+fsync new=N, unlink gone, rename new
    over old, no fsync_dir.  REVERTED_ENTRIES must give exactly the four prefixes, and
    NOTHING_UNSYNCED the first."""
    fs = fresh()
    durable_file(fs, "/d/old", b"O")
    durable_file(fs, "/d/gone", b"G")
    fs.create("/d/new")
    fs.append("/d/new", b"N")
    fs.fsync("/d/new")
    fs.unlink("/d/gone")
    fs.rename("/d/new", "/d/old")
    prefixes = [
        {"/d": None, "/d/gone": b"G", "/d/old": b"O"},
        {"/d": None, "/d/gone": b"G", "/d/new": b"N", "/d/old": b"O"},
        {"/d": None, "/d/new": b"N", "/d/old": b"O"},
        {"/d": None, "/d/old": b"N"},
    ]
    found = trees(list(all_crash_states(fs, [REVERTED_ENTRIES])))
    assert sorted(map(sorted, map(dict.items, found))) == sorted(
        map(sorted, map(dict.items, prefixes))
    )
    assert fs.crash_tree(NOTHING_UNSYNCED) == prefixes[0]
    assert fs.crash_tree(PROCESS_KILL) == prefixes[-1] == fs.tree()


def test_a_reverted_mkdir_takes_its_whole_subtree() -> None:
    """Goal: each directory's entries are durable only through its own fsync_dir.
    Method: mkdir /d/sub and a durable-looking file inside (file and /d/sub synced, but
    not /d); NOTHING_UNSYNCED loses the whole subtree; after fsync_dir(/d) it stays."""
    fs = fresh()
    fs.mkdir("/d/sub")
    durable_file(fs, "/d/sub/f", b"data")
    assert fs.crash_tree(NOTHING_UNSYNCED) == {"/d": None}
    fs.fsync_dir("/d")
    assert fs.crash_tree(NOTHING_UNSYNCED) == {"/d": None, "/d/sub": None, "/d/sub/f": b"data"}


def test_fsync_of_a_file_does_not_make_its_name_durable() -> None:
    """Goal: the model is stricter than ext4: a new file needs its directory synced.
    Method: create, append, fsync the file only: a NOTHING_UNSYNCED crash loses it;
    fsync_dir then keeps it."""
    fs = fresh()
    fs.create("/d/f")
    fs.append("/d/f", b"x")
    fs.fsync("/d/f")
    assert fs.crash_tree(NOTHING_UNSYNCED) == {"/d": None}
    fs.fsync_dir("/d")
    assert fs.crash_tree(NOTHING_UNSYNCED) == {"/d": None, "/d/f": b"x"}


@pytest.mark.parametrize("synced_before_rename", [True, False])
def test_a_file_renamed_over_another_is_old_or_new_never_a_mix(
    synced_before_rename: bool,
) -> None:
    """Goal: the snapshot pattern (write temp, fsync, rename over, fsync_dir later) gives
    the old or the new content after any crash; without the fsync it does not.
    Method: durable cur=OLD (3 sectors of 4 bytes), tmp=NEW... written, optionally
    fsynced, renamed over cur, no fsync_dir; enumerate every crash state under every
    policy and collect cur's content."""
    fs = fresh(sector_bytes=4)
    old, new = b"old-old-old-", b"new-new-new-"
    durable_file(fs, "/d/cur", old)
    fs.create("/d/tmp")
    fs.append("/d/tmp", new)
    if synced_before_rename:
        fs.fsync("/d/tmp")
    fs.rename("/d/tmp", "/d/cur")
    seen = {state.read("/d/cur") for state in all_crash_states(fs)}
    if synced_before_rename:
        assert seen == {old, new}
    else:
        assert {old, new} < seen  # teeth: an unsynced temp can leave a mix or nothing
        assert b"" in seen


# -- injected failures -----------------------------------------------------------------------


def test_after_a_failed_fsync_the_data_is_never_claimed_durable() -> None:
    """Goal: the fsyncgate model: a failed fsync's writes stay readable but no later
    fsync makes them durable; they may or may not survive a crash.
    Method: append X, fail the fsync (EIO), append Y, fsync (succeeds).  Reads show XY;
    NOTHING_UNSYNCED keeps only Y behind a hole; the enumeration contains both."""
    fs = fresh()
    durable_file(fs, "/d/f", b"")
    durable_file(fs, "/d/other", b"")
    fs.append("/d/f", b"XX")
    fs.fail_next_fsync("/d/f")
    fs.fsync("/d/other")  # armed for /d/f only
    with pytest.raises(OSError) as raised:
        fs.fsync("/d/f")
    assert raised.value.errno == errno.EIO
    assert fs.read("/d/f") == b"XX"
    fs.append("/d/f", b"YY")
    fs.fsync("/d/f")
    assert fs.read("/d/f") == b"XXYY"
    assert fs.crash_tree(NOTHING_UNSYNCED)["/d/f"] == b"\0\0YY"
    outcomes = {state.read("/d/f") for state in all_crash_states(fs)}
    assert {b"\0\0YY", b"XXYY"} <= outcomes
    assert all(outcome.endswith(b"YY") for outcome in outcomes)


def test_a_failed_directory_fsync_leaves_entries_staged() -> None:
    """Goal: fail_next_fsync(None) hits the next sync of any kind; a directory whose
    fsync failed keeps its entries staged until a later fsync_dir succeeds.
    Method: create, fail the fsync_dir, check NOTHING_UNSYNCED loses the name, retry."""
    fs = fresh()
    fs.create("/d/f")
    fs.fail_next_fsync()
    with pytest.raises(OSError) as raised:
        fs.fsync_dir("/d")
    assert raised.value.errno == errno.EIO
    assert fs.crash_tree(NOTHING_UNSYNCED) == {"/d": None}
    fs.fsync_dir("/d")
    assert fs.crash_tree(NOTHING_UNSYNCED) == {"/d": None, "/d/f": b""}


def test_disk_full_makes_a_short_write_then_refuses() -> None:
    """Goal: ENOSPC after a byte budget, with the short write os.write would make.
    Method: budget 5: append 3 (fine), append 4 (2 written, ENOSPC), append 1 (ENOSPC,
    nothing written); lifting the budget lets appends through again."""
    fs = fresh()
    durable_file(fs, "/d/f", b"")
    fs.disk_full_after(5)
    fs.append("/d/f", b"abc")
    with pytest.raises(OSError) as raised:
        fs.append("/d/f", b"defg")
    assert raised.value.errno == errno.ENOSPC
    assert fs.read("/d/f") == b"abcde"
    with pytest.raises(OSError):
        fs.append("/d/f", b"h")
    fs.disk_full_after(None)
    fs.append("/d/f", b"h")
    assert fs.read("/d/f") == b"abcdeh"


def test_corruption_appears_in_the_crash_image_only() -> None:
    """Goal: bit rot is a fault kept apart from the pristine data: the process reads the
    clean cached copy; the next boot reads the rot.  Only durable bytes can rot.
    Method: corrupt two durable bytes, read, crash, read; corrupt past the durable end."""
    fs = fresh()
    durable_file(fs, "/d/f", b"abcdef")
    fs.append("/d/f", b"ghi")
    fs.corrupt("/d/f", 2, b"XY")
    assert fs.read("/d/f") == b"abcdefghi"
    with pytest.raises(AssertionError):
        fs.corrupt("/d/f", 5, b"XY")
    assert fs.crash(PROCESS_KILL).read("/d/f") == b"abXYefghi"


def test_a_crash_is_a_new_boot() -> None:
    """Goal: after crash() the old file system refuses every call (a stale handle is a
    test bug, loudly), and the new one is a new process: pid + 1, no lock held.
    Method: lock, crash, call the old one, lock on the new one."""
    fs = fresh()
    fs.lock("/d/LOCK")
    fs.fsync("/d/LOCK")
    fs.fsync_dir("/d")
    after = fs.crash(NOTHING_UNSYNCED)
    with pytest.raises(UseAfterCrash):
        fs.read("/d/LOCK")
    with pytest.raises(UseAfterCrash):
        fs.crash(NOTHING_UNSYNCED)
    assert after.pid == fs.pid + 1
    assert after.read("/d/LOCK") == f"{fs.pid}\n".encode()
    after.lock("/d/LOCK")
    assert after.read("/d/LOCK") == f"{after.pid}\n".encode()


def test_a_policy_that_needs_choices_needs_a_chooser() -> None:
    """Goal: a missing chooser is a test bug caught at once, not a silent default.
    Method: PREFIX with a staged write and no chooser; NONE and ALL need none."""
    fs = fresh()
    durable_file(fs, "/d/f", b"")
    fs.append("/d/f", b"x")
    with pytest.raises(AssertionError, match="needs a chooser"):
        fs.crash_tree(WRITE_PREFIX)
    assert fs.crash_tree(CrashPolicy(Writes.ALL, Entries.NONE))["/d/f"] == b"x"
