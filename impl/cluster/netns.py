"""Network namespaces for partition tests: one per etcd member, plus a hub.

The topology is the one measured in the cluster research (section 3)::

    member namespace PREFIX-m<i>            hub namespace PREFIX-hub
    ┌──────────────────────────┐            ┌──────────────────────────────────┐
    │ client 10.77.0.<i+1>/24 ─┼── veth ────┼─ c<i> ── bridge brc 10.77.0.254  │
    │ peer   10.78.0.<i+1>/24 ─┼── veth ────┼─ p<i> ── bridge brp (no address) │
    └──────────────────────────┘            └──────────────────────────────────┘

Clients run in the hub: they reach every member's client address over ``brc``.  The
members reach each other only over ``brp``, so ``ip -n HUB link set p<i> down`` cuts
member i off from its peers while its clients can still reach it, which is how a
minority leader is made.  Raft traffic and client traffic are on separate links for
exactly that reason: one shared link could not tell the two apart.

Nothing here touches the root namespace's network: the veth pairs are created inside
the hub with their other end placed straight into the member's namespace, so no
interface name is ever taken in the root namespace, and the 10.x addresses exist only
inside the namespaces this module makes.  Those addresses can repeat between runs (each
namespace is its own network stack); the namespace names cannot, so each run gets a
prefix made of its pid and random hex, and parallel runs do not clash.

The test process itself stays in the root namespace.  To speak HTTP to the members it
hands the call to one thread that has joined the hub's namespace with ``setns(2)``
(``call_in_hub``): a socket belongs to the namespace of the thread that creates it,
and a network namespace may be joined by one thread of a multithreaded process.  A
child process (a beaverq node, a load generator) runs in the hub with ``hub_argv``.

``destroy`` (also on leaving the ``with`` block, and on any failure while building)
deletes every namespace this run made.  Stop the processes inside them first: a
namespace whose name is deleted lives on while a process is in it.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import ctypes
import functools
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import ParamSpec, TypeVar

import attrs

#: ``ip netns`` keeps one bind mount per named namespace here (iproute2's NETNS_RUN_DIR).
NETNS_RUN_DIR = "/var/run/netns"
#: The client network: member i is .<i+1>, the hub's bridge is .254.
CLIENT_SUBNET = "10.77.0"
#: The peer network: member i is .<i+1>; the hub only bridges it.
PEER_SUBNET = "10.78.0"
HUB_CLIENT_ADDRESS = f"{CLIENT_SUBNET}.254"
#: An etcd cluster of more than 7 members is never useful (and the tests run 3).
MEMBERS_MAX = 7
#: Every ``ip`` command is bounded: a hung one must fail the run, not stall it.
IP_TIMEOUT_S = 10.0
#: ``setns`` takes the namespace type; CLONE_NEWNET from <sched.h>.
CLONE_NEWNET = 0x40000000

P = ParamSpec("P")
T = TypeVar("T")


class NetnsError(Exception):
    """An ``ip`` command failed, or the hub's thread could not join the hub."""


class NetnsUnavailable(NetnsError):
    """Network namespaces cannot be made on this machine; the message says why."""


@attrs.frozen
class NetnsLayout:
    """The names and addresses of one run's namespaces (pure: nothing is created)."""

    prefix: str
    count: int = attrs.field()

    @count.validator
    def _count_in_range(self, _attribute: attrs.Attribute[int], value: int) -> None:
        if not 1 <= value <= MEMBERS_MAX:
            raise ValueError(f"a netns layout holds 1 to {MEMBERS_MAX} members, not {value}")

    @property
    def hub(self) -> str:
        return f"{self.prefix}-hub"

    def member(self, index: int) -> str:
        """The namespace member ``index`` runs in."""
        return f"{self.prefix}-m{self.check_index(index)}"

    def client_address(self, index: int) -> str:
        return f"{CLIENT_SUBNET}.{self.check_index(index) + 1}"

    def peer_address(self, index: int) -> str:
        return f"{PEER_SUBNET}.{self.check_index(index) + 1}"

    def peer_link(self, index: int) -> str:
        """The hub's end of member ``index``'s peer veth: the one a partition cuts."""
        return f"p{self.check_index(index)}"

    def client_link(self, index: int) -> str:
        return f"c{self.check_index(index)}"

    def namespaces(self) -> tuple[str, ...]:
        """Every namespace of the run, the hub last (deleting it last keeps the bridges
        up while the members' ends go)."""
        return (*(self.member(i) for i in range(self.count)), self.hub)

    def check_index(self, index: int) -> int:
        if not 0 <= index < self.count:
            raise IndexError(f"member index {index} is not in 0..{self.count - 1}")
        return index


