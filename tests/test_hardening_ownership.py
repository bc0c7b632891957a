"""Who is on the other end of ``control.sock`` (issue 11, "Who is on the other end").

The attack: another local user listens on the socket a command will use, receives
the request (a job's arguments, secrets included) and answers with a job id that
exists nowhere.  The defences (impl/frontends/trust.py, docs/security.md) are checked
here through real ``beaverq`` processes, against a real other user made by the test
(``useradd``; the tests skip with the reason when not root or without ``useradd``):

* a data directory another user owns is refused, by a command and by ``beaverq run``;
* a data directory others may write in (made 0777 under umask 000) is refused;
* a socket file another user owns is refused;
* a socket whose listener runs as another user (``SO_PEERCRED``) is refused, though
  the directory and the socket file are the user's;
* and every directory beaverq creates is 0700, parents included, under umask 000.

In each refusal the stranger's listener records what it received: nothing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

WAIT_S = 30.0
CLI = [sys.executable, "-m", "beaverq.impl.frontends.cli"]
STRANGER = "bq-trust-stranger"

#: The stranger's program: listen on a socket (a path to bind, or an inherited
#: descriptor), record what one client sends, answer with a job id that exists nowhere.
LISTENER = """\
import os, socket, sys
mode, where, record = sys.argv[1:4]
if mode == "bind":
    os.makedirs(os.path.dirname(where), exist_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(where)
else:
    server = socket.socket(fileno=int(where))
server.listen(4)
print("ready", flush=True)
server.settimeout(60)
connection, _ = server.accept()
connection.settimeout(10)
received = b""
try:
    received = connection.recv(65536)
except OSError:
    pass
with open(record, "wb") as file:
    file.write(received)
connection.sendall(b'{"ok": true, "result": "j-planted"}\\n')
"""


@attrs.frozen
class Stranger:
    uid: int
    gid: int
    python: str
    base: Path  # a directory both users can reach (0755, the test's own)
    loot: Path  # where the stranger's listener records what it received

    def listen(self, mode: str, where: str, *, pass_fds: tuple[int, ...] = ()) -> Listener:
        process = subprocess.Popen(
            [self.python, "-I", "-c", LISTENER, mode, where, str(self.loot / "received")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            user=self.uid,
            group=self.gid,
            extra_groups=[],
            pass_fds=pass_fds,
            cwd="/",
        )
        assert process.stdout is not None
        ready = process.stdout.readline()  # the listener prints it once listening
        assert ready == b"ready\n", process.communicate(timeout=WAIT_S)
        return Listener(process, self.loot / "received")


@attrs.frozen
class Listener:
    process: subprocess.Popen[bytes]
    record: Path

    def received(self) -> bytes | None:
        """What a client sent (None: no client came), once the listener is gone."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate(timeout=WAIT_S)
        return self.record.read_bytes() if self.record.exists() else None


def _runs_as(uid: int, gid: int, python: str) -> bool:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(
            [python, "-I", "-c", "pass"],
            user=uid,
            group=gid,
            extra_groups=[],
            cwd="/",
            capture_output=True,
            timeout=WAIT_S,
        )
        return done.returncode == 0
    return False


@pytest.fixture
def stranger() -> Iterator[Stranger]:
    if os.geteuid() != 0:
        pytest.skip("needs root: the test makes another user and runs a process as it")
    if shutil.which("useradd") is None:
        pytest.skip("needs useradd to make another user")
    import pwd

    try:
        entry = pwd.getpwnam(STRANGER)
    except KeyError:
        made = subprocess.run(
            ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", STRANGER],
            capture_output=True,
            text=True,
            timeout=WAIT_S,
        )
        if made.returncode not in (0, 9):  # 9: made meanwhile by another test run
            pytest.skip(f"useradd {STRANGER} failed: {made.stderr.strip()}")
        entry = pwd.getpwnam(STRANGER)
    candidates = [os.path.realpath(sys.executable), "/usr/bin/python3"]
    python = next((c for c in candidates if _runs_as(entry.pw_uid, entry.pw_gid, c)), None)
    if python is None:
        pytest.skip(f"no Python interpreter the user {STRANGER} may run: {candidates}")
    base = Path(tempfile.mkdtemp(prefix="beaverq-trust-"))
    try:
        base.chmod(0o755)
        loot = base / "loot"
        loot.mkdir()
        os.chown(loot, entry.pw_uid, entry.pw_gid)
        yield Stranger(entry.pw_uid, entry.pw_gid, python, base, loot)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def beaverq(data_dir: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "--data-dir", str(data_dir), *argv],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        cwd=data_dir.parent,
    )


def assert_refused(done: subprocess.CompletedProcess[str], *words: str) -> None:
    """Exit 1 with one line on stderr that names the problem, and no job id printed."""
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stdout == "", done.stdout
    assert done.stderr.count("\n") == 1, done.stderr
    for word in words:
        assert word in done.stderr, done.stderr


def test_a_data_directory_another_user_owns_is_refused(stranger: Stranger) -> None:
    """Goal: the attack of the issue fails: a stranger who got to make the data
    directory first (its parent is world-writable, like /tmp) and listens on its
    control.sock learns nothing, and no job id is printed.  Method: the stranger's
    listener in ``shared/data``; ``enqueue`` with a secret, ``status`` and ``run``
    through the real CLI; the listener's record of what it received."""
    shared = stranger.base / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    data_dir = shared / "data"
    listener = stranger.listen("bind", str(data_dir / "control.sock"))

    assert_refused(
        beaverq(data_dir, "enqueue", "noop", '{"secret": "hunter2"}'), "belongs to", STRANGER
    )
    assert_refused(beaverq(data_dir, "status"), "belongs to", STRANGER)
    assert_refused(beaverq(data_dir, "run", "--until-idle"), "belongs to", STRANGER)
    assert listener.received() is None


