"""Local etcd members, started, killed, restarted and stopped on purpose.

Tests, the demo and ``beaverq cluster up`` need a real etcd cluster of 1 to 7 members on
this machine, and tests need to abuse it: SIGKILL the leader, restart a member on its
old data directory, and know who leads.  ``EtcdMembers.start`` launches them; the
object then owns the processes until ``stop`` (or the end of its ``with`` block).

How the members are run, and why:

- On 127.0.0.1 with free ports picked by the kernel, each member with its own data
  directory and log file under ``base_dir/<name>/``.  Or, with a ``Netns``, each in its
  own network namespace on fixed ports (the namespaces are private, so nothing clashes).
- ``--pre-vote=true``: measured necessary (cluster research, section 3).  Without it a
  member healed after a partition returns with a higher term and deposes the healthy
  leader, leaving the cluster leaderless for about 2 s.
- ``--auto-compaction-retention=0``: beaverq compacts at revisions tied to its own
  snapshots, so etcd must not compact on its own schedule.
- ``--quota-backend-bytes``: 2 GiB unless told, etcd's own default made explicit.
- ``--enable-v2=false``: beaverq speaks v3 only; the v2 API is a second door to close.
- Heartbeat (100 ms) and election timeout (1 s) are etcd's defaults, which the
  failover figures were measured with.
- A token unique to the run (``--initial-cluster-token``): ports are reused between
  runs, and a stray member of another run must not be able to join this cluster.
- Each member leads its own process group, so ``kill`` and ``stop`` signal the group
  and nothing it might have started is left behind.

Everything here speaks HTTP with the standard library (``urllib``, in
``member_support``), so starting members needs no dependency.  JSON from etcd's gateway
gives 64-bit integers as strings and leaves out every field that holds its default;
``MemberStatus`` reads it that way.
Every wait has a deadline; a poll sleeps only between checks of its condition.
"""

from __future__ import annotations

import atexit
import contextlib
import secrets
import shutil
import signal
import subprocess
from pathlib import Path
from types import TracebackType

import attrs

from .member_support import (
    HTTP_TIMEOUT_S,
    EtcdMemberExited,
    EtcdMembersError,
    EtcdNotInstalled,
    EtcdRequestFailed,
    EtcdTimeout,
    JsonObject,
    accepts,
    active_peer_count,
    free_ports,
    has_exited,
    kill_group_and_reap,
    log_tail,
    request_bytes,
    request_json,
    signal_group,
    wait_exited,
    wait_until,
)
from .netns import MEMBERS_MAX, Netns

__all__ = [
    "QUOTA_BACKEND_BYTES_DEFAULT",
    "EtcdMemberExited",
    "EtcdMembers",
    "EtcdMembersError",
    "EtcdNotInstalled",
    "EtcdRequestFailed",
    "EtcdTimeout",
    "MemberSpec",
    "MemberStatus",
    "find_etcd",
    "member_specs",
    "request_json",
    "wait_until",
]

#: The default quota: etcd's own, stated so a reader sees the ceiling (cluster research 6).
QUOTA_BACKEND_BYTES_DEFAULT = 2 * 1024**3
#: In a namespace every member has its own address, so the ports can be etcd's usual ones.
NETNS_CLIENT_PORT = 2379
NETNS_PEER_PORT = 2380
#: ``stop`` waits this long after SIGTERM before it SIGKILLs (etcd exits in ~0.1 s).
STOP_GRACE_S = 5.0
#: ``stop`` asks who leads with this timeout: a healthy local member answers in ms.
STOP_STATUS_TIMEOUT_S = 0.5
#: ``stop`` waits this long for the leader to notice its followers are gone (~50 ms).
STOP_ALONE_TIMEOUT_S = 2.0
#: How long ``start`` waits for the members to listen before it calls the start failed.
LISTEN_TIMEOUT_S = 10.0
#: A free port can be taken by another process before etcd binds it; ``start`` retries.
START_ATTEMPTS_MAX = 3


@attrs.frozen
class MemberSpec:
    """Where one member lives: its name, URLs, directories and (if any) namespace."""

    name: str
    client_url: str
    peer_url: str
    data_dir: Path
    log_path: Path
    namespace: str | None = None


