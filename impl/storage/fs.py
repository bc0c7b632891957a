"""The file-system seam: every write, fsync, rename, truncate, list and delete the
storage code performs goes through one small interface, ``FileSystem``.

Two implementations exist: ``RealFileSystem`` here (the only storage module that
imports ``os``), and the crashable in-memory one in ``tests/sim/crashfs.py``, which
keeps unsynced data volatile and lets a test crash at any step.

The interface is path-based and deliberately narrow, so that the crash semantics
of each call are easy to state:

``create(path)``       make a new empty file; fails if it exists.  The new name is
                       durable only after ``fsync_dir`` of its directory.
``append(path, data)`` write at the end of the file.  Volatile until ``fsync(path)``.
``fsync(path)``        make the file's data (and size) durable.
``fsync_dir(path)``    make the directory's entries (creates, renames, unlinks) durable.
``rename(src, dst)``   atomically replace ``dst`` by ``src``; durable after ``fsync_dir``.
``truncate(path, n)``  cut the file to ``n`` bytes; durable after ``fsync(path)``.
``unlink(path)``       remove a name; durable after ``fsync_dir``.
``read(path)``         the whole file as the process currently sees it.
``list_dir(path)``     names in a directory, sorted.
``exists``, ``size``, ``mkdir`` (durable once its parent is fsynced), ``lock``.
"""

from __future__ import annotations

import errno
import fcntl
import os
from typing import Protocol


class StorageError(Exception):
    """A storage problem the operator must see: the message names the file and the cause."""


class DataDirLocked(StorageError):
    """Another process holds the data directory."""


class FileSystem(Protocol):
    def create(self, path: str) -> None: ...
    def append(self, path: str, data: bytes) -> None: ...
    def fsync(self, path: str) -> None: ...
    def fsync_dir(self, path: str) -> None: ...
    def rename(self, source: str, target: str) -> None: ...
    def truncate(self, path: str, size: int) -> None: ...
    def unlink(self, path: str) -> None: ...
    def read(self, path: str) -> bytes: ...
    def list_dir(self, path: str) -> list[str]: ...
    def exists(self, path: str) -> bool: ...
    def size(self, path: str) -> int: ...
    def mkdir(self, path: str) -> None: ...
    def lock(self, path: str) -> None:
        """Take an exclusive lock on ``path`` for this process, or raise ``DataDirLocked``."""
        ...

    def unlock(self, path: str) -> None: ...
    def close(self) -> None:
        """Release open files and locks (the process stays alive)."""
        ...


class RealFileSystem:
    """The operating system's file system, with appends through cached descriptors."""

    def __init__(self) -> None:
        self._appenders: dict[str, int] = {}
        self._locks: dict[str, int] = {}

    def _appender(self, path: str) -> int:
        descriptor = self._appenders.get(path)
        if descriptor is None:
            descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            self._appenders[path] = descriptor
        return descriptor

    def _forget(self, path: str) -> None:
        descriptor = self._appenders.pop(path, None)
        if descriptor is not None:
            os.close(descriptor)

    def create(self, path: str) -> None:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        os.close(descriptor)

    def append(self, path: str, data: bytes) -> None:
        descriptor = self._appender(path)
        view = memoryview(data)
        while view:
            written = os.write(descriptor, view)
            view = view[written:]

    def fsync(self, path: str) -> None:
        descriptor = self._appenders.get(path)
        if descriptor is not None:
            os.fsync(descriptor)
            return
        descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    def fsync_dir(self, path: str) -> None:
        descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    def rename(self, source: str, target: str) -> None:
        self._forget(source)
        self._forget(target)
        os.replace(source, target)

    def truncate(self, path: str, size: int) -> None:
        self._forget(path)
        os.truncate(path, size)

    def unlink(self, path: str) -> None:
        self._forget(path)
        os.unlink(path)

    def read(self, path: str) -> bytes:
        with open(path, "rb") as file:
            return file.read()

    def list_dir(self, path: str) -> list[str]:
        return sorted(os.listdir(path))

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def size(self, path: str) -> int:
        return os.stat(path).st_size

    def mkdir(self, path: str) -> None:
        # Every directory made here, parents included, is 0700 whatever the umask
        # (os.makedirs gives the parents 0777 minus the umask: under umask 000, a
        # directory any user may write, so anyone could plant a control.sock below).
        missing: list[str] = []
        current = os.path.abspath(path)
        while not os.path.exists(current) and current not in missing:  # bounded by depth
            missing.append(current)
            current = os.path.dirname(current)
        if not missing and not os.path.isdir(current):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path)
        for directory in reversed(missing):
            try:
                os.mkdir(directory, 0o700)
            except FileExistsError:
                if os.path.isdir(directory):
                    continue  # made meanwhile by someone else: the caller checks its owner
                raise
            os.chmod(directory, 0o700)  # the umask may have taken bits 0700 needs

    def lock(self, path: str) -> None:
        # flock, not a pid file alone: the kernel drops the lock when the holder dies,
        # so a crash never leaves a stale lock behind.  The pid inside is for the message.
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = _read_pid(descriptor)
            os.close(descriptor)
            if error.errno in (errno.EAGAIN, errno.EACCES):
                raise DataDirLocked(
                    f"{path}: the data directory is in use by process {holder}"
                ) from None
            raise
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"{os.getpid()}\n".encode())
        self._locks[path] = descriptor

    def unlock(self, path: str) -> None:
        descriptor = self._locks.pop(path, None)
        if descriptor is not None:
            os.close(descriptor)

    def close(self) -> None:
        for path in list(self._appenders):
            self._forget(path)
        for path in list(self._locks):
            self.unlock(path)


def _read_pid(descriptor: int) -> str:
    try:
        text = os.pread(descriptor, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return "unknown"
    return text or "unknown"
