"""Local etcd members (beaverq.impl.cluster.etcd_members) and partitions in network
namespaces (beaverq.impl.cluster.netns), against the real ``etcd`` 3.4.

Goal: the infrastructure that cluster tests stand on does what it says: it starts a
3-member cluster, finds the leader, survives the leader's SIGKILL with a new leader and
no lost write, brings the killed member back on its own data, cuts and heals one
member's peer link, and never leaves an etcd process or a namespace behind.

Method: each test starts a fresh cluster under ``tmp_path`` and waits on conditions
with deadlines (never on fixed sleeps).  Writes and reads go through etcd's JSON
gateway with urllib (``EtcdMembers.request``).  "No process left" is read from /proc:
no command line names the test's base directory.  Without ``etcd`` on PATH the
cluster tests skip with the install hint; without namespaces (not root, no ``ip``, a
container without CAP_SYS_ADMIN) the partition test skips with the reason.

The file takes 7 to 13 s on 2 shared cores, most of it in the two cluster tests.
"""

from __future__ import annotations

import base64
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import attrs
import pytest

from beaverq.impl.cluster import etcd_members
from beaverq.impl.cluster.etcd_members import (
    QUOTA_BACKEND_BYTES_DEFAULT,
    EtcdMemberExited,
    EtcdMembers,
    EtcdNotInstalled,
    MemberSpec,
    MemberStatus,
    member_specs,
    wait_until,
)
from beaverq.impl.cluster.member_support import active_peer_count
from beaverq.impl.cluster.netns import Netns, NetnsError, NetnsLayout, netns_available, new_prefix

#: A fresh cluster is ready in ~2 s (cluster research 2); shared CI cores are slower.
READY_TIMEOUT_S = 30.0
#: An election takes ~1-2 s after the leader is lost; this bounds it generously.
ELECTION_TIMEOUT_S = 20.0

needs_etcd = pytest.mark.skipif(
    shutil.which("etcd") is None,
    reason="etcd is not on PATH: install it with 'apt-get install etcd-server'",
)


