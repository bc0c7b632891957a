"""CrashFS: an in-memory file system that can crash, the fake disk under every crash test.

``CrashFS`` implements ``beaverq.impl.storage.fs.FileSystem`` call for call (same names, same
arguments, the same ``OSError`` subclasses the kernel gives, checked against
``RealFileSystem`` by ``tests/test_fs_contract.py``) and adds what a test needs: a
crash, failure injection and a way to enumerate every outcome.

Theory of operation
===================
Two layers, as in a kernel.  The *disk* holds what is durable.  The *page cache* in
front of it holds what the process did since.  Every inode (file or directory) keeps

- ``durable``: the pristine content the disk holds (file bytes, or name -> inode);
- ``staged``: the operations issued since, in issue order (file: writes and truncates;
  directory: links, renames, unlinks);
- ``cached``: ``durable`` with ``staged`` applied, which is what the process reads.

``fsync(file)`` folds the file's staged operations into ``durable``;
``fsync_dir(directory)`` does the same for the directory's entries.  A crash builds a
new ``CrashFS`` out of ``durable`` plus whichever staged operations a *policy* lets
survive, each choice taken from a ``Chooser`` (Hypothesis data, so failures shrink to
a short readable list of choices; or a depth-first enumerator, for exhaustive tests).

Pristine data is kept apart from faults (as TigerBeetle's ``storage.zig`` does): the
durable/staged/cached model never holds a fault.  Lost, torn, zeroed and garbled
writes, reverted entries and injected bit rot exist only in the image a crash
produces (``crash_tree``), and so only in the new ``CrashFS`` made from it.

Fault model
===========
What is volatile (lost by a crash unless a policy keeps it):

- file content changes (``append``, ``truncate``, and ``lock``'s pid write) until
  ``fsync(file)`` returns.  Content belongs to the inode, so it follows a rename;
- directory entry changes (``create``, ``mkdir``, ``rename``, ``unlink``) until
  ``fsync_dir(directory)`` returns.  ``fsync(file)`` does NOT make the file's own name
  durable (stricter than ext4, which usually does): only the directory fsync counts.

What always survives: everything durable, exactly.  A crash never alters a byte or an
entry that a successful fsync made durable (only ``corrupt`` does).

What a crash does to staged file operations, by ``CrashPolicy.writes``:

- ``Writes.NONE`` (issue policy 1): none survives.
- ``Writes.PREFIX`` (2): per file, a prefix of them in issue order.
- ``Writes.SUBSET`` (3): any subset, each kept or lost on its own.  Operations before
  the last successful fsync are durable already, so "respects the fsync barriers" holds
  by construction.  A lost write under a kept later write reads as zeros (a hole), so
  unsynced bytes that look valid can follow zeros or garbage: recovery must not read
  such a tail as damage in the middle of what was acknowledged.
- ``Writes.TORN`` (4): as SUBSET, and every kept write is cut at absolute sector
  boundaries (``sector_bytes``, 512 by default); each piece is kept, lost, zeroed or
  garbled (replaced by bytes from the chooser).  A kept truncate is kept whole.
- ``Writes.ALL``: all survive (the process was killed, the kernel was not).

What a crash does to staged directory operations, by ``CrashPolicy.entries``:

- ``Entries.NONE``: all reverted.
- ``Entries.PREFIX`` (issue policy 5): per directory, a prefix in issue order survives,
  so an operation never survives without the earlier ones it depends on.
- ``Entries.ALL``: all survive.

Consequences: a file whose ``create`` is reverted disappears with its data, fsynced or
not; a file whose ``unlink`` is reverted comes back with its own crash image; a
``rename`` is one operation, so afterwards the target names the old inode or the new
one, never a mix of their bytes.

Files and directories are decided independently: a surviving write to one file says
nothing about another file, nor about any directory.  A real journaling file system
is more orderly (ext4 commits metadata through one ordered journal), so this model is
conservative: code that is correct here relies on fsync and fsync_dir alone.

Failures, injected by a test:

- ``fail_next_fsync(path=None)``: the next fsync (of ``path``, or of anything) raises
  ``OSError(EIO)``.  For a file, the staged operations become *failed*: reads still
  return them (the pages stay cached), no later fsync makes them durable (Linux marks
  the pages clean after a writeback error, so a second fsync returns success without
  writing them: "fsyncgate"), and a crash keeps or loses each one like any staged
  operation.  A later successful fsync makes only the later operations durable.  For
  a directory, the fsync raises and nothing changes: its operations stay staged, and a
  later ``fsync_dir`` makes them durable (the journal is assumed retried).
- ``disk_full_after(n)``: appends may add ``n`` more bytes in total; the append that
  crosses the budget writes what fits (a short write, as ``os.write`` does) and raises
  ``OSError(ENOSPC)``.  Nothing else consumes space.
- ``corrupt(path, offset, data)``: bit rot in durable bytes.  It is kept in a fault
  overlay: the process keeps reading the clean cached copy, and the next crash image
  carries the rot, as a restart would find it.

Not modelled:

- damage to durable data by a crash: a torn sector write that also spoils synced bytes
  sharing its sector, misdirected writes, lying disks that acknowledge a flush without
  doing it, read errors (``corrupt`` is the stand-in for all of these);
- the difference between fsync and fdatasync, timestamps, permissions, owners, hard
  links, symlinks, rmdir, directory sizes (``size`` of a directory raises), free space
  other than ``disk_full_after``, open file descriptors (the seam is path-based);
- renames across directories (refused by an assertion: the storage code never does one);
- two processes sharing one disk: ``lock`` is bookkeeping inside one ``CrashFS``, and a
  crash releases every lock as the kernel would.  The crashed image is "the next boot":
  its ``pid`` is one more than the old one;
- concurrency: each call holds a lock, so calls from several threads are serialised.

Using it
========
``fs = CrashFS(sector_bytes=512, pid=1000)`` or ``CrashFS.from_tree({...})`` (all
durable); the ``FileSystem`` calls; ``fs.tree()`` (what the process sees);
``fs.crash_tree(policy, chooser)`` (what a crash would leave, ``fs`` untouched);
``fs.crash(policy, chooser)`` (the next boot's ``CrashFS``); ``all_crash_states(fs)``
(every distinct outcome, for exhaustive tests); ``crash_policies()`` (a strategy).
``fsync`` of a directory path acts as ``fsync_dir``, as on Linux.

After ``crash`` the old ``CrashFS`` is dead: every call raises ``UseAfterCrash`` (not an
``OSError``, so storage code cannot mistake it for a disk error and carry on).
"""

