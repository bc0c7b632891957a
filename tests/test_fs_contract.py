"""The FileSystem contract: one suite, run against RealFileSystem and CrashFS alike.

The storage code is tested on CrashFS and runs on RealFileSystem, so the two must agree
on everything the storage code can observe short of a crash: results, and which
``OSError`` subclass (and errno) each misuse raises.  Every test below takes the
parametrized ``env`` fixture and runs twice: once on the real file system in a pytest
``tmp_path``, once on a fresh CrashFS under ``/base`` (never crashed here; crashing is
``tests/test_crashfs.py``'s business).  The last test is differential: random operation
sequences run on both side by side, and every outcome and the final trees must match.

Outside the contract, on purpose: ``size`` of a directory (the kernel reports a block
size, CrashFS refuses), renames across directories (CrashFS refuses by assertion), and
the pid in the lock file (CrashFS writes its own ``pid``).
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sim.crashfs import CrashFS

from beaverq.impl.storage.fs import DataDirLocked, FileSystem, RealFileSystem


@attrs.frozen
class Env:
    fs: FileSystem
    base: str

    def path(self, *names: str) -> str:
        return os.path.join(self.base, *names)


@pytest.fixture(params=["real", "crashfs"])
def env(request: pytest.FixtureRequest, tmp_path: os.PathLike[str]) -> Iterator[Env]:
    fs: FileSystem
    if request.param == "real":
        fs, base = RealFileSystem(), str(tmp_path)
    else:
        fs, base = CrashFS(pid=os.getpid()), "/base"
        fs.mkdir(base)
    yield Env(fs, base)
    fs.close()


def tree_of(fs: FileSystem, directory: str) -> dict[str, bytes | None]:
    """Everything under ``directory`` through the protocol alone: relative path -> bytes,
    or None for a directory."""
    tree: dict[str, bytes | None] = {}
    for name in fs.list_dir(directory):
        path = os.path.join(directory, name)
        try:
            below = tree_of(fs, path)
        except NotADirectoryError:
            tree[name] = fs.read(path)
            continue
        tree[name] = None
        tree.update({os.path.join(name, key): value for key, value in below.items()})
    return tree


def test_create_makes_an_empty_file_once(env: Env) -> None:
    """Goal: create makes an empty file and refuses an existing name or a missing parent.
    Method: create, inspect with read/size/exists/list_dir, then create in bad places."""
    fs, a = env.fs, env.path("a")
    assert not fs.exists(a)
    fs.create(a)
    assert fs.exists(a)
    assert fs.read(a) == b""
    assert fs.size(a) == 0
    assert fs.list_dir(env.base) == ["a"]
    with pytest.raises(FileExistsError):
        fs.create(a)
    with pytest.raises(FileNotFoundError):
        fs.create(env.path("missing", "x"))
    with pytest.raises(NotADirectoryError):
        fs.create(env.path("a", "x"))
    fs.mkdir(env.path("d"))
    with pytest.raises(FileExistsError):
        fs.create(env.path("d"))


def test_append_adds_at_the_end(env: Env) -> None:
    """Goal: appends concatenate, an empty append changes nothing, bad targets raise.
    Method: three appends (one empty) then read and size; append to a missing file and
    to a directory."""
    fs, a = env.fs, env.path("a")
    fs.create(a)
    fs.append(a, b"hello ")
    fs.append(a, b"")
    fs.append(a, b"world")
    assert fs.read(a) == b"hello world"
    assert fs.size(a) == 11
    with pytest.raises(FileNotFoundError):
        fs.append(env.path("missing"), b"x")
    fs.mkdir(env.path("d"))
    with pytest.raises(IsADirectoryError):
        fs.append(env.path("d"), b"x")


def test_truncate_cuts_or_extends_with_zeros_and_appends_follow(env: Env) -> None:
    """Goal: truncate sets the size (zero-filling when growing) and the next append
    lands at the new end (RealFileSystem caches descriptors: this checks it drops them).
    Method: append, truncate down, append, truncate up, append; then the errors."""
    fs, a = env.fs, env.path("a")
    fs.create(a)
    fs.append(a, b"abcdef")
    fs.truncate(a, 2)
    fs.append(a, b"XY")
    assert fs.read(a) == b"abXY"
    fs.truncate(a, 6)
    fs.append(a, b"!")
    assert fs.read(a) == b"abXY\x00\x00!"
    with pytest.raises(FileNotFoundError):
        fs.truncate(env.path("missing"), 0)
    with pytest.raises(OSError) as raised:
        fs.truncate(a, -1)
    assert raised.value.errno == errno.EINVAL
    fs.mkdir(env.path("d"))
    with pytest.raises(IsADirectoryError):
        fs.truncate(env.path("d"), 0)


def test_rename_replaces_the_target(env: Env) -> None:
    """Goal: rename moves a name over an existing one; appends after it reach the file
    now under the target name.  Method: write two files, rename one over the other,
    append through both names, rename a path to itself."""
    fs, a, b = env.fs, env.path("a"), env.path("b")
    fs.create(a)
    fs.append(a, b"new")
    fs.create(b)
    fs.append(b, b"old")
    fs.rename(a, b)
    assert not fs.exists(a)
    assert fs.read(b) == b"new"
    fs.append(b, b"+")
    assert fs.read(b) == b"new+"
    with pytest.raises(FileNotFoundError):
        fs.append(a, b"x")
    fs.rename(b, b)
    assert fs.read(b) == b"new+"
    assert fs.list_dir(env.base) == ["b"]


def test_rename_errors(env: Env) -> None:
    """Goal: rename refuses as the kernel does.  Method: a missing source, a missing
    target directory, a file over a directory, a directory over a file, a directory
    over a non-empty directory; then a directory over an empty one, which succeeds."""
    fs = env.fs
    fs.create(env.path("f"))
    fs.mkdir(env.path("d", "inside"))
    fs.mkdir(env.path("empty"))
    with pytest.raises(FileNotFoundError):
        fs.rename(env.path("missing"), env.path("f"))
    with pytest.raises(IsADirectoryError):
        fs.rename(env.path("f"), env.path("d"))
    with pytest.raises(NotADirectoryError):
        fs.rename(env.path("d"), env.path("f"))
    fs.mkdir(env.path("full", "x"))
    with pytest.raises(OSError) as raised:
        fs.rename(env.path("d"), env.path("full"))
    assert raised.value.errno == errno.ENOTEMPTY
    fs.rename(env.path("d"), env.path("empty"))
    assert fs.list_dir(env.path("empty")) == ["inside"]
    assert fs.list_dir(env.base) == ["empty", "f", "full"]


def test_unlink_removes_a_name(env: Env) -> None:
    """Goal: unlink removes a file; a new file under the same name starts empty.
    Method: write, unlink, recreate, append; then unlink a missing file and a directory."""
    fs, a = env.fs, env.path("a")
    fs.create(a)
    fs.append(a, b"gone")
    fs.unlink(a)
    assert not fs.exists(a)
    with pytest.raises(FileNotFoundError):
        fs.read(a)
    fs.create(a)
    fs.append(a, b"fresh")
    assert fs.read(a) == b"fresh"
    fs.unlink(a)
    with pytest.raises(FileNotFoundError):
        fs.unlink(a)
    fs.mkdir(env.path("d"))
    with pytest.raises(IsADirectoryError):
        fs.unlink(env.path("d"))


def test_read_size_and_list_dir_errors(env: Env) -> None:
    """Goal: the read-side calls refuse missing paths and the wrong kind of node.
    Method: call each on a missing path, on a directory or on a file as appropriate."""
    fs = env.fs
    fs.create(env.path("f"))
    fs.mkdir(env.path("d"))
    with pytest.raises(FileNotFoundError):
        fs.read(env.path("missing"))
    with pytest.raises(IsADirectoryError):
        fs.read(env.path("d"))
    with pytest.raises(FileNotFoundError):
        fs.size(env.path("missing"))
    with pytest.raises(FileNotFoundError):
        fs.list_dir(env.path("missing"))
    with pytest.raises(NotADirectoryError):
        fs.list_dir(env.path("f"))
    with pytest.raises(NotADirectoryError):
        fs.read(env.path("f", "x"))


def test_list_dir_is_sorted_and_exists_sees_both_kinds(env: Env) -> None:
    """Goal: list_dir gives sorted names of files and directories; exists is true for
    both and false for missing paths and paths through a file.  Method: make some."""
    fs = env.fs
    for name in ["c", "a", "b"]:
        fs.create(env.path(name))
    fs.mkdir(env.path("bb"))
    assert fs.list_dir(env.base) == ["a", "b", "bb", "c"]
    assert fs.list_dir(env.path("bb")) == []
    assert fs.exists(env.path("a"))
    assert fs.exists(env.path("bb"))
    assert not fs.exists(env.path("z"))
    assert not fs.exists(env.path("a", "x"))
    assert not fs.exists("")


def test_mkdir_makes_parents_and_tolerates_existing(env: Env) -> None:
    """Goal: mkdir behaves as os.makedirs(exist_ok=True).  Method: nested mkdir twice,
    then mkdir over a file and under a file."""
    fs = env.fs
    fs.mkdir(env.path("x", "y", "z"))
    fs.mkdir(env.path("x", "y", "z"))
    fs.mkdir(env.path("x"))
    assert fs.list_dir(env.path("x", "y")) == ["z"]
    fs.create(env.path("f"))
    with pytest.raises(FileExistsError):
        fs.mkdir(env.path("f"))
    with pytest.raises(NotADirectoryError):
        fs.mkdir(env.path("f", "sub"))


def test_fsync_and_fsync_dir(env: Env) -> None:
    """Goal: both syncs succeed on the right kind of node, change no content, and refuse
    missing paths; fsync_dir refuses a file; fsync accepts a directory (as on Linux).
    Method: sync everything once, then the bad cases."""
    fs, a = env.fs, env.path("a")
    fs.create(a)
    fs.append(a, b"data")
    fs.fsync(a)
    fs.fsync_dir(env.base)
    fs.fsync(env.base)
    assert fs.read(a) == b"data"
    with pytest.raises(FileNotFoundError):
        fs.fsync(env.path("missing"))
    with pytest.raises(FileNotFoundError):
        fs.fsync_dir(env.path("missing"))
    with pytest.raises(NotADirectoryError):
        fs.fsync_dir(a)


def test_lock_excludes_a_second_holder_until_unlocked(env: Env) -> None:
    """Goal: lock creates the lock file holding the pid; a second lock of it raises
    DataDirLocked naming the path and that pid; unlock and close release it.
    Method: lock, lock again, unlock, relock, close, relock; lock in a missing dir."""
    fs, lock = env.fs, env.path("LOCK")
    fs.lock(lock)
    holder = fs.read(lock).decode().strip()
    assert holder == str(os.getpid())
    with pytest.raises(DataDirLocked) as raised:
        fs.lock(lock)
    assert str(raised.value) == f"{lock}: the data directory is in use by process {holder}"
    fs.unlock(lock)
    fs.lock(lock)
    fs.close()
    fs.lock(lock)
    with pytest.raises(FileNotFoundError):
        fs.lock(env.path("missing", "LOCK"))


def test_lock_follows_the_file_not_the_name(env: Env) -> None:
    """Goal: as flock, the lock is on the file: renamed, it is still locked; a new file
    under the old name is not.  Method: lock a, rename a to b, lock b (refused), lock a."""
    fs = env.fs
    fs.lock(env.path("a"))
    fs.rename(env.path("a"), env.path("b"))
    with pytest.raises(DataDirLocked):
        fs.lock(env.path("b"))
    fs.lock(env.path("a"))
    assert fs.list_dir(env.base) == ["a", "b"]


# -- differential: random sequences on both at once ----------------------------------------

FILES = ["a", "b", "d", "d/c", "d/e"]
RENAMES = [("a", "b"), ("b", "a"), ("a", "d"), ("d", "a"), ("b", "d"), ("d/c", "d/e")]
SYNCABLE = ["", "a", "d", "d/c"]

operations = st.one_of(
    st.tuples(st.just("create"), st.sampled_from(FILES)),
    st.tuples(st.just("append"), st.sampled_from(FILES), st.binary(max_size=6)),
    st.tuples(st.just("truncate"), st.sampled_from(FILES), st.integers(0, 8)),
    st.tuples(st.just("rename"), st.sampled_from(RENAMES)),
    st.tuples(st.just("unlink"), st.sampled_from(FILES)),
    st.tuples(st.just("mkdir"), st.sampled_from(["d", "d/e", "a/x"])),
    st.tuples(st.just("fsync"), st.sampled_from(SYNCABLE)),
    st.tuples(st.just("fsync_dir"), st.sampled_from(SYNCABLE)),
    st.tuples(st.just("read"), st.sampled_from(FILES)),
    st.tuples(st.just("size"), st.sampled_from(FILES)),
    st.tuples(st.just("list_dir"), st.sampled_from(SYNCABLE)),
    st.tuples(st.just("exists"), st.sampled_from([*FILES, "a/x"])),
    st.tuples(st.just("lock"), st.sampled_from(["a", "b"])),
    st.tuples(st.just("unlock"), st.sampled_from(["a", "b"])),
)


def perform(fs: FileSystem, base: str, operation: tuple) -> object:
    """Runs one operation; returns its result, or (exception type, errno) if it raised."""
    name, *arguments = operation
    path = os.path.join(base, arguments[0]) if isinstance(arguments[0], str) else None
    try:
        if name == "rename":
            source, target = arguments[0]
            return fs.rename(os.path.join(base, source), os.path.join(base, target))
        if name == "size" and is_directory(fs, path):
            return "size of a directory: outside the contract"
        return getattr(fs, name)(path, *arguments[1:])
    except (OSError, DataDirLocked) as error:
        return type(error).__name__, getattr(error, "errno", None)


def is_directory(fs: FileSystem, path: str) -> bool:
    try:
        fs.list_dir(path)
    except OSError:
        return False
    return True


@given(st.lists(operations, max_size=25))
def test_real_and_crashfs_agree_on_random_sequences(sequence: list[tuple]) -> None:
    """Goal: no observable difference between the two implementations (short of a crash).
    Method: run each operation of a random sequence on a real temporary directory and on
    a CrashFS; the two results (value, or exception type and errno) must be equal after
    each step, and so must the whole trees at the end.  The names collide on purpose
    (a file and a directory may trade places) to reach the kernel's error paths."""
    crash = CrashFS(pid=os.getpid())
    crash.mkdir("/base")
    real = RealFileSystem()
    with tempfile.TemporaryDirectory() as base:
        try:
            for step, operation in enumerate(sequence):
                expected = perform(real, base, operation)
                actual = perform(crash, "/base", operation)
                assert actual == expected, (step, operation)
            assert tree_of(crash, "/base") == tree_of(real, base)
        finally:
            real.close()
