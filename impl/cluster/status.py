"""``beaverq cluster status``: one look at a cluster, from etcd and from its nodes.

Leader and epoch come from the election; the nodes from the registry; each node's
position from its own ``status`` over RPC (lag = the log's head minus it); the log's
size and etcd's database size and alarms from etcd.  Reads only: safe at any time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .etcd_client import EtcdClient, EtcdError, prefix_end
from .etcd_log import ClusterKeys, EtcdLog
from .membership import NodeInfo, current_leader, registered_nodes
from .node_workers import LeaderUnreachable
from .rpc import RpcClient

#: etcd's backend quota unless its members were started with another
#: (etcd_members.QUOTA_BACKEND_BYTES_DEFAULT); the alarm threshold is half of it.
QUOTA_BYTES = 2 * 1024**3
QUOTA_ALARM_FRACTION = 0.5


class ClusterStatusFailed(Exception):
    pass


def cluster_status(etcd_urls: Sequence[str], cluster: str) -> dict[str, Any]:
    keys = ClusterKeys(cluster)
    try:
        with EtcdClient(etcd_urls, timeout_s=3.0) as client:
            head, _revision = EtcdLog(client, keys).head()
            leader = current_leader(client, keys)
            nodes = registered_nodes(client, keys)
            entries = client.count(keys.log_prefix, prefix_end(keys.log_prefix))
            members = [_member(client, url) for url in etcd_urls]
            alarms = list(client.alarms())
    except EtcdError as error:
        raise ClusterStatusFailed(f"etcd at {', '.join(etcd_urls)}: {error}") from None
    db_size = max((m["db_size"] for m in members if m.get("db_size") is not None), default=0)
    return {
        "cluster": cluster,
        "leader": None if leader is None else {"node": leader[0], "epoch": leader[1]},
        "log": {"head_lsn": head, "entries": entries},
        "nodes": [_node(info, head) for info in nodes.values()],
        "etcd": {
            "members": members,
            "alarms": alarms,
            "db_size": db_size,
            "quota_bytes": QUOTA_BYTES,
            "quota_used": round(db_size / QUOTA_BYTES, 4),
            "quota_warning": db_size >= QUOTA_ALARM_FRACTION * QUOTA_BYTES,
        },
    }


def _member(client: EtcdClient, url: str) -> dict[str, Any]:
    try:
        status = client.status(url)
    except Exception as error:  # one member down is a fact to show, not a failure
        return {"url": url, "up": False, "error": str(error)}
    return {
        "url": url,
        "up": True,
        "is_leader": status.member_id == status.leader_id,
        "raft_term": status.raft_term,
        "db_size": status.db_size,
        "db_size_in_use": status.db_size_in_use,
    }


def _node(info: NodeInfo, head: int) -> dict[str, Any]:
    registered = {
        "node": info.node,
        "rpc_url": info.rpc_url,
        "metrics_url": info.metrics_url,
        "workers": info.workers,
    }
    node = RpcClient(info.rpc_url, timeout_s=3.0)
    try:
        reply = node.call("/v1/op", {"op": "status", "params": {}})
        last_lsn = int(reply["result"]["last_lsn"])
    except (LeaderUnreachable, KeyError, TypeError, ValueError):
        return registered | {"answering": False}
    finally:
        node.close()
    return registered | {"answering": True, "last_lsn": last_lsn, "lag": max(0, head - last_lsn)}