from __future__ import annotations

import enum
import errno
import functools
import os
import posixpath
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol, TypeVar

import attrs
from hypothesis import strategies as st

from beaverq.impl.storage.fs import DataDirLocked

__all__ = [
    "ALL_POLICIES",
    "NOTHING_UNSYNCED",
    "PROCESS_KILL",
    "REVERTED_ENTRIES",
    "SECTOR_BYTES",
    "TORN_WRITES",
    "WRITE_PREFIX",
    "WRITE_SUBSET",
    "Chooser",
    "CrashFS",
    "CrashPolicy",
    "Entries",
    "EnumeratingChooser",
    "HypothesisChooser",
    "Tree",
    "UseAfterCrash",
    "Writes",
    "all_crash_states",
    "crash_policies",
    "enumerate_choices",
]

SECTOR_BYTES = 512
# Bounds, so that a runaway test fails loudly instead of eating the machine.
sector_bytes_max = 1 << 20
choice_runs_max = 100_000
assert sector_bytes_max >= SECTOR_BYTES

ROOT = 0  # The inode number of "/", which always exists and is always durable.

# A whole file system as the process sees it: absolute path -> file bytes, or None for a
# directory.  "/" itself is implied and never listed.
Tree = dict[str, bytes | None]

T = TypeVar("T")


class UseAfterCrash(RuntimeError):
    """A crashed CrashFS was used: the test (or the storage code) kept a stale handle."""


# ---------------------------------------------------------------------------------------
# Choosers: where every nondeterministic decision of a crash comes from.
# ---------------------------------------------------------------------------------------


class Chooser(Protocol):
    """The source of a crash's decisions.  Option 0 is always the outcome closest to a
    clean state (for "how many survive" and "survives?": none; for a piece of a write
    that survives: kept as written), so Hypothesis shrinks towards it."""

    def choose(self, label: str, options: int) -> int:
        """A number in ``range(options)``; ``label`` says what is being decided."""
        ...

    def garble(self, label: str, size: int) -> bytes:
        """``size`` bytes of garbage for a garbled sector piece."""
        ...


class HypothesisChooser:
    """Draws every choice from Hypothesis ``data``, labelled, so a failure shrinks to a
    short list such as ``Draw 3 (/d/wal op 1 write [0, 8): survives?): 1``."""

    def __init__(self, data: st.DataObject) -> None:
        self._data = data

    def choose(self, label: str, options: int) -> int:
        assert options >= 1, label
        if options == 1:
            return 0
        choice = self._data.draw(st.integers(0, options - 1), label=label)
        assert 0 <= choice < options
        return choice

    def garble(self, label: str, size: int) -> bytes:
        assert size >= 1, label
        garbage = self._data.draw(st.binary(min_size=size, max_size=size), label=label)
        assert len(garbage) == size
        return garbage


