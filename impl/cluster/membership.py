"""A node's membership: one etcd lease that stands for "this node is alive".

The node registers itself under ``nodes/<node>`` (discovery: where its RPC answers,
how many workers it has) and campaigns in the election, both on this one lease, kept
alive by a thread.  If the process dies or stalls past the lease's TTL, etcd deletes
both keys at once: the node leaves the registry (so the leader abandons its leases,
``AbandonNode``) and, if it led, the election key whose create revision was its
epoch (so its next append is refused: etcd_log.py).  One lease, so that "alive" has
one meaning.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time

import attrs
import cattrs

from .etcd_client import (
    Compare,
    EtcdClient,
    EtcdError,
    EtcdUnavailable,
    LeaderKey,
    Put,
    prefix_end,
)
from .etcd_log import ClusterKeys

#: The lease's time to live.  A dead leader is replaced after at most this plus an
#: election; etcd's floor for a lease TTL with its default timing is about 1.5 s.
LEASE_TTL_S = 2
#: Keep-alives per TTL: three, so one lost or late keep-alive does not end the lease.
KEEPALIVES_PER_TTL = 3

#: One round of a campaign (see ``Membership.campaign``).
CAMPAIGN_ROUND_S = 1.0

_converter = cattrs.Converter()


class NodeNameTaken(EtcdError):
    """Another live node has this node's name."""


@attrs.frozen
class NodeInfo:
    """What a node publishes about itself (its registration's value)."""

    node: str
    rpc_url: str
    workers: int
    metrics_url: str | None = None

    def encode(self) -> bytes:
        return json.dumps(_converter.unstructure(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> NodeInfo:
        return _converter.structure(json.loads(data), cls)


class Membership:
    def __init__(self, client: EtcdClient, keys: ClusterKeys, info: NodeInfo) -> None:
        self._client = client
        self._keys = keys
        self.info = info
        self.lease = 0
        self._stop = threading.Event()
        self.lost = threading.Event()  # set when the lease is gone: the node must stop leading
        self._thread = threading.Thread(target=self._keep_alive, name="beaverq-lease", daemon=True)

    def join(self) -> None:
        """Register, only if no live node has this name.  Two nodes of one name would
        share worker ids: the second's start would abandon the first's running leases
        (``AbandonNode``, which counts their attempts).  A name still held by a process
        that just died is free once its lease expires, so it is asked for again until
        then."""
        self.lease = self._client.lease_grant(LEASE_TTL_S)
        key = self._keys.node_key(self.info.node)
        deadline = time.monotonic() + LEASE_TTL_S + 1.0
        while True:
            registered = self._client.txn(
                [Compare(key, "VERSION", 0)], [Put(key, self.info.encode(), lease=self.lease)]
            )
            if registered.succeeded:
                break
            if time.monotonic() >= deadline:
                with contextlib.suppress(EtcdError):
                    self._client.lease_revoke(self.lease)
                raise NodeNameTaken(
                    f"a live node named {self.info.node!r} is registered in this cluster "
                    "already: give this one another --node"
                )
            time.sleep(0.1)  # a previous process's lease, running out
        self._thread.start()

    def leave(self) -> None:
        """Revoke the lease: the registration and any election key go at once."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self.lease:
            # If etcd does not hear it, the lease expires by itself within LEASE_TTL_S.
            with contextlib.suppress(EtcdError):
                self._client.lease_revoke(self.lease)

    def abandon(self) -> None:
        """Stop keeping the lease alive without revoking it: as if the node died."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def campaign(self, timeout_s: float) -> LeaderKey:
        """Block until this node leads (EtcdError on timeout, a lost lease, or ``leave``).

        Asked in rounds of ``CAMPAIGN_ROUND_S``: a campaign waiting in etcd does not end
        when its lease is revoked (etcd's election waits only for the keys before its
        own; measured: it "won" once the old leader's lease expired), so a node that
        leaves must not be stuck in one.  Asking again with the same lease resumes the
        same election key, so a round costs no place in the line.

        Never without a lease: etcd's election API answers a campaign on lease 0 by
        making a session lease of its own, which etcd itself keeps alive (measured:
        the campaign wins, under a lease no node holds), so that leadership would
        outlive the node and block every other campaign."""
        if not self.lease:
            raise EtcdError(f"node {self.info.node} has no lease (not joined): no campaign")
        deadline = time.monotonic() + timeout_s
        while True:
            if self._stop.is_set():
                raise EtcdError("this node is leaving: it campaigns no more")
            try:
                return self._client.campaign(
                    self._keys.election,
                    self.lease,
                    self.info.node.encode(),
                    timeout_s=CAMPAIGN_ROUND_S,
                )
            except EtcdUnavailable as unanswered:
                if not unanswered.maybe_applied or time.monotonic() >= deadline:
                    raise  # no member reached, or out of time

    def _keep_alive(self) -> None:
        period = LEASE_TTL_S / KEEPALIVES_PER_TTL
        while not self._stop.wait(period):
            try:
                if self._client.lease_keepalive(self.lease) <= 0:
                    self.lost.set()  # expired: etcd deleted our keys
                    return
            except EtcdError:
                continue  # etcd busy or a member down: the next attempt may reach one


def registered_nodes(client: EtcdClient, keys: ClusterKeys) -> dict[str, NodeInfo]:
    """Every node whose lease is alive, by name."""
    result = client.range(keys.nodes_prefix, prefix_end(keys.nodes_prefix))
    return {info.node: info for info in (NodeInfo.decode(kv.value) for kv in result.kvs)}


def current_leader(client: EtcdClient, keys: ClusterKeys) -> tuple[str, int] | None:
    """(node, epoch) of the elected leader, None if there is none."""
    kv = client.leader(keys.election)
    return None if kv is None else (kv.value.decode(), kv.create_revision)