def new_prefix() -> str:
    """A prefix no other run uses: this process's pid (two live runs differ there) and
    random hex (a pid is reused after its process exits)."""
    return f"bq{os.getpid()}{secrets.token_hex(2)}"


def find_ip() -> str | None:
    """The ``ip`` binary (iproute2): on PATH, or in the sbin folders that a Debian
    user's PATH leaves out; None if it is nowhere."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return shutil.which("ip", path=search)


def ip_command() -> str:
    """``find_ip()``, or just "ip" (running that then fails with a clear error)."""
    return find_ip() or "ip"


def _run_ip(args: Sequence[str]) -> None:
    """Run one ``ip`` command; a failure raises with the command and ip's own words."""
    command = [ip_command(), *args]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=IP_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise NetnsError(f"{' '.join(command)}: {error}") from error
    if done.returncode != 0:
        raise NetnsError(f"{' '.join(command)} exited {done.returncode}: {done.stderr.strip()}")


@functools.cache
def netns_available() -> str | None:
    """None if this process can build the topology; otherwise the reason it cannot, for
    a test's skip message.  The answer is cached: it does not change within a run.

    Being root is not enough (a container may lack CAP_SYS_ADMIN, or the kernel the
    bridge or veth driver), so a throwaway namespace with a bridge and a veth pair is
    made and deleted."""
    if sys.platform != "linux":
        return f"network namespaces need Linux, not {sys.platform}"
    if os.geteuid() != 0:
        return f"making network namespaces needs root (this process's euid is {os.geteuid()})"
    if find_ip() is None:
        return "the 'ip' command is missing: install it with 'apt-get install iproute2'"
    probe = f"{new_prefix()}-probe"
    try:
        _run_ip(["netns", "add", probe])
    except NetnsError as error:
        return f"cannot make a network namespace: {error}"
    try:
        _run_ip(["-n", probe, "link", "add", "b0", "type", "bridge"])
        _run_ip(["-n", probe, "link", "add", "v0", "type", "veth", "peer", "name", "v1"])
    except NetnsError as error:
        return f"cannot make a bridge or a veth pair in a namespace: {error}"
    finally:
        _delete_namespace(probe)
    return None


def _namespace_exists(name: str) -> bool:
    return os.path.exists(os.path.join(NETNS_RUN_DIR, name))


def _delete_namespace(name: str) -> str | None:
    """Delete one namespace; None if it is gone (or never was), else the failure."""
    if not _namespace_exists(name):
        return None
    try:
        _run_ip(["netns", "delete", name])
    except NetnsError as error:
        return str(error)
    return None