class EnumeratingChooser:
    """Plays back ``script`` (then answers 0) and records every choice it was asked for,
    so ``enumerate_choices`` can move to the next script depth first.  Given a script
    by hand it also replays one specific crash, e.g. in a regression test.

    Garbage is a fixed pattern (0xA5 bytes): enumeration covers *that* a piece is
    garbled, not every garbage value."""

    garbage_byte = 0xA5

    def __init__(self, script: Iterable[int] = ()) -> None:
        self.script = list(script)
        self.trail: list[tuple[int, int]] = []  # (choice, options) in the order asked

    def choose(self, label: str, options: int) -> int:
        assert options >= 1, label
        position = len(self.trail)
        choice = self.script[position] if position < len(self.script) else 0
        assert 0 <= choice < options, f"script choice {choice} out of range at {label}"
        self.trail.append((choice, options))
        return choice

    def garble(self, label: str, size: int) -> bytes:
        assert size >= 1, label
        return bytes([self.garbage_byte]) * size

    def next_script(self) -> list[int] | None:
        """The next script in depth-first order, or None when every branch is done."""
        # The run must have consumed its whole script; if not, the choices a run asks
        # for depend on something other than the earlier choices (nondeterminism).
        assert len(self.trail) >= len(self.script), "the run asked for fewer choices"
        trail = list(self.trail)
        while trail and trail[-1][0] + 1 >= trail[-1][1]:
            trail.pop()
        if not trail:
            return None
        return [choice for choice, _ in trail[:-1]] + [trail[-1][0] + 1]


def enumerate_choices(
    run: Callable[[Chooser], T], *, runs_max: int = choice_runs_max
) -> Iterator[T]:
    """Calls ``run`` once per distinct sequence of choices and yields each result.

    ``run`` must be deterministic given its choices.  Fails if there are more than
    ``runs_max`` sequences: an exhaustive test must keep its scope small."""
    assert 1 <= runs_max <= choice_runs_max
    script: list[int] | None = []
    for _ in range(runs_max):
        assert script is not None
        chooser = EnumeratingChooser(script)
        yield run(chooser)
        script = chooser.next_script()
        if script is None:
            return
    raise AssertionError(f"more than {runs_max} choice sequences: make the scenario smaller")


# ---------------------------------------------------------------------------------------
# Policies: what a crash may do.
# ---------------------------------------------------------------------------------------


class Writes(enum.Enum):
    """What becomes of staged (unsynced) file operations.  Simplest first."""

    NONE = "none"
    ALL = "all"
    PREFIX = "prefix"
    SUBSET = "subset"
    TORN = "torn"


class Entries(enum.Enum):
    """What becomes of staged (unsynced) directory operations.  Simplest first."""

    NONE = "none"
    ALL = "all"
    PREFIX = "prefix"


@attrs.frozen
class CrashPolicy:
    writes: Writes
    entries: Entries

    def __str__(self) -> str:
        return f"writes={self.writes.value},entries={self.entries.value}"


# The five policies, each varying one thing, plus the process kill.
NOTHING_UNSYNCED = CrashPolicy(Writes.NONE, Entries.NONE)  # (1)
WRITE_PREFIX = CrashPolicy(Writes.PREFIX, Entries.ALL)  # (2)
WRITE_SUBSET = CrashPolicy(Writes.SUBSET, Entries.ALL)  # (3)
TORN_WRITES = CrashPolicy(Writes.TORN, Entries.ALL)  # (4)
REVERTED_ENTRIES = CrashPolicy(Writes.ALL, Entries.PREFIX)  # (5)
PROCESS_KILL = CrashPolicy(Writes.ALL, Entries.ALL)

# Every combination, simplest first (so Hypothesis shrinks towards NOTHING_UNSYNCED).
# CrashPolicy(Writes.TORN, Entries.PREFIX) allows every outcome any other one allows.
ALL_POLICIES = tuple(CrashPolicy(writes, entries) for writes in Writes for entries in Entries)
assert ALL_POLICIES[0] == NOTHING_UNSYNCED
assert len(set(ALL_POLICIES)) == len(Writes) * len(Entries)


def crash_policies() -> st.SearchStrategy[CrashPolicy]:
    """Any crash policy, shrinking towards NOTHING_UNSYNCED."""
    return st.sampled_from(ALL_POLICIES)


# ---------------------------------------------------------------------------------------
# The pristine model: operations and inodes.  No fault ever enters these.
# ---------------------------------------------------------------------------------------


@attrs.frozen
class Write:
    offset: int
    data: bytes

    def __str__(self) -> str:
        return f"write [{self.offset}, {self.offset + len(self.data)})"


@attrs.frozen
class Truncate:
    size: int

    def __str__(self) -> str:
        return f"truncate to {self.size}"


FileOp = Write | Truncate


class Status(enum.Enum):
    PENDING = "pending"  # issued; no fsync has covered it yet
    FAILED = "failed"  # an fsync covering it failed: never durable by a later fsync
    SYNCED = "synced"  # durable, but waits behind a FAILED one before it folds in


@attrs.frozen
class Staged:
    op: FileOp
    status: Status


@attrs.frozen
class Link:  # create and mkdir
    name: str
    inode: int

    def __str__(self) -> str:
        return f"link {self.name}"


