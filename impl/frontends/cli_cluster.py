"""The cluster on the command line: ``cluster up``, ``cluster status``, ``run --cluster``,
and every queue command with ``--cluster URLS`` (docs/cluster.md).

``--cluster`` takes etcd's client URLs, comma-separated (or ``$BEAVERQ_CLUSTER``);
``--cluster-name`` picks one of several beaverq clusters on the same etcd (default
"default", or ``$BEAVERQ_CLUSTER_NAME``).  With them, a queue command asks a node of
the cluster instead of a data directory.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import sys
import threading
from typing import Any

from .cli_args import PROG, Parser, Subparsers, fail, int_between

CLUSTER_VARIABLE = "BEAVERQ_CLUSTER"
CLUSTER_NAME_VARIABLE = "BEAVERQ_CLUSTER_NAME"
#: Where 'cluster up' keeps its members, so that 'cluster down' finds them.
DETACHED_DIR = "beaverq-cluster"
PIDS_FILE = "etcd.pids"


def cluster_urls(args: argparse.Namespace) -> list[str] | None:
    text = getattr(args, "cluster", None) or os.environ.get(CLUSTER_VARIABLE)
    if not text:
        return None
    return [url.strip() for url in text.split(",") if url.strip()]


def cluster_name(args: argparse.Namespace) -> str:
    name = getattr(args, "cluster_name", None) or os.environ.get(CLUSTER_NAME_VARIABLE)
    return name or "default"


def execute_on_cluster(args: argparse.Namespace, op: str, params: dict[str, Any]) -> Any:
    from beaverq.impl.cluster.cluster_client import ClusterCommandFailed, execute

    from .control import CommandFailed

    urls = cluster_urls(args)
    if urls is None:
        raise CommandFailed("no cluster given")
    try:
        return execute(urls, cluster_name(args), op, params)
    except ClusterCommandFailed as error:
        raise CommandFailed(str(error)) from None


# -- beaverq cluster up | status ----------------------------------------------------------


def add_cluster(subparsers: Subparsers[Parser]) -> Parser:
    parser = subparsers.add_parser(
        "cluster",
        help="start a local etcd cluster to try beaverq's cluster mode; show a cluster",
        description="'cluster up' starts etcd members on 127.0.0.1 (etcd from the system "
        "package) and runs until SIGINT/SIGTERM; 'cluster status' shows a cluster's "
        "leader, epoch, nodes, lag, log size and etcd quota use.",
    )
    actions = parser.add_subparsers(dest="action", required=True, parser_class=Parser)
    up = actions.add_parser(
        "up",
        help="start N local etcd members (until stopped, or in the background with --detach)",
        description="Start N etcd members on 127.0.0.1 and print 'export BEAVERQ_CLUSTER=...'. "
        "In the foreground until SIGINT/SIGTERM; with --detach they stay up after the "
        "command returns, until 'beaverq cluster down'.",
    )
    up.add_argument("--members", type=int_between(1, 7), default=3, metavar="N")
    up.add_argument(
        "--dir",
        metavar="DIR",
        default=DETACHED_DIR,
        help=f"where the members keep their data (default ./{DETACHED_DIR}; must not exist)",
    )
    up.add_argument("--detach", action="store_true", help="leave the members running")
    down = actions.add_parser("down", help="stop the members 'cluster up --detach' started")
    down.add_argument("--dir", metavar="DIR", default=DETACHED_DIR)
    actions.add_parser("status", help="leader, epoch, nodes, lag, log size, quota use")
    return parser


def run_cluster(args: argparse.Namespace) -> int:
    if args.action == "up":
        return _cluster_up(args)
    if args.action == "down":
        return _cluster_down(args)
    return _cluster_status(args)


def _cluster_up(args: argparse.Namespace) -> int:
    from beaverq.impl.cluster.etcd_members import EtcdMembers, EtcdMembersError

    base = os.path.abspath(args.dir)
    if args.detach:
        return _cluster_up_detached(args, base)
    stop = threading.Event()
    previous = {
        number: signal.signal(number, lambda *_: stop.set())
        for number in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        with EtcdMembers.start(args.members, base) as members:
            members.wait_ready(30.0)
            urls = ",".join(members.client_urls)
            print(f"{PROG}: {args.members} etcd members up under {base}", file=sys.stderr)
            print(f"export {CLUSTER_VARIABLE}={urls}", flush=True)
            stop.wait()
            print(f"{PROG}: stopping the etcd members", file=sys.stderr)
    except EtcdMembersError as error:
        return fail(str(error))
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    return 0


def _cluster_up_detached(args: argparse.Namespace, base: str) -> int:
    from beaverq.impl.cluster.etcd_members import EtcdMembers, EtcdMembersError

    try:
        members = EtcdMembers.start(args.members, base)
        try:
            members.wait_ready(30.0)
        except BaseException:
            members.stop()
            raise
    except EtcdMembersError as error:
        return fail(str(error))
    pids = members.detach()
    with open(os.path.join(base, PIDS_FILE), "w", encoding="utf-8") as out:
        out.write("".join(f"{pid}\n" for pid in pids))
    print(
        f"{PROG}: {args.members} etcd members up under {base}; stop them with "
        f"'{PROG} cluster down --dir {args.dir}'",
        file=sys.stderr,
    )
    print(f"export {CLUSTER_VARIABLE}={','.join(members.client_urls)}", flush=True)
    return 0


def _cluster_down(args: argparse.Namespace) -> int:
    path = os.path.join(os.path.abspath(args.dir), PIDS_FILE)
    try:
        with open(path, encoding="utf-8") as pids_file:
            pids = [int(line) for line in pids_file if line.strip()]
    except (OSError, ValueError) as error:
        return fail(f"no members started with --detach under {args.dir}: {error}")
    pids = [pid for pid in pids if _is_etcd(pid)]  # a stale file's pid may be reused
    for pid in pids:
        # Each member leads its own process group (etcd_members.py).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
    os.unlink(path)
    print(
        f"{PROG}: stopped {len(pids)} etcd members (their data stays in {args.dir})",
        file=sys.stderr,
    )
    return 0


def _is_etcd(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            program = cmdline.read().split(b"\0")[0]
    except OSError:
        return False
    return os.path.basename(program) == b"etcd" and _alive(pid)


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie: a detached member's new parent may never reap it)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _cluster_status(args: argparse.Namespace) -> int:
    from beaverq.impl.cluster.status import ClusterStatusFailed, cluster_status

    urls = cluster_urls(args)
    if urls is None:
        return fail(f"cluster status needs --cluster URLS (or ${CLUSTER_VARIABLE})")
    try:
        report = cluster_status(urls, cluster_name(args))
    except ClusterStatusFailed as error:
        return fail(str(error))
    print(json.dumps(report, indent=2, sort_keys=True))
    return 0


# -- beaverq run --cluster ------------------------------------------------------------------


def add_node_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--node", metavar="NAME", help="this node's name, unique in the cluster (default HOST.PID)"
    )
    parser.add_argument(
        "--rpc-host", default="127.0.0.1", metavar="HOST", help="RPC address (default 127.0.0.1)"
    )
    parser.add_argument(
        "--rpc-port",
        type=int_between(0, 65535),
        default=0,
        metavar="PORT",
        help="RPC port (default 0: any free port; the registration says which)",
    )
    add_fault_options(parser)


def add_fault_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--clock-skew-ms",
        type=int_between(-3_600_000, 3_600_000),
        default=0,
        metavar="MS",
        help="for fault tests: this node's wall clock reads MS milliseconds ahead "
        "(negative: behind)",
    )


def default_node_name() -> str:
    """``<host>.<pid>``: unique on a host and, unlike the pid alone, across hosts (in
    containers every main process may be pid 1).  A host name holding the worker
    separator of model/nodes.py gets it spelled another way."""
    from beaverq.model.nodes import WORKER_SEPARATOR

    host = socket.gethostname().split(".")[0] or "node"
    return f"{host}.{os.getpid()}".replace(WORKER_SEPARATOR, "_w")


def run_node(args: argparse.Namespace, registry: Any, stop: threading.Event) -> int:
    """``run --cluster``: join the cluster as a node until ``stop`` is set."""
    from beaverq.impl.cluster.node import ClusterNode, NodeOptions

    urls = cluster_urls(args)
    if urls is None:
        return fail("no cluster given")
    name = args.node or default_node_name()
    try:
        node = ClusterNode(
            urls,
            registry,
            NodeOptions(
                node=name,
                cluster=cluster_name(args),
                rpc_host=args.rpc_host,
                rpc_port=args.rpc_port,
                workers=args.workers,
                clock_skew_ms=args.clock_skew_ms,
            ),
        )
    except (OSError, ValueError) as error:
        return fail(f"cannot start node {name!r}: {error}")
    stop_metrics = None
    if args.metrics_port is not None:
        # Before the node joins: its registration says where its metrics are.
        from beaverq.impl.cluster.node_metrics import serve_node_metrics

        try:
            server = serve_node_metrics(node, args.metrics_port)
        except OSError as error:
            node.rpc.server_close()
            return fail(f"--metrics-port {args.metrics_port}: {error.strerror or error}")
        stop_metrics = server.stop
        node.advertise_metrics(server.url)
        print(f"{PROG}: metrics on {server.url}", file=sys.stderr, flush=True)
    try:
        node.start()
    except Exception as error:  # etcd, a log that does not load, a taken name: one line
        with contextlib.suppress(Exception):
            node.kill()  # whatever had started
            node.membership.leave()  # and the name, at once
        if stop_metrics is not None:
            stop_metrics()
        return fail(f"cannot join cluster {cluster_name(args)!r} at {','.join(urls)}: {error}")
    print(
        f"{PROG}: node {name} of cluster {cluster_name(args)!r} serving {node.rpc.url} with "
        f"{args.workers} workers",
        file=sys.stderr,
        flush=True,
    )
    stop.wait()
    node.stop(args.grace)
    if stop_metrics is not None:
        stop_metrics()
    print(f"{PROG}: node {name} stopped", file=sys.stderr, flush=True)
    return 0