def test_a_data_directory_others_may_write_is_refused(stranger: Stranger) -> None:
    """Goal: a directory of the user's own that others may write in (made 0777 under
    umask 000 by an older beaverq, or by hand) is refused, since anyone may replace
    its socket.  Method: the user's data directory chmod 0777, a stranger's socket
    planted in it; an enqueue through the real CLI; the listener's record."""
    data_dir = stranger.base / "data"
    data_dir.mkdir()
    data_dir.chmod(0o777)
    listener = stranger.listen("bind", str(data_dir / "control.sock"))

    assert_refused(
        beaverq(data_dir, "enqueue", "noop", '{"secret": "hunter2"}'), "writable by", "0777"
    )
    assert listener.received() is None


def test_a_socket_file_another_user_owns_is_refused(stranger: Stranger) -> None:
    """Goal: a control.sock that belongs to another user is refused before connecting.
    Method: in the user's 0700 directory, a socket the test listens on (so the peer
    is the user) whose file is chowned to the stranger; an enqueue through the CLI;
    the test's listener records whether anyone connected."""
    data_dir = stranger.base / "data"
    data_dir.mkdir(mode=0o700)
    path = data_dir / "control.sock"
    connected = threading.Event()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen(1)
        os.lchown(path, stranger.uid, stranger.gid)
        server.settimeout(0.0)

        assert_refused(beaverq(data_dir, "enqueue", "noop", "{}"), "socket belongs to", STRANGER)
        with contextlib.suppress(BlockingIOError):
            server.accept()[0].close()
            connected.set()
    assert not connected.is_set()


def test_a_listener_running_as_another_user_is_refused(stranger: Stranger) -> None:
    """Goal: the peer check (``SO_PEERCRED``) holds where the names look right: the
    directory and the socket file are the user's, but the process listening is the
    stranger's.  Method: the test binds control.sock in its own 0700 directory and
    hands the descriptor to the stranger's process, which listens on it; an enqueue
    with a secret through the CLI; the listener's record: it saw a connection and
    received no byte."""
    if not hasattr(socket, "SO_PEERCRED"):
        pytest.skip("SO_PEERCRED is Linux's: elsewhere the peer check is a no-op")
    data_dir = stranger.base / "data"
    data_dir.mkdir(mode=0o700)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as bound:
        bound.bind(str(data_dir / "control.sock"))
        listener = stranger.listen("fd", str(bound.fileno()), pass_fds=(bound.fileno(),))

    assert_refused(
        beaverq(data_dir, "enqueue", "noop", '{"secret": "hunter2"}'),
        "the process answering",
        STRANGER,
    )
    assert listener.received() == b""


def test_directories_beaverq_makes_are_0700_whatever_the_umask(tmp_path: Path) -> None:
    """Goal: no directory beaverq creates is writable by others, parents included,
    even under umask 000 (os.makedirs would have made the parents 0777).  Method: an
    enqueue into ``a/b/data`` (none exist) by the real CLI run with umask 000; the
    mode of each directory made, and of each file in the data directory."""
    data_dir = tmp_path / "a" / "b" / "data"
    done = subprocess.run(
        [*CLI, "--data-dir", str(data_dir), "enqueue", "noop", "{}"],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        umask=0,
    )
    assert done.returncode == 0, done.stderr
    for directory in (tmp_path / "a", tmp_path / "a" / "b", data_dir):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    for file in data_dir.iterdir():
        mode = stat.S_IMODE(file.stat().st_mode)
        assert mode & 0o077 == 0, (file, oct(mode))


def test_a_data_directory_another_user_makes_after_the_check_is_refused(
    stranger: Stranger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Goal: the race in a shared parent is lost by the stranger: a data directory that
    did not exist when it was checked, and that another user made before beaverq made
    it, is refused once open, before a job is written to it or run from it.

    Method: in process (the window is microseconds wide in a real one): the storage's
    ``mkdir`` first makes the directory as the stranger would (theirs, mode 0777), as
    if they had won the race; then an enqueue without a runner must fail naming them
    with no job stored, and a runner must refuse to start."""
    from beaverq.impl.frontends.api import RunFailed, Runner
    from beaverq.impl.frontends.control import CommandFailed, execute
    from beaverq.impl.runtime.handlers import HandlerRegistry
    from beaverq.impl.storage.fs import RealFileSystem

    made_by_us = RealFileSystem.mkdir

    def stranger_first(self: RealFileSystem, path: str) -> None:
        if not os.path.exists(path):
            os.mkdir(path)
            os.chmod(path, 0o777)
            os.chown(path, stranger.uid, stranger.gid)
        made_by_us(self, path)

    monkeypatch.setattr(RealFileSystem, "mkdir", stranger_first)
    shared = stranger.base / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    data_dir = shared / "data"
    with pytest.raises(CommandFailed, match="belongs to"):
        execute(str(data_dir), "enqueue", {"job": {"handler": "noop", "args": {"secret": 1}}})
    assert not any(b"secret" in path.read_bytes() for path in data_dir.iterdir() if path.is_file())
    shutil.rmtree(data_dir)
    with pytest.raises(RunFailed, match="belongs to"):
        Runner(str(data_dir), HandlerRegistry()).start()