def _encode(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _put(members: EtcdMembers, index: int, key: str, value: str) -> None:
    members.request(index, "/v3/kv/put", {"key": _encode(key), "value": _encode(value)})


def _get(members: EtcdMembers, index: int, key: str, *, serializable: bool = False) -> str | None:
    """The value of ``key`` read at member ``index``: linearizable (through the leader)
    unless ``serializable``, which answers from that member's own copy."""
    body = {"key": _encode(key), "serializable": serializable}
    kvs = members.request(index, "/v3/kv/range", body).get("kvs", [])
    return base64.b64decode(kvs[0]["value"]).decode() if kvs else None


def _etcd_processes_under(base: Path) -> list[str]:
    """Command lines of live processes that name ``base`` (our members' data dirs)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command_line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue  # it exited while we looked
        if str(base) in command_line:
            found.append(f"{entry.name}: {command_line}")
    return found


def _one_agreed_leader(members: EtcdMembers) -> int | None:
    """The leader's index if every member answers and all name the same leader."""
    statuses = members.statuses()
    if any(status is None or status.leader_id == "" for status in statuses):
        return None
    leader_ids = {status.leader_id for status in statuses if status is not None}
    return members.leader_index() if len(leader_ids) == 1 else None


def test_member_status_reads_the_gateway_json() -> None:
    """The gateway sends int64s as strings and drops fields at their default: a member
    that knows no leader has no ``leader`` field, and is no leader."""
    body = {
        "header": {"member_id": "12588947372985004537", "raft_term": "2"},
        "leader": "12588947372985004537",
        "raftTerm": "2",
        "raftIndex": "14",
        "dbSize": "20480",
    }
    status = MemberStatus.from_json(body)
    assert status.is_leader
    assert (status.raft_term, status.raft_index, status.db_size_bytes) == (2, 14, 20480)
    follower = MemberStatus.from_json({"header": {"member_id": "7"}, "leader": "9"})
    assert not follower.is_leader
    lost = MemberStatus.from_json({"header": {"member_id": "7"}})
    assert (lost.leader_id, lost.is_leader, lost.raft_term) == ("", False, 0)


def test_active_peers_are_counted_from_the_metrics() -> None:
    """``stop`` waits for the leader to count no active peer; the count is the sum of
    the per-peer gauges, and other metrics with the same stem do not count."""
    metrics = "\n".join(
        [
            "# TYPE etcd_network_active_peers gauge",
            'etcd_network_active_peers{Local="a",Remote="b"} 1',
            'etcd_network_active_peers{Local="a",Remote="c"} 0',
            'etcd_network_active_peers_total{Local="a"} 7',
        ]
    )
    assert active_peer_count(metrics) == 1
    assert active_peer_count("") == 0


def test_the_flags_are_the_measured_ones(tmp_path: Path) -> None:
    """Pre-vote on, no auto-compaction, v2 off, the quota explicit; a restart says
    ``existing``; in a namespace the member runs under ``ip netns exec``."""
    specs = member_specs(3, tmp_path, None)
    members = EtcdMembers(
        specs,
        etcd_path="etcd",
        token="t",
        quota_backend_bytes=QUOTA_BACKEND_BYTES_DEFAULT,
        netns=None,
    )
    argv = members.command_line(1, "new")
    for flag in (
        "--pre-vote=true",
        "--auto-compaction-retention=0",
        f"--quota-backend-bytes={2 * 1024**3}",
        "--enable-v2=false",
        "--initial-cluster-state=new",
        f"--data-dir={tmp_path / 'member-1' / 'data'}",
    ):
        assert flag in argv
    assert "--initial-cluster-state=existing" in members.command_line(1, "existing")
    assert len({spec.client_url for spec in specs} | {spec.peer_url for spec in specs}) == 6
    netns = Netns(NetnsLayout(prefix="bqtest", count=3))  # only named, never created
    in_namespace = EtcdMembers(
        member_specs(3, tmp_path, netns),
        etcd_path="etcd",
        token="t",
        quota_backend_bytes=1,
        netns=netns,
    )
    argv = in_namespace.command_line(2, "new")
    assert argv[1:4] == ["netns", "exec", "bqtest-m2"]
    assert "--listen-peer-urls=http://10.78.0.3:2380" in argv


def test_the_layout_names_are_private_and_bounded() -> None:
    layout = NetnsLayout(prefix="bq1x", count=3)
    assert layout.namespaces() == ("bq1x-m0", "bq1x-m1", "bq1x-m2", "bq1x-hub")
    assert (layout.client_address(0), layout.peer_address(2)) == ("10.77.0.1", "10.78.0.3")
    with pytest.raises(IndexError, match=r"member index 3 is not in 0\.\.2"):
        layout.member(3)
    with pytest.raises(ValueError, match="1 to 7 members"):
        NetnsLayout(prefix="bq1x", count=8)


def test_no_etcd_is_a_named_error_saying_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EtcdNotInstalled, match="apt-get install etcd-server"):
        EtcdMembers.start(1, tmp_path / "etcd")
    assert not (tmp_path / "etcd").exists()


def _namespaces() -> str:
    return subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=True
    ).stdout


def test_a_failed_build_deletes_only_what_it_made() -> None:
    """A name clash halfway through ``Netns.create`` (member 1's namespace exists
    already) is an error, and what the build had made (the hub, member 0) is deleted,
    while the namespace it did not make is left alone."""
    reason = netns_available()
    if reason is not None:
        pytest.skip(reason)
    prefix = new_prefix()
    subprocess.run(["ip", "netns", "add", f"{prefix}-m1"], check=True)
    try:
        with pytest.raises(NetnsError, match=f"{prefix}-m1"):
            Netns.create(3, prefix=prefix)
        listed = _namespaces()
        assert f"{prefix}-hub" not in listed
        assert f"{prefix}-m0" not in listed
        assert f"{prefix}-m1" in listed
    finally:
        subprocess.run(["ip", "netns", "delete", f"{prefix}-m1"], check=True)


