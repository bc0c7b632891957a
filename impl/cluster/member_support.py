"""What ``etcd_members`` needs that is not about etcd: an HTTP call with the standard
library, a bounded wait, free ports, a log's tail, and process groups.

The process-group helpers never reap a process before its group is signalled: an
unreaped (zombie) leader keeps its pid, and so its process group id, from being reused,
so a ``killpg`` can only reach the group this module started.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

#: One HTTP request to a member; a partitioned member must not hold a poll past this.
HTTP_TIMEOUT_S = 2.0
#: Between two checks of a condition: short against the ~1 s an election takes.
POLL_INTERVAL_S = 0.05
#: A reaped SIGKILLed process is a matter of milliseconds; longer means something is wrong.
REAP_TIMEOUT_S = 5.0
#: How much of a member's log an error quotes.
LOG_TAIL_BYTES = 1500

JsonObject = dict[str, Any]
T = TypeVar("T")

# No proxy: the members are local (or in a namespace), and an http_proxy in the
# environment must not route requests to them elsewhere.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class EtcdMembersError(Exception):
    """Something went wrong with the local etcd members."""


class EtcdNotInstalled(EtcdMembersError):
    """No ``etcd`` binary on PATH."""


class EtcdMemberExited(EtcdMembersError):
    """A member exited when it should be running; the message quotes its log."""


class EtcdTimeout(EtcdMembersError):
    """A wait passed its deadline; the message says what was awaited and what was seen."""


class EtcdRequestFailed(EtcdMembersError):
    """An HTTP request to a member failed (no answer, an error status, or not JSON)."""


def request_bytes(url: str, body: JsonObject | None, *, timeout_s: float) -> bytes:
    """POST ``body`` as JSON to ``url`` (GET if None) and return the raw answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    request.add_header("Content-Type", "application/json")
    try:
        with _OPENER.open(request, timeout=timeout_s) as response:
            raw: bytes = response.read()
            return raw
    except urllib.error.HTTPError as error:
        detail = error.read()[:300].decode(errors="replace")
        raise EtcdRequestFailed(f"{url}: HTTP {error.code}: {detail}") from error
    except (OSError, ValueError) as error:  # URLError, timeouts, resets are OSErrors
        raise EtcdRequestFailed(f"{url}: {error}") from error


def request_json(url: str, body: JsonObject | None, *, timeout_s: float) -> JsonObject:
    """POST ``body`` as JSON to ``url`` (GET if None) and return the JSON answer."""
    raw = request_bytes(url, body, timeout_s=timeout_s)
    try:
        answer = json.loads(raw)
    except ValueError as error:
        raise EtcdRequestFailed(f"{url}: not JSON: {raw[:200]!r}") from error
    if not isinstance(answer, dict):
        raise EtcdRequestFailed(f"{url}: JSON but not an object: {raw[:200]!r}")
    return answer


def active_peer_count(metrics: str) -> int:
    """How many peers a member counts as active, from its Prometheus ``/metrics`` text:
    the sum of its ``etcd_network_active_peers`` gauges (one per remote peer, 0 or 1)."""
    prefix = "etcd_network_active_peers"
    return sum(
        round(float(line.rsplit(" ", 1)[1]))
        for line in metrics.splitlines()
        if line.startswith((prefix + "{", prefix + " "))
    )


def wait_until(condition: Callable[[], T | None], *, timeout_s: float, what: str) -> T:
    """Poll ``condition`` until it returns something other than None, and return that;
    ``EtcdTimeout`` naming ``what`` if ``timeout_s`` passes first."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result is not None:
            return result
        if time.monotonic() >= deadline:
            raise EtcdTimeout(f"{what}: not within {timeout_s:g} s")
        time.sleep(POLL_INTERVAL_S)


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 now (all held open at once, so the
    kernel cannot hand out one twice).  Another process may take one before etcd binds
    it: ``start`` sees that member exit and retries with new ports."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for each in sockets:
            each.bind(("127.0.0.1", 0))
        return [each.getsockname()[1] for each in sockets]
    finally:
        for each in sockets:
            each.close()


def log_tail(path: Path) -> str:
    """The end of a member's log, for an error message."""
    try:
        with path.open("rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - LOG_TAIL_BYTES))
            return log.read().decode(errors="replace")
    except OSError as error:
        return f"(no log: {error})"


def accepts(url: str) -> bool:
    """Whether something accepts TCP connections at ``url``'s host and port."""
    host, _, port = url.removeprefix("http://").partition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True
    except OSError:
        return False


def has_exited(process: subprocess.Popen[bytes]) -> bool:
    """Whether the process has exited, without reaping it: while it is an unreaped
    zombie its pid, and so its process group id, cannot be reused, which is what makes
    a later ``killpg`` of that group safe."""
    if process.returncode is not None:
        return True
    try:
        flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
        return os.waitid(os.P_PID, process.pid, flags) is not None
    except ChildProcessError:
        return True  # reaped elsewhere


def wait_exited(processes: Sequence[subprocess.Popen[bytes]], *, timeout_s: float) -> None:
    """Wait until every process has exited (without reaping); ``EtcdTimeout`` if not."""
    wait_until(
        lambda: True if all(map(has_exited, processes)) else None,
        timeout_s=timeout_s,
        what=f"{len(processes)} processes exiting",
    )


def signal_group(process: subprocess.Popen[bytes], signal_number: int) -> None:
    if process.returncode is not None:
        return  # reaped: its group id may belong to someone else by now
    with contextlib.suppress(ProcessLookupError):  # the group is already gone
        os.killpg(process.pid, signal_number)


def kill_group_and_reap(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the whole process group, then reap its leader (bounded)."""
    signal_group(process, signal.SIGKILL)
    try:
        process.wait(timeout=REAP_TIMEOUT_S)
    except subprocess.TimeoutExpired as error:
        raise EtcdMembersError(
            f"pid {process.pid} outlived SIGKILL by {REAP_TIMEOUT_S} s"
        ) from error