@attrs.frozen
class Unlink:
    name: str

    def __str__(self) -> str:
        return f"unlink {self.name}"


@attrs.frozen
class Rename:
    source: str
    target: str

    def __str__(self) -> str:
        return f"rename {self.source} -> {self.target}"


EntryOp = Link | Unlink | Rename


@attrs.define
class FileInode:
    durable: bytearray
    staged: list[Staged]
    cached: bytearray  # durable + staged: the page cache, what reads return
    rot: list[tuple[int, bytes]]  # faults, applied only to crash images


@attrs.define
class DirInode:
    durable: dict[str, int]
    staged: list[EntryOp]
    cached: dict[str, int]  # durable + staged: what list_dir returns


Inode = FileInode | DirInode


def apply_file_op(content: bytearray, op: FileOp) -> None:
    """Applies one operation to ``content``, as the kernel would: writing past the end
    leaves a hole of zeros, and truncating up extends with zeros."""
    if isinstance(op, Write):
        if op.offset > len(content):
            content.extend(bytes(op.offset - len(content)))
        content[op.offset : op.offset + len(op.data)] = op.data
        assert len(content) >= op.offset + len(op.data)
    else:
        if op.size <= len(content):
            del content[op.size :]
        else:
            content.extend(bytes(op.size - len(content)))
        assert len(content) == op.size


def apply_entry_op(entries: dict[str, int], op: EntryOp) -> None:
    """Applies one directory operation; its preconditions held when it was issued, and
    they hold again on any prefix replay, so a failure here is a bug in CrashFS."""
    if isinstance(op, Link):
        assert op.name not in entries, op
        entries[op.name] = op.inode
    elif isinstance(op, Unlink):
        assert op.name in entries, op
        del entries[op.name]
    else:
        assert op.source in entries, op
        assert op.source != op.target, op
        entries[op.target] = entries.pop(op.source)


def _error(code: int, path: str, target: str | None = None) -> OSError:
    # OSError(errno, ...) picks the subclass (FileNotFoundError, ...) as the os module does.
    if target is None:
        return OSError(code, os.strerror(code), path)
    return OSError(code, os.strerror(code), path, None, target)


def _parts(path: str) -> list[str]:
    """The names along ``path``; relative paths are taken from "/"."""
    if not path:
        raise _error(errno.ENOENT, path)
    normalized = posixpath.normpath(posixpath.join("/", path))
    return [part for part in normalized.split("/") if part]


def _normalize(path: str) -> str:
    return "/" + "/".join(_parts(path))


F = TypeVar("F", bound=Callable[..., object])


def _operation(method: F) -> F:
    """Every public call: refuse after a crash, and run one call at a time."""

    @functools.wraps(method)
    def wrapper(self: CrashFS, *args: object, **kwargs: object) -> object:
        if self._crashed:
            raise UseAfterCrash(
                f"CrashFS.{method.__name__}: this file system crashed; "
                "use the CrashFS that crash() returned"
            )
        with self._mutex:
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------
# CrashFS
# ---------------------------------------------------------------------------------------