@attrs.frozen
class MemberStatus:
    """One member's answer to ``/v3/maintenance/status``."""

    member_id: str
    #: The member it believes leads; "" when it knows no leader.
    leader_id: str
    raft_term: int
    raft_index: int
    db_size_bytes: int

    @property
    def is_leader(self) -> bool:
        return self.leader_id != "" and self.leader_id == self.member_id

    @classmethod
    def from_json(cls, body: JsonObject) -> MemberStatus:
        """Read the gateway's JSON: int64s come as strings, and zeros are left out."""
        header = body.get("header") or {}
        return cls(
            member_id=_id_or_empty(header.get("member_id")),
            leader_id=_id_or_empty(body.get("leader")),
            raft_term=int(body.get("raftTerm", 0)),
            raft_index=int(body.get("raftIndex", 0)),
            db_size_bytes=int(body.get("dbSize", 0)),
        )


def _id_or_empty(value: object) -> str:
    """A member id from the gateway; "" for absent or 0, which both mean "none"."""
    text = "" if value is None else str(value)
    return "" if text in ("", "0") else text


def find_etcd() -> str:
    """The path of the ``etcd`` binary, or ``EtcdNotInstalled`` saying how to get it."""
    path = shutil.which("etcd")
    if path is None:
        raise EtcdNotInstalled(
            "etcd is not on PATH. Install it with 'apt-get install etcd-server' "
            "(Debian/Ubuntu; it provides etcd 3.4 and does not start a service), "
            "or put an etcd 3.4 binary on PATH."
        )
    return path


def member_specs(count: int, base_dir: Path, netns: Netns | None) -> tuple[MemberSpec, ...]:
    """Names, URLs and directories for ``count`` members (no process, no directory yet)."""
    if netns is None:
        ports = free_ports(2 * count)
        client_urls = [f"http://127.0.0.1:{port}" for port in ports[:count]]
        peer_urls = [f"http://127.0.0.1:{port}" for port in ports[count:]]
    else:
        layout = netns.layout
        client_urls = [
            f"http://{layout.client_address(i)}:{NETNS_CLIENT_PORT}" for i in range(count)
        ]
        peer_urls = [f"http://{layout.peer_address(i)}:{NETNS_PEER_PORT}" for i in range(count)]
    return tuple(
        MemberSpec(
            name=f"member-{i}",
            client_url=client_urls[i],
            peer_url=peer_urls[i],
            data_dir=base_dir / f"member-{i}" / "data",
            log_path=base_dir / f"member-{i}" / "etcd.log",
            namespace=None if netns is None else netns.layout.member(i),
        )
        for i in range(count)
    )


