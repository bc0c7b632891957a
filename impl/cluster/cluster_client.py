"""A producer's or operator's way into a cluster: find a node in etcd, ask it.

Any node answers any operation (node.py forwards changes to the leader), so the
client needs only the etcd URLs and the cluster's name: it reads the registry
(``nodes/``), asks the leader's node first (one hop fewer) and the others if it does
not answer.

**Unknown outcomes.**  A node that does not answer may have done the work (the
leader's txn committed, the answer was lost).  Asking again must then not enqueue a
second job: so an enqueue without an idempotency key is given one here, once, before
the first attempt, and every retry carries the same key; the queue answers a known
key with the job it already has (docs/cluster.md, "Unknown outcomes").
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from .etcd_client import EtcdClient, EtcdError
from .etcd_log import ClusterKeys
from .membership import current_leader, registered_nodes
from .node_workers import LeaderUnreachable
from .rpc import RpcClient, RpcRefused

#: How long the client keeps trying nodes (a leader change takes about 2-3 s).
RETRY_FOR_S = 15.0
AUTO_KEY_PREFIX = "auto-"


class ClusterCommandFailed(Exception):
    """The one line the user sees."""


def with_identity(op: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` with an idempotency key on every job that has none, so that a retry
    after an unknown outcome finds the job instead of enqueuing it twice."""
    params = dict(params)
    if op == "enqueue" and isinstance(params.get("job"), Mapping):
        params["job"] = _keyed(params["job"])
    elif op == "enqueue_batch" and isinstance(params.get("jobs"), list):
        params["jobs"] = [
            _keyed(job) if isinstance(job, Mapping) else job for job in params["jobs"]
        ]
    return params


def _keyed(job: Mapping[str, Any]) -> dict[str, Any]:
    job = dict(job)
    if job.get("idempotency_key") is None and job.get("job_id") is None:
        job["idempotency_key"] = AUTO_KEY_PREFIX + uuid.uuid4().hex
    return job


def node_urls(client: EtcdClient, keys: ClusterKeys) -> list[str]:
    """The registered nodes' RPC URLs, the leader's first."""
    nodes = registered_nodes(client, keys)
    leader = current_leader(client, keys)
    first = [] if leader is None or leader[0] not in nodes else [nodes[leader[0]].rpc_url]
    return first + sorted(info.rpc_url for info in nodes.values() if info.rpc_url not in first)


def execute(etcd_urls: Sequence[str], cluster: str, op: str, params: Mapping[str, Any]) -> Any:
    """Do ``op`` on the cluster; its result, or ``ClusterCommandFailed``."""
    keys = ClusterKeys(cluster)
    request = {"op": op, "params": with_identity(op, params)}
    deadline = time.monotonic() + RETRY_FOR_S
    last_problem = "no beaverq node answered"
    with EtcdClient(etcd_urls) as client:
        while True:
            try:
                urls = node_urls(client, keys)
            except EtcdError as error:
                raise ClusterCommandFailed(f"etcd at {', '.join(etcd_urls)}: {error}") from None
            if not urls:
                last_problem = (
                    f"no beaverq node is registered in cluster {cluster!r}: start one with "
                    f"'beaverq run --cluster {','.join(etcd_urls)}'"
                )
            for url in urls:
                node = RpcClient(url)
                try:
                    reply = node.call("/v1/op", request)
                except RpcRefused as error:
                    raise ClusterCommandFailed(str(error)) from None
                except LeaderUnreachable as error:
                    last_problem = str(error)
                    continue
                finally:
                    node.close()
                if reply.get("ok"):
                    return reply.get("result")
                if not reply.get("retry"):  # refused by the queue: asking again changes nothing
                    raise ClusterCommandFailed(str(reply.get("error")))
                last_problem = str(reply.get("error"))
            if time.monotonic() >= deadline:
                raise ClusterCommandFailed(f"{last_problem} (tried for {RETRY_FOR_S:g} s)")
            time.sleep(0.2)  # a leader change under way: ask again shortly
