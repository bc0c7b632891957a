"""The attempt keeper: the process that makes "nothing a shell job starts outlives its
attempt" true on Linux, and the two process-lifetime tools the worker processes share.

A ``shell`` attempt does not start its program directly.  It starts a keeper::

    python -I -S attempt_keeper.py STATUS_FD PROGRAM ARG...

and the keeper starts the program.  The keeper

* makes itself a *child subreaper* (``prctl(PR_SET_CHILD_SUBREAPER)``): a process the
  program starts and orphans, even one that left the program's process group and
  session with ``setsid``, is re-parented to the keeper instead of to init;
* ends the attempt when the program exits, or when its standard input reaches
  end-of-file, which is how it learns that the attempt is over early (the handler
  closed the pipe at a deadline or a shutdown) or that the process that started it is
  gone (a runner or a worker process killed, even by SIGKILL: the kernel closes the
  pipe's other end);
* then kills the program's process group and every process still re-parented to it,
  until it has no child left, and writes how the program ended to ``STATUS_FD``.

So nothing the program started survives the attempt: not at a normal exit, not at a
deadline, not when the runner is SIGKILLed and restarted (the restarted runner's
attempt 2 never runs beside attempt 1's processes, which were killed when its pipe
closed).  It runs with ``-I -S`` and imports only the standard library: it starts
fast, and nothing in the runner's working directory or environment is imported.

Limits (docs/security.md, "Process lifetime"): what escapes is a process the kernel
does not re-parent to the keeper (one started in another PID namespace, or by a
daemon on the program's behalf: ``systemd-run``, ``at``, a container engine), and
everything, if the keeper itself is SIGKILLed by hand.  Off Linux there is no
subreaper: the keeper kills the program's process group only, as before.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading

#: prctl options (linux/prctl.h).
_PR_SET_CHILD_SUBREAPER = 36
#: A sweep kills at least one process per round; this bounds a pathological tree.
SWEEP_ROUNDS_MAX = 100_000
#: How often a keeper reaps the orphans that ended while its program runs on.
REAP_S = 1.0


def become_subreaper() -> bool:
    """Make orphaned descendants of this process its children (Linux); False where
    the system has no such thing."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def children() -> list[int]:
    """The pids whose parent is this process, from /proc (empty off Linux)."""
    me = os.getpid()
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as file:
                text = file.read()
        except OSError:
            continue  # gone meanwhile
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        fields = text[text.rfind(b")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == me:
            found.append(int(entry))
    return found


def kill_children() -> None:
    """SIGKILL and reap every child, again and again, until none is left: a child's
    own children come to us (as subreaper) when it dies, and are taken next round."""
    for _round in range(SWEEP_ROUNDS_MAX):
        pids = children()
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)  # SIGKILLed: returns once the kernel has ended it


def reap_exited() -> None:
    """Reap every child that has exited, without waiting for any: a subreaper's
    orphans come to it as children, and each that ends stays a zombie (holding its
    pid) until reaped.  A long-lived worker process calls this between tasks."""
    for _round in range(SWEEP_ROUNDS_MAX):
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:  # no child at all
            return
        if pid == 0:  # children, none of them exited
            return


def _reap_orphans(program: int) -> None:
    """Reap the children that have ended, the program excepted (its waiter thread
    reaps it, for its status): as subreaper, the keeper gets every orphan of the
    program's, and each that ends would stay a zombie (a pid) until the attempt ends."""
    for _round in range(SWEEP_ROUNDS_MAX):
        try:
            ended = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if ended is None or ended.si_pid == program:
            return  # none ended; or the program did, and the attempt is ending anyway
        with contextlib.suppress(ChildProcessError):
            os.waitpid(ended.si_pid, os.WNOHANG)


def _keep(status_fd: int, argv: list[str]) -> None:
    reaping = become_subreaper()  # orphans come to us (Linux only): reap those that end
    with os.fdopen(status_fd, "w") as status:
        try:
            program = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, start_new_session=True, close_fds=True
            )
        except OSError as error:
            status.write(json.dumps({"error": str(error)}))
            return
        ended = threading.Event()

        def wait_program() -> None:
            program.wait()
            ended.set()

        def wait_parent() -> None:
            # End-of-file (or any byte): the attempt is over, or its parent is gone.
            with contextlib.suppress(OSError):
                os.read(0, 1)
            ended.set()

        waiter = threading.Thread(target=wait_program, daemon=True)
        waiter.start()
        threading.Thread(target=wait_parent, daemon=True).start()
        while not ended.wait(REAP_S):
            if reaping:
                _reap_orphans(program.pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(program.pid, signal.SIGKILL)  # still names the group: see handlers.py
        waiter.join()  # the program was SIGKILLed if it had not exited
        kill_children()
        status.write(json.dumps({"status": program.returncode}))


if __name__ == "__main__":
    _keep(int(sys.argv[1]), sys.argv[2:])