class Netns:
    """One run's namespaces, made by ``create`` and deleted by ``destroy``."""

    def __init__(self, layout: NetnsLayout) -> None:
        # Use ``Netns.create``: this only holds the layout, nothing is made here.
        self.layout = layout
        self._hub_thread: concurrent.futures.ThreadPoolExecutor | None = None
        self._destroyed = False
        # Only what this object made is deleted: after a name clash the namespace of
        # that name is someone else's (another run, or a hand-made one).
        self._made: list[str] = []

    @classmethod
    def create(cls, count: int, *, prefix: str | None = None) -> Netns:
        """Make the hub and ``count`` member namespaces, wired as the module says.
        Raises ``NetnsUnavailable`` (with ``netns_available``'s reason) if this machine
        cannot; whatever was made before a failure is deleted before the error leaves."""
        reason = netns_available()
        if reason is not None:
            raise NetnsUnavailable(reason)
        netns = cls(NetnsLayout(prefix=prefix or new_prefix(), count=count))
        # A run that ends without reaching destroy() must not leave namespaces behind.
        # atexit runs last-in first-out, so members started after this stop before.
        atexit.register(netns.destroy)
        try:
            netns._build()
        except BaseException:
            netns.destroy()
            raise
        return netns

    def _build(self) -> None:
        layout = self.layout
        hub = layout.hub
        self._add_namespace(hub)
        _run_ip(["-n", hub, "link", "set", "lo", "up"])
        for bridge in ("brc", "brp"):
            _run_ip(["-n", hub, "link", "add", bridge, "type", "bridge"])
            _run_ip(["-n", hub, "link", "set", bridge, "up"])
        # The hub has an address on the client network only: clients live here and have
        # no business at the peer ports.  No namespace here forwards between the two
        # networks, so a cut peer link cannot be bypassed through the client network.
        _run_ip(["-n", hub, "addr", "add", f"{HUB_CLIENT_ADDRESS}/24", "dev", "brc"])
        for index in range(layout.count):
            self._build_member(index)

    def _build_member(self, index: int) -> None:
        layout = self.layout
        hub, member = layout.hub, layout.member(index)
        self._add_namespace(member)
        _run_ip(["-n", member, "link", "set", "lo", "up"])
        links = (
            (layout.client_link(index), "client", "brc", layout.client_address(index)),
            (layout.peer_link(index), "peer", "brp", layout.peer_address(index)),
        )
        for hub_end, member_end, bridge, address in links:
            # Both ends are born in namespaces of this run: no name in the root namespace.
            veth = ["type", "veth", "peer", "name", member_end, "netns", member]
            _run_ip(["-n", hub, "link", "add", hub_end, *veth])
            _run_ip(["-n", hub, "link", "set", hub_end, "master", bridge, "up"])
            _run_ip(["-n", member, "addr", "add", f"{address}/24", "dev", member_end])
            _run_ip(["-n", member, "link", "set", member_end, "up"])

    def _add_namespace(self, name: str) -> None:
        _run_ip(["netns", "add", name])
        self._made.append(name)

    def hub_argv(self, argv: Sequence[str]) -> list[str]:
        """The command line that runs ``argv`` inside the hub (where clients belong)."""
        return [ip_command(), "netns", "exec", self.layout.hub, *argv]

    def member_argv(self, index: int, argv: Sequence[str]) -> list[str]:
        """The command line that runs ``argv`` inside member ``index``'s namespace."""
        return [ip_command(), "netns", "exec", self.layout.member(index), *argv]

    def run_in_hub(
        self, argv: Sequence[str], *, timeout_s: float
    ) -> subprocess.CompletedProcess[str]:
        """Run a command to its end inside the hub, bounded by ``timeout_s``."""
        return subprocess.run(
            self.hub_argv(argv), capture_output=True, text=True, timeout=timeout_s, check=False
        )

    def call_in_hub(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``function`` on the thread that lives in the hub's namespace, so the
        sockets it opens are the hub's.  Calls run one at a time; each must bound its
        own waiting (a socket timeout), as nothing here can interrupt it."""
        if self._destroyed:
            raise NetnsError(f"the namespaces of {self.layout.prefix} are destroyed")
        if self._hub_thread is None:
            self._hub_thread = concurrent.futures.ThreadPoolExecutor(
                max_workers=1,
                thread_name_prefix=f"{self.layout.hub}-thread",
                initializer=_join_namespace,
                initargs=(os.path.join(NETNS_RUN_DIR, self.layout.hub),),
            )
        future = self._hub_thread.submit(function, *args, **kwargs)
        try:
            return future.result()
        except concurrent.futures.BrokenExecutor as error:
            raise NetnsError(f"the hub's thread could not join {self.layout.hub}") from error

    def partition_peer(self, index: int) -> None:
        """Cut member ``index``'s peer link: its peers lose it, its clients do not."""
        _run_ip(["-n", self.layout.hub, "link", "set", self.layout.peer_link(index), "down"])

    def heal_peer(self, index: int) -> None:
        """Bring member ``index``'s peer link back."""
        _run_ip(["-n", self.layout.hub, "link", "set", self.layout.peer_link(index), "up"])

    def destroy(self) -> None:
        """Delete every namespace this object made, members first, the hub last.
        Idempotent; each namespace is tried even if an earlier one fails, and the
        failures are raised together at the end."""
        if self._hub_thread is not None:
            self._hub_thread.shutdown(wait=True)
            self._hub_thread = None
        self._destroyed = True
        made = [name for name in self.layout.namespaces() if name in self._made]
        failures = [failure for failure in map(_delete_namespace, made) if failure]
        self._made = [name for name in made if _namespace_exists(name)]  # to retry
        if not self._made:
            atexit.unregister(self.destroy)
        if failures:
            raise NetnsError("could not delete every namespace: " + "; ".join(failures))

    def __enter__(self) -> Netns:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.destroy()


def _join_namespace(path: str) -> None:
    """Move the calling thread (only it) into the network namespace bound at ``path``.

    ctypes, because ``os.setns`` is new in Python 3.12 and beaverq runs on 3.10."""
    libc = ctypes.CDLL(None, use_errno=True)
    descriptor = os.open(path, os.O_RDONLY)
    try:
        if int(libc.setns(descriptor, CLONE_NEWNET)) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"setns({path}): {os.strerror(code)}")
    finally:
        os.close(descriptor)