class CrashFS:
    """An in-memory ``FileSystem`` with a page cache over a disk (see the module doc)."""

    def __init__(self, *, sector_bytes: int = SECTOR_BYTES, pid: int = 1000) -> None:
        assert 1 <= sector_bytes <= sector_bytes_max, sector_bytes
        assert pid >= 1, pid
        self.sector_bytes = sector_bytes
        self.pid = pid
        self._inodes: dict[int, Inode] = {ROOT: DirInode({}, [], {})}
        self._inode_next = ROOT + 1
        self._locks: dict[str, int] = {}  # path locked -> its inode
        self._orphans: list[int] = []  # inodes still locked, their path reused (see lock)
        self._fsync_failures: list[str | None] = []  # armed: normalized path or any
        self._space_bytes_left: int | None = None
        self._crashed = False
        self._mutex = threading.RLock()

    @classmethod
    def from_tree(cls, tree: Tree, *, sector_bytes: int = SECTOR_BYTES, pid: int = 1000) -> CrashFS:
        """A file system whose every file and directory in ``tree`` is durable (missing
        parent directories are made too): a disk as found at boot."""
        fs = cls(sector_bytes=sector_bytes, pid=pid)
        for path in sorted(tree, key=lambda path: len(_parts(path))):
            content = tree[path]
            parent = posixpath.dirname(_normalize(path))
            fs.mkdir(parent)
            if content is None:
                fs.mkdir(path)
            else:
                fs.create(path)
                fs.append(path, content)
        fs._make_everything_durable()
        found = fs.tree()
        assert all(found[_normalize(path)] == content for path, content in tree.items())
        return fs

    # -- the FileSystem protocol ---------------------------------------------------------

    @_operation
    def create(self, path: str) -> None:
        self._create(path)

    def _create(self, path: str) -> None:
        parent, name, number = self._lookup(path)
        if number is not None:
            raise _error(errno.EEXIST, path)
        self._stage_entry(
            parent, Link(name, self._new_inode(FileInode(bytearray(), [], bytearray(), [])))
        )

    @_operation
    def append(self, path: str, data: bytes) -> None:
        inode = self._file(path)
        if not data:
            return
        fits = len(data)
        if self._space_bytes_left is not None:
            fits = min(fits, self._space_bytes_left)
            self._space_bytes_left -= fits
        if fits > 0:
            self._stage_file(inode, Write(len(inode.cached), bytes(data[:fits])))
        if fits < len(data):
            raise _error(errno.ENOSPC, path)

    @_operation
    def fsync(self, path: str) -> None:
        _, _, number = self._lookup(path)
        if number is None:
            raise _error(errno.ENOENT, path)
        inode = self._inodes[number]
        if isinstance(inode, DirInode):
            self._sync_directory(path, inode)  # fsync of a directory descriptor
        else:
            self._sync_file(path, inode)

    @_operation
    def fsync_dir(self, path: str) -> None:
        self._sync_directory(path, self._directory(path))

    @_operation
    def rename(self, source: str, target: str) -> None:
        try:
            source_parent, source_name, source_number = self._lookup(source)
            target_parent, target_name, target_number = self._lookup(target)
        except OSError as error:
            raise _error(error.errno or errno.ENOENT, source, target) from None
        if source_number is None:
            raise _error(errno.ENOENT, source, target)
        assert source_name and target_name, "CrashFS: renaming / is not modelled"
        assert source_parent == target_parent, (
            f"CrashFS models renames within one directory only: {source} -> {target}"
        )
        if source_number == target_number:
            return  # rename(2): same inode, nothing to do
        if target_number is not None:
            source_node = self._inodes[source_number]
            target_node = self._inodes[target_number]
            if isinstance(target_node, DirInode) and not isinstance(source_node, DirInode):
                raise _error(errno.EISDIR, source, target)
            if isinstance(source_node, DirInode) and not isinstance(target_node, DirInode):
                raise _error(errno.ENOTDIR, source, target)
            if isinstance(target_node, DirInode) and target_node.cached:
                raise _error(errno.ENOTEMPTY, source, target)
        self._stage_entry(source_parent, Rename(source_name, target_name))

    @_operation
    def truncate(self, path: str, size: int) -> None:
        if size < 0:
            raise _error(errno.EINVAL, path)
        self._stage_file(self._file(path), Truncate(size))

    @_operation
    def unlink(self, path: str) -> None:
        parent, name, number = self._lookup(path)
        if number is None:
            raise _error(errno.ENOENT, path)
        if isinstance(self._inodes[number], DirInode):
            raise _error(errno.EISDIR, path)
        self._stage_entry(parent, Unlink(name))

    @_operation
    def read(self, path: str) -> bytes:
        return bytes(self._file(path).cached)

    @_operation
    def list_dir(self, path: str) -> list[str]:
        return sorted(self._directory(path).cached)

    @_operation
    def exists(self, path: str) -> bool:
        try:
            return self._lookup(path)[2] is not None
        except (FileNotFoundError, NotADirectoryError):
            return False

    @_operation
    def size(self, path: str) -> int:
        _, _, number = self._lookup(path)
        if number is None:
            raise _error(errno.ENOENT, path)
        inode = self._inodes[number]
        if isinstance(inode, DirInode):
            raise IsADirectoryError(errno.EISDIR, "CrashFS does not model directory sizes", path)
        return len(inode.cached)

    @_operation
    def mkdir(self, path: str) -> None:
        # As os.makedirs(exist_ok=True): make every missing directory along the path.
        parts = _parts(path)
        directory = ROOT
        for depth, part in enumerate(parts):
            number = self._inode(directory, DirInode).cached.get(part)
            if number is None:
                number = self._new_inode(DirInode({}, [], {}))
                self._stage_entry(directory, Link(part, number))
            elif not isinstance(self._inodes[number], DirInode):
                last = depth == len(parts) - 1
                raise _error(errno.EEXIST if last else errno.ENOTDIR, path)
            directory = number
        assert isinstance(self._inodes[directory], DirInode)

    @_operation
    def lock(self, path: str) -> None:
        # As flock, the lock belongs to the inode: a renamed lock file stays locked, and a
        # new file under the old name does not.  As RealFileSystem, the file is opened with
        # O_CREAT and gets our pid (unsynced), for the other contender's message.
        number = self._lookup(path)[2]
        if number is not None and (number in self._locks.values() or number in self._orphans):
            holder = bytes(self._file(path).cached).decode("ascii", "replace").strip()
            raise DataDirLocked(
                f"{path}: the data directory is in use by process {holder or 'unknown'}"
            )
        if number is None:
            self._create(path)
        inode = self._file(path)
        self._stage_file(inode, Truncate(0))
        self._stage_file(inode, Write(0, f"{self.pid}\n".encode()))
        number = self._lookup(path)[2]
        assert number is not None
        orphan = self._locks.get(_normalize(path))
        if orphan is not None:
            # RealFileSystem keeps one descriptor per path string: locking a new file under
            # a name whose old locked file was renamed away overwrites (and leaks) the old
            # descriptor, so the old file stays locked until close().  Mirror that.
            self._orphans.append(orphan)
        self._locks[_normalize(path)] = number

    @_operation
    def unlock(self, path: str) -> None:
        self._locks.pop(_normalize(path), None)

    @_operation
    def close(self) -> None:
        self._locks.clear()
        self._orphans.clear()

    # -- failure injection ---------------------------------------------------------------

    @_operation
    def fail_next_fsync(self, path: str | None = None) -> None:
        """The next fsync or fsync_dir of ``path`` (of anything, if None) raises EIO."""
        self._fsync_failures.append(None if path is None else _normalize(path))

    @_operation
    def disk_full_after(self, size: int | None) -> None:
        """Appends may add ``size`` more bytes in all, then raise ENOSPC (None: no limit)."""
        assert size is None or size >= 0, size
        self._space_bytes_left = size

    @_operation
    def corrupt(self, path: str, offset: int, data: bytes) -> None:
        """Bit rot: the durable bytes at ``offset`` become ``data`` in every crash image.
        Reads before the crash still see the clean cached copy."""
        inode = self._file(path)
        durable_size = len(self._synced_content(inode))
        assert offset >= 0, offset
        assert offset + len(data) <= durable_size, (
            f"corrupt {path}: [{offset}, {offset + len(data)}) is not all durable "
            f"({durable_size} bytes are)"
        )
        inode.rot.append((offset, bytes(data)))

    # -- crashing ------------------------------------------------------------------------

    @_operation
    def crash_tree(self, policy: CrashPolicy, chooser: Chooser | None = None) -> Tree:
        """What a crash under ``policy`` leaves on disk, this file system untouched.
        ``chooser`` may be None for policies that choose nothing (NONE/ALL only)."""
        builder = _CrashImage(self, policy, chooser or _NO_CHOOSER)
        tree = builder.build()
        assert all(path.startswith("/") for path in tree)
        return tree

    @_operation
    def crash(self, policy: CrashPolicy, chooser: Chooser | None = None) -> CrashFS:
        """Crashes: returns the file system found at the next boot (a new process, so
        ``pid + 1``, no locks held).  This one is dead from now on."""
        tree = self.crash_tree(policy, chooser)
        self._crashed = True
        return CrashFS.from_tree(tree, sector_bytes=self.sector_bytes, pid=self.pid + 1)

    # -- inspection ----------------------------------------------------------------------

    @_operation
    def tree(self) -> Tree:
        """Every path the process sees now, with its bytes (None for a directory).
        Injected rot is not in it: the process reads the clean cached copy."""
        tree: Tree = {}
        self._cached_tree(ROOT, "/", tree)
        return tree

    @_operation
    def describe(self) -> str:
        """The pristine model, one line per file or directory, for failure messages."""
        lines: list[str] = []
        self._describe(ROOT, "/", lines)
        return "\n".join(lines)

    def __repr__(self) -> str:
        state = "crashed" if self._crashed else f"{len(self._inodes)} inodes"
        return f"<CrashFS pid={self.pid} {state}>"

    # -- internals -----------------------------------------------------------------------

    def _new_inode(self, inode: Inode) -> int:
        number = self._inode_next
        self._inode_next += 1
        assert number not in self._inodes
        self._inodes[number] = inode
        return number

    def _inode(self, number: int, kind: type[T]) -> T:
        inode = self._inodes[number]
        assert isinstance(inode, kind), (number, inode)
        return inode

    def _lookup(self, path: str) -> tuple[int, str, int | None]:
        """(parent directory inode, last name, inode or None if absent).  The root is
        its own parent with the name ""."""
        parts = _parts(path)
        if not parts:
            return ROOT, "", ROOT
        directory = ROOT
        for part in parts[:-1]:
            number = self._inode(directory, DirInode).cached.get(part)
            if number is None:
                raise _error(errno.ENOENT, path)
            if not isinstance(self._inodes[number], DirInode):
                raise _error(errno.ENOTDIR, path)
            directory = number
        return directory, parts[-1], self._inode(directory, DirInode).cached.get(parts[-1])

    def _file(self, path: str) -> FileInode:
        _, _, number = self._lookup(path)
        if number is None:
            raise _error(errno.ENOENT, path)
        inode = self._inodes[number]
        if isinstance(inode, DirInode):
            raise _error(errno.EISDIR, path)
        return inode

    def _directory(self, path: str) -> DirInode:
        _, _, number = self._lookup(path)
        if number is None:
            raise _error(errno.ENOENT, path)
        inode = self._inodes[number]
        if not isinstance(inode, DirInode):
            raise _error(errno.ENOTDIR, path)
        return inode

    def _stage_file(self, inode: FileInode, op: FileOp) -> None:
        size_before = len(inode.cached)
        inode.staged.append(Staged(op, Status.PENDING))
        apply_file_op(inode.cached, op)
        if isinstance(op, Write) and op.offset == size_before:
            assert len(inode.cached) == size_before + len(op.data)

    def _stage_entry(self, directory: int, op: EntryOp) -> None:
        inode = self._inode(directory, DirInode)
        inode.staged.append(op)
        apply_entry_op(inode.cached, op)
        if isinstance(op, Link):
            assert inode.cached[op.name] == op.inode

    def _fsync_fails(self, path: str) -> bool:
        key = _normalize(path)
        for index, armed in enumerate(self._fsync_failures):
            if armed is None or armed == key:
                del self._fsync_failures[index]
                return True
        return False

    def _sync_file(self, path: str, inode: FileInode) -> None:
        if self._fsync_fails(path):
            inode.staged = [
                Staged(s.op, Status.FAILED) if s.status is Status.PENDING else s
                for s in inode.staged
            ]
            raise _error(errno.EIO, path)
        inode.staged = [
            Staged(s.op, Status.SYNCED) if s.status is Status.PENDING else s for s in inode.staged
        ]
        # Fold the synced operations at the front into the disk; any behind a failed one
        # wait there, since whether the failed one reached the disk is decided at a crash.
        folded = 0
        while folded < len(inode.staged) and inode.staged[folded].status is Status.SYNCED:
            apply_file_op(inode.durable, inode.staged[folded].op)
            folded += 1
        del inode.staged[:folded]
        assert all(s.status is not Status.PENDING for s in inode.staged)
        if not inode.staged:
            assert inode.durable == inode.cached, path  # the paired check: disk == cache

    def _sync_directory(self, path: str, inode: DirInode) -> None:
        if self._fsync_fails(path):
            raise _error(errno.EIO, path)
        for op in inode.staged:
            apply_entry_op(inode.durable, op)
        inode.staged = []
        assert inode.durable == inode.cached, path

    def _synced_content(self, inode: FileInode) -> bytes:
        content = bytearray(inode.durable)
        for staged in inode.staged:
            if staged.status is Status.SYNCED:
                apply_file_op(content, staged.op)
        return bytes(content)

    def _make_everything_durable(self) -> None:
        for inode in self._inodes.values():
            assert not isinstance(inode, FileInode) or not inode.rot
            if isinstance(inode, FileInode):
                assert all(s.status is Status.PENDING for s in inode.staged)
                inode.durable = bytearray(inode.cached)
            else:
                inode.durable = dict(inode.cached)
            inode.staged = []

    def _cached_tree(self, number: int, path: str, tree: Tree) -> None:
        for name, child in self._inode(number, DirInode).cached.items():
            child_path = posixpath.join(path, name)
            inode = self._inodes[child]
            if isinstance(inode, FileInode):
                tree[child_path] = bytes(inode.cached)
            else:
                tree[child_path] = None
                self._cached_tree(child, child_path, tree)

    def _describe(self, number: int, path: str, lines: list[str]) -> None:
        inode = self._inodes[number]
        if isinstance(inode, FileInode):
            staged = ", ".join(f"{s.op} {s.status.value}" for s in inode.staged)
            rot = f" rot {[(o, len(d)) for o, d in inode.rot]}" if inode.rot else ""
            lines.append(f"{path}: durable {len(inode.durable)} bytes; staged [{staged}]{rot}")
            return
        staged = ", ".join(str(op) for op in inode.staged)
        lines.append(f"{path.rstrip('/')}/: durable {sorted(inode.durable)}; staged [{staged}]")
        for name, child in sorted(inode.cached.items()):
            self._describe(child, posixpath.join(path, name), lines)
        for name, child in sorted(inode.durable.items()):
            if inode.cached.get(name) != child:
                self._describe(child, posixpath.join(path, name) + " (durable only)", lines)