@needs_etcd
def test_a_member_that_cannot_start_is_an_error_quoting_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A member whose port is taken exits; ``start`` tries again with the same (forced)
    ports up to its limit, then raises ``EtcdMemberExited`` quoting etcd's log, and the
    members that did start are stopped."""
    base = tmp_path / "etcd"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        specs = member_specs(2, base, None)
        port = taken.getsockname()[1]
        clashing = (specs[0], attrs.evolve(specs[1], peer_url=f"http://127.0.0.1:{port}"))
        planned: list[int] = []

        def plan(*_: object) -> tuple[MemberSpec, ...]:
            planned.append(1)
            return clashing

        monkeypatch.setattr(etcd_members, "member_specs", plan)
        with pytest.raises(EtcdMemberExited, match="address already in use"):
            EtcdMembers.start(2, base)
    assert len(planned) == etcd_members.START_ATTEMPTS_MAX
    assert _etcd_processes_under(base) == []


@needs_etcd
def test_a_killed_leader_is_replaced_and_rejoins(tmp_path: Path) -> None:
    """Kill the leader of 3: the other two elect a new one, a write acknowledged before
    the kill is still there, and the killed member, restarted on its own data, catches
    up on a write made while it was down.  ``stop`` leaves no etcd process."""
    base = tmp_path / "etcd"
    with EtcdMembers.start(3, base) as members:
        members.wait_ready(READY_TIMEOUT_S)
        leader = members.wait_for_leader(ELECTION_TIMEOUT_S)
        _put(members, leader, "before-kill", "1")

        members.kill(leader)
        killed_at = time.monotonic()
        new_leader = members.wait_for_leader(ELECTION_TIMEOUT_S, other_than=leader)
        print(f"\nnew leader {time.monotonic() - killed_at:.2f} s after the SIGKILL")
        assert not members.is_running(leader)
        assert _get(members, new_leader, "before-kill") == "1"
        _put(members, new_leader, "while-down", "2")

        members.restart(leader)
        members.wait_ready(READY_TIMEOUT_S)
        # Its own copy (a serializable read) shows what it missed while it was down.
        wait_until(
            lambda: _get(members, leader, "while-down", serializable=True),
            timeout_s=READY_TIMEOUT_S,
            what="the restarted member catching up",
        )
        wait_until(
            lambda: _one_agreed_leader(members), timeout_s=ELECTION_TIMEOUT_S, what="one leader"
        )
        assert _get(members, leader, "before-kill") == "1"
    members.stop()  # a second stop is harmless
    assert _etcd_processes_under(base) == []


@needs_etcd
def test_a_partitioned_leader_is_replaced_and_rejoins_after_the_heal(tmp_path: Path) -> None:
    """Cut the leader's peer link (its clients still reach it): the majority elects a
    new leader and takes writes, the cut-off leader steps down (CheckQuorum), and after
    the heal the cluster has one leader that all three name, and the old leader holds
    the writes it missed.  Nothing is left behind: no process, no namespace."""
    reason = netns_available()
    if reason is not None:
        pytest.skip(reason)
    base = tmp_path / "etcd"
    with Netns.create(3) as netns, EtcdMembers.start(3, base, netns=netns) as members:
        members.wait_ready(READY_TIMEOUT_S)
        leader = members.wait_for_leader(ELECTION_TIMEOUT_S)
        _put(members, leader, "before-partition", "1")

        netns.partition_peer(leader)
        cut_at = time.monotonic()
        new_leader = members.wait_for_leader(ELECTION_TIMEOUT_S, other_than=leader)
        print(f"\nnew leader {time.monotonic() - cut_at:.2f} s after the cut")
        _put(members, new_leader, "during-partition", "2")
        wait_until(
            lambda: True if getattr(members.status(leader), "leader_id", None) == "" else None,
            timeout_s=ELECTION_TIMEOUT_S,
            what="the cut-off leader stepping down",
        )

        netns.heal_peer(leader)
        members.wait_ready(READY_TIMEOUT_S)
        wait_until(
            lambda: _one_agreed_leader(members), timeout_s=ELECTION_TIMEOUT_S, what="one leader"
        )
        assert _get(members, leader, "during-partition") == "2"
        # A client process in the hub (as a beaverq node would run) reaches every member.
        probe = "; ".join(
            [
                "import sys, urllib.request",
                "opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))",
                "print([opener.open(u + '/health', timeout=5).read() for u in sys.argv[1:]])",
            ]
        )
        answer = netns.run_in_hub([sys.executable, "-c", probe, *members.client_urls], timeout_s=30)
        assert (answer.returncode, answer.stdout.count('"health":"true"')) == (0, 3), answer
        names = netns.layout.namespaces()
    assert _etcd_processes_under(base) == []
    assert [name for name in names if name in _namespaces()] == []