class EtcdMembers:
    """The running members of one local cluster; made by ``start``.

    Members are addressed by index, 0 to count-1, in the order of ``specs``."""

    def __init__(
        self,
        specs: tuple[MemberSpec, ...],
        *,
        etcd_path: str,
        token: str,
        quota_backend_bytes: int,
        netns: Netns | None,
    ) -> None:
        # Use ``EtcdMembers.start``: this only records the plan, no process is started.
        self.specs = specs
        self.netns = netns
        self.quota_backend_bytes = quota_backend_bytes
        self._etcd_path = etcd_path
        self._token = token
        self._processes: list[subprocess.Popen[bytes] | None] = [None] * len(specs)

    @classmethod
    def start(
        cls,
        count: int,
        base_dir: Path | str,
        *,
        netns: Netns | None = None,
        quota_backend_bytes: int = QUOTA_BACKEND_BYTES_DEFAULT,
    ) -> EtcdMembers:
        """Start a new cluster of ``count`` members under ``base_dir`` (made if missing;
        it must not hold members already).  Returns once every member listens (or, in
        namespaces, once every member is launched); ``wait_ready`` waits for a leader.

        On any failure every member started is stopped before the error leaves."""
        if not 1 <= count <= MEMBERS_MAX:
            raise ValueError(f"a local cluster has 1 to {MEMBERS_MAX} members, not {count}")
        if netns is not None and netns.layout.count < count:
            raise ValueError(f"{count} members need {count} namespaces; netns has fewer")
        if quota_backend_bytes <= 0:  # etcd reads 0 as "its default": say it instead
            raise ValueError(f"quota_backend_bytes must be positive, not {quota_backend_bytes}")
        etcd_path = find_etcd()
        # Absolute, so the command lines name the directories whatever etcd's cwd.
        base = Path(base_dir).absolute()
        for attempt in range(1, START_ATTEMPTS_MAX + 1):
            specs = member_specs(count, base, netns)
            for spec in specs:
                if spec.data_dir.exists():
                    raise EtcdMembersError(
                        f"{spec.data_dir} exists: start() makes a new cluster, "
                        "so give it a fresh base_dir"
                    )
            members = cls(
                specs,
                etcd_path=etcd_path,
                token=f"beaverq-{secrets.token_hex(8)}",
                quota_backend_bytes=quota_backend_bytes,
                netns=netns,
            )
            try:
                for index in range(count):
                    members._launch(index, "new")
                members._wait_listening()
                return members
            except EtcdMemberExited as error:
                members.stop()
                # Only a port taken between free_ports() and etcd's bind is worth a retry.
                if attempt == START_ATTEMPTS_MAX or "address already in use" not in str(error):
                    raise
                for spec in specs:
                    shutil.rmtree(spec.data_dir.parent, ignore_errors=True)
            except BaseException:
                members.stop()
                raise
        raise EtcdMembersError("unreachable: the last attempt returns or raises")

    @property
    def client_urls(self) -> tuple[str, ...]:
        return tuple(spec.client_url for spec in self.specs)

    def command_line(self, index: int, cluster_state: str) -> list[str]:
        """How member ``index`` is run; ``cluster_state`` is "new" or "existing"."""
        if cluster_state not in ("new", "existing"):
            raise ValueError(f"cluster_state is 'new' or 'existing', not {cluster_state!r}")
        spec = self.specs[self._check_index(index)]
        initial_cluster = ",".join(f"{each.name}={each.peer_url}" for each in self.specs)
        listen_client_urls = spec.client_url
        if self.netns is not None:
            # Also on the namespace's loopback, for an etcdctl run with member_argv.
            listen_client_urls += f",http://127.0.0.1:{NETNS_CLIENT_PORT}"
        argv = [
            self._etcd_path,
            f"--name={spec.name}",
            f"--data-dir={spec.data_dir}",
            f"--listen-client-urls={listen_client_urls}",
            f"--advertise-client-urls={spec.client_url}",
            f"--listen-peer-urls={spec.peer_url}",
            f"--initial-advertise-peer-urls={spec.peer_url}",
            f"--initial-cluster={initial_cluster}",
            f"--initial-cluster-token={self._token}",
            f"--initial-cluster-state={cluster_state}",
            "--pre-vote=true",
            "--auto-compaction-retention=0",
            f"--quota-backend-bytes={self.quota_backend_bytes}",
            "--enable-v2=false",
            "--logger=zap",
            "--log-outputs=stderr",
        ]
        return argv if self.netns is None else self.netns.member_argv(index, argv)

    def _launch(self, index: int, cluster_state: str) -> None:
        spec = self.specs[index]
        spec.data_dir.parent.mkdir(parents=True, exist_ok=True)
        argv = self.command_line(index, cluster_state)
        # Appended, so a restarted member's log follows its earlier life.
        with spec.log_path.open("ab") as log:
            log.write(f"--- beaverq starts: {' '.join(argv)}\n".encode())
            log.flush()
            self._processes[index] = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, signalled as one
            )
        # A test that fails without reaching stop() must not leave members running.
        atexit.register(self.stop)

    def _wait_listening(self) -> None:
        """Wait until every member accepts connections on both its ports, or raise
        ``EtcdMemberExited`` as soon as one exits (a port was taken, a flag refused).
        In namespaces the ports are private, so only the processes are checked."""
        if self.netns is not None:
            for index in range(len(self.specs)):
                self._check_alive(index)
            return

        def all_listening() -> bool | None:
            for index, spec in enumerate(self.specs):
                self._check_alive(index)
                if not (accepts(spec.client_url) and accepts(spec.peer_url)):
                    return None
            return True

        wait_until(all_listening, timeout_s=LISTEN_TIMEOUT_S, what="members listening")

    def is_running(self, index: int) -> bool:
        process = self._processes[self._check_index(index)]
        return process is not None and not has_exited(process)

    def running_indices(self) -> tuple[int, ...]:
        return tuple(i for i in range(len(self.specs)) if self.is_running(i))

    def _check_index(self, index: int) -> int:
        if not 0 <= index < len(self.specs):
            raise IndexError(f"member index {index} is not in 0..{len(self.specs) - 1}")
        return index

    def _check_alive(self, index: int) -> None:
        """Raise ``EtcdMemberExited`` if member ``index`` was started and has exited."""
        process = self._processes[index]
        if process is not None and has_exited(process):
            spec = self.specs[index]
            raise EtcdMemberExited(
                f"etcd {spec.name} (pid {process.pid}) exited; "
                f"the end of its log {spec.log_path}:\n{log_tail(spec.log_path)}"
            )

    def request(
        self, index: int, path: str, body: JsonObject | None, *, timeout_s: float = HTTP_TIMEOUT_S
    ) -> JsonObject:
        """One HTTP request to member ``index``'s gateway (POST ``body``, or GET if None),
        made from the hub's namespace when the members run in namespaces."""
        url = self.specs[self._check_index(index)].client_url + path
        if self.netns is None:
            return request_json(url, body, timeout_s=timeout_s)
        return self.netns.call_in_hub(request_json, url, body, timeout_s=timeout_s)

    def metrics(self, index: int, *, timeout_s: float = HTTP_TIMEOUT_S) -> str:
        """Member ``index``'s Prometheus metrics, as text."""
        url = self.specs[self._check_index(index)].client_url + "/metrics"
        if self.netns is None:
            raw = request_bytes(url, None, timeout_s=timeout_s)
        else:
            raw = self.netns.call_in_hub(request_bytes, url, None, timeout_s=timeout_s)
        return raw.decode(errors="replace")

    def status(self, index: int, *, timeout_s: float = HTTP_TIMEOUT_S) -> MemberStatus | None:
        """Member ``index``'s status, or None if it is not running or does not answer."""
        if not self.is_running(index):
            return None
        try:
            answer = self.request(index, "/v3/maintenance/status", {}, timeout_s=timeout_s)
        except EtcdRequestFailed:
            return None
        return MemberStatus.from_json(answer)

    def statuses(self, *, timeout_s: float = HTTP_TIMEOUT_S) -> tuple[MemberStatus | None, ...]:
        return tuple(self.status(i, timeout_s=timeout_s) for i in range(len(self.specs)))

    def leader_index(self, *, timeout_s: float = HTTP_TIMEOUT_S) -> int | None:
        """The index of the member that leads, or None if none answers as leader.

        A member counts if its own status names itself leader.  Just after a partition
        the cut-off old leader still claims to lead, until CheckQuorum makes it step
        down (~2 s, cluster research 3); the majority's new leader has a higher term,
        so of several claims the highest term wins."""
        claims = [
            (status.raft_term, index)
            for index, status in enumerate(self.statuses(timeout_s=timeout_s))
            if status is not None and status.is_leader
        ]
        return max(claims)[1] if claims else None

    def wait_for_leader(self, timeout_s: float, *, other_than: int | None = None) -> int:
        """Wait until a member leads (one other than ``other_than``, if given); its index."""

        def leader() -> int | None:
            found = self.leader_index()
            return None if found is None or found == other_than else found

        what = "a leader" if other_than is None else f"a leader other than member {other_than}"
        return wait_until(leader, timeout_s=timeout_s, what=what)

    def wait_ready(self, timeout_s: float) -> None:
        """Wait until every running member answers ``/health`` with true (it knows a
        leader and can serve).  Raises ``EtcdMemberExited`` at once if one dies."""
        running = self.running_indices()
        if not running:
            raise EtcdMembersError("no member is running, so none can become ready")
        unready: list[str] = []

        def all_healthy() -> bool | None:
            unready.clear()
            for index in running:
                self._check_alive(index)
                try:
                    healthy = self.request(index, "/health", None).get("health") == "true"
                except EtcdRequestFailed:
                    healthy = False
                if not healthy:
                    unready.append(self.specs[index].name)
            return True if not unready else None

        try:
            wait_until(all_healthy, timeout_s=timeout_s, what="members healthy")
        except EtcdTimeout as error:
            raise EtcdTimeout(f"{error}; still unhealthy: {', '.join(unready)}") from None

    def kill(self, index: int) -> None:
        """SIGKILL member ``index`` (and its process group), and reap it."""
        process = self._processes[self._check_index(index)]
        if process is None:
            raise EtcdMembersError(f"{self.specs[index].name} is not running")
        kill_group_and_reap(process)
        self._processes[index] = None

    def restart(self, index: int) -> None:
        """Start member ``index`` again on its data directory with the same flags; it
        rejoins from its own WAL (``--initial-cluster-state existing``)."""
        if self.is_running(self._check_index(index)):
            raise EtcdMembersError(f"{self.specs[index].name} is running; kill it first")
        process = self._processes[index]
        if process is not None:  # it died on its own: reap it before starting anew
            kill_group_and_reap(process)
        self._launch(index, "existing")

    def stop(self) -> None:
        """Stop every member: SIGTERM, then SIGKILL whatever is left after
        ``STOP_GRACE_S``.  Idempotent, and safe after a partial start.

        The followers go first and the leader last.  A leader that gets SIGTERM hands
        its leadership to a connected follower before it exits; were the followers
        stopping at the same moment it would wait for a transfer that cannot finish,
        until the SIGKILL (measured: the full grace).  Alone, it finds no follower to
        hand to and exits at once, but only once it has noticed that its followers are
        gone, which it does on its next failed send (measured: within ~50 ms, and one
        stop in eight raced it); so it is stopped once its metrics count no active peer.
        If no leader answers, all are stopped together."""
        leader = self._leader_for_stop()
        _terminate([p for i, p in enumerate(self._processes) if p is not None and i != leader])
        last = None if leader is None else self._processes[leader]
        if leader is not None and last is not None:
            self._wait_alone(leader)
            _terminate([last])
        # Whatever has not stopped in its grace is SIGKILLed here; the rest are reaped.
        for index, leftover in enumerate(self._processes):
            if leftover is not None:
                kill_group_and_reap(leftover)
                self._processes[index] = None
        atexit.unregister(self.stop)

    def detach(self) -> tuple[int, ...]:
        """Leave the members running after this process exits (``cluster up --detach``);
        their process ids, for whoever stops them later (``cluster down``)."""
        atexit.unregister(self.stop)
        pids = tuple(process.pid for process in self._processes if process is not None)
        self._processes = [None] * len(self.specs)
        return pids

    def _leader_for_stop(self) -> int | None:
        """The leader, if it can be learnt quickly; stopping must not fail for want of
        it (at interpreter exit the namespaces may already be gone, for instance)."""
        try:
            return self.leader_index(timeout_s=STOP_STATUS_TIMEOUT_S)
        except Exception:  # any failure only means the members are stopped together
            return None

    def _wait_alone(self, index: int) -> None:
        """Wait (briefly, and without failing) until member ``index`` counts no peer
        as active."""

        def alone() -> bool | None:
            try:
                return True if active_peer_count(self.metrics(index)) == 0 else None
            except Exception:  # no answer: stop it anyway
                return True

        with contextlib.suppress(EtcdTimeout):
            wait_until(alone, timeout_s=STOP_ALONE_TIMEOUT_S, what="the leader alone")

    def __enter__(self) -> EtcdMembers:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _terminate(processes: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each process's group and wait up to ``STOP_GRACE_S`` for all to exit
    (without reaping them: the caller SIGKILLs what is left, then reaps)."""
    for process in processes:
        if not has_exited(process):
            signal_group(process, signal.SIGTERM)
    with contextlib.suppress(EtcdTimeout):
        wait_exited(processes, timeout_s=STOP_GRACE_S)