class _NoChooser:
    def choose(self, label: str, options: int) -> int:
        raise AssertionError(f"this crash policy needs a chooser (asked: {label})")

    def garble(self, label: str, size: int) -> bytes:
        raise AssertionError(f"this crash policy needs a chooser (asked: {label})")


_NO_CHOOSER = _NoChooser()


# ---------------------------------------------------------------------------------------
# The crash image: the one place where faults meet data.
# ---------------------------------------------------------------------------------------

PIECE_KEPT, PIECE_LOST, PIECE_ZEROED, PIECE_GARBLED = range(4)
PIECE_FATES = 4


class _CrashImage:
    """Builds the tree a crash leaves, walking from "/" in sorted order so the sequence
    of choices (and so a shrunk Hypothesis example) is the same on every run."""

    def __init__(self, fs: CrashFS, policy: CrashPolicy, chooser: Chooser) -> None:
        self.fs = fs
        self.policy = policy
        self.chooser = chooser
        self.tree: Tree = {}
        self.seen: set[int] = set()

    def build(self) -> Tree:
        self.directory(ROOT, "/")
        return self.tree

    def directory(self, number: int, path: str) -> None:
        inode = self.fs._inode(number, DirInode)
        entries = dict(inode.durable)
        for op in inode.staged[: self.surviving_entry_ops(inode, path)]:
            apply_entry_op(entries, op)
        for name in sorted(entries):
            child = entries[name]
            # Renames stay inside one directory and there are no hard links, so every
            # replayed prefix names each inode at most once.
            assert child not in self.seen, (path, name)
            self.seen.add(child)
            child_path = posixpath.join(path, name)
            node = self.fs._inodes[child]
            if isinstance(node, DirInode):
                self.tree[child_path] = None
                self.directory(child, child_path)
            else:
                self.tree[child_path] = self.file(node, child_path)

    def surviving_entry_ops(self, inode: DirInode, path: str) -> int:
        count = len(inode.staged)
        if count == 0 or self.policy.entries is Entries.NONE:
            return 0
        if self.policy.entries is Entries.ALL:
            return count
        assert self.policy.entries is Entries.PREFIX
        ops = ", ".join(str(op) for op in inode.staged)
        return self.chooser.choose(f"{path}: how many of [{ops}] survive", count + 1)

    def file(self, inode: FileInode, path: str) -> bytes:
        writes = self.policy.writes
        content = bytearray(inode.durable)
        unsynced = sum(1 for s in inode.staged if s.status is not Status.SYNCED)
        prefix = unsynced if writes is Writes.ALL else 0
        if writes is Writes.PREFIX and unsynced > 0:
            ops = ", ".join(str(s.op) for s in inode.staged if s.status is not Status.SYNCED)
            prefix = self.chooser.choose(f"{path}: how many of [{ops}] survive", unsynced + 1)
        position = 0  # among the unsynced operations
        for number, staged in enumerate(inode.staged):
            label = f"{path} op {number} {staged.op}"
            if staged.status is Status.SYNCED:
                apply_file_op(content, staged.op)
                continue
            position += 1
            if writes in (Writes.NONE, Writes.ALL, Writes.PREFIX):
                if position <= prefix:
                    apply_file_op(content, staged.op)
            elif self.chooser.choose(f"{label}: survives?", 2) == 1:
                if writes is Writes.TORN and isinstance(staged.op, Write):
                    self.torn(content, staged.op, label)
                else:
                    apply_file_op(content, staged.op)
        assert position == unsynced
        for offset, data in inode.rot:  # injected bit rot, last: it hit the disk itself
            end = min(offset + len(data), len(content))
            if offset < end:
                content[offset:end] = data[: end - offset]
        return bytes(content)

    def torn(self, content: bytearray, write: Write, label: str) -> None:
        """A write cut at absolute sector boundaries; each piece has its own fate."""
        sector = self.fs.sector_bytes
        start = write.offset
        end = write.offset + len(write.data)
        while start < end:
            piece_end = min(end, (start // sector + 1) * sector)
            assert piece_end % sector == 0 or piece_end == end
            piece = write.data[start - write.offset : piece_end - write.offset]
            piece_label = f"{label} piece [{start}, {piece_end}): kept/lost/zeroed/garbled"
            fate = self.chooser.choose(piece_label, PIECE_FATES)
            if fate == PIECE_GARBLED:
                piece = self.chooser.garble(piece_label, len(piece))
            elif fate == PIECE_ZEROED:
                piece = bytes(len(piece))
            if fate != PIECE_LOST:
                apply_file_op(content, Write(start, piece))
            start = piece_end


def all_crash_states(
    fs: CrashFS,
    policies: Iterable[CrashPolicy] = ALL_POLICIES,
    *,
    states_max: int = choice_runs_max,
) -> Iterator[CrashFS]:
    """Every distinct file system a crash of ``fs`` can leave under any of ``policies``,
    each as a fresh CrashFS (``fs`` itself is left running, so a test can go on).

    Outcomes are distinct by tree; garbled pieces use EnumeratingChooser's one pattern.
    Keep the scenario small: the count grows as 4^sectors under TORN."""
    seen: set[tuple[tuple[str, bytes | None], ...]] = set()
    for policy in policies:
        run = functools.partial(fs.crash_tree, policy)
        for tree in enumerate_choices(run, runs_max=states_max):
            key = tuple(sorted(tree.items()))
            if key in seen:
                continue
            seen.add(key)
            yield CrashFS.from_tree(tree, sector_bytes=fs.sector_bytes, pid=fs.pid + 1)
