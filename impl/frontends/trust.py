"""Who is on the other end: the checks a client makes before it trusts a data directory.

A command sends its request (a job's arguments, secrets included) to whatever listens
on ``control.sock`` and prints the job id it gets back.  So before it sends a byte, a
client checks three things (docs/security.md, "Ownership"):

1. the data directory belongs to the user running the command, and no one else may
   write in it (else another user could put a socket of their own there);
2. the socket file belongs to the user;
3. the process that answers runs as the user (``SO_PEERCRED``, Linux).

The third is the one that cannot be raced: the kernel reports who listens, whatever
happened to the names in between.  The first two make the refusal name the real
problem (a directory someone else owns or may write) rather than a stranger's pid.
``beaverq run`` and a command without a runner make the first check too: they would
otherwise write jobs into a directory another user can read.

Off Linux ``SO_PEERCRED`` does not exist (macOS and the BSDs have ``getpeereid``,
which Python does not offer), so the third check is skipped there and the first two
stand alone.
"""

from __future__ import annotations

import os
import socket
import stat
import struct

_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid


class Untrusted(Exception):
    """A data directory, socket or peer that is not the user's; the message says which."""


def _who(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def check_data_dir(path: str) -> None:
    """Refuse a data directory another user owns or may write in; a missing one passes
    (beaverq creates it, mode 0700)."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(status.st_mode):
        return  # not a directory: the command's own check says so
    me = os.geteuid()
    if status.st_uid != me:
        raise Untrusted(
            f"{path}: the data directory belongs to {_who(status.st_uid)}, not to you "
            f"({_who(me)}); refusing to use it (its owner could read every job and answer "
            "for the runner)"
        )
    loose = status.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if loose:
        who = (
            "group and others"
            if loose == stat.S_IWGRP | stat.S_IWOTH
            else ("its group" if loose == stat.S_IWGRP else "others")
        )
        raise Untrusted(
            f"{path}: the data directory is writable by {who} (mode "
            f"{stat.S_IMODE(status.st_mode):04o}), so another user could replace its "
            f"control.sock; refusing to use it (chmod go-w {path})"
        )


def check_socket_file(path: str) -> bool:
    """Refuse a socket file another user owns; False when there is none."""
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        return False
    me = os.geteuid()
    if status.st_uid != me:
        raise Untrusted(
            f"{path}: the socket belongs to {_who(status.st_uid)}, not to you "
            f"({_who(me)}); nothing was sent"
        )
    return True


def check_peer(connection: socket.socket, path: str) -> None:
    """Refuse a peer that runs as another user (Linux; a no-op where the kernel does
    not say, see the module's doc)."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return
    raw = connection.getsockopt(socket.SOL_SOCKET, option, _CREDENTIALS.size)
    pid, uid, _gid = _CREDENTIALS.unpack(raw)
    me = os.geteuid()
    if uid != me:
        raise Untrusted(
            f"{path}: the process answering (pid {pid}) runs as {_who(uid)}, not as you "
            f"({_who(me)}); nothing was sent"
        )
