"""beaverq.impl.cluster: beaverq on an etcd cluster.

``etcd_members`` starts and abuses local etcd members (kill, restart, stop) for tests,
the demo and ``beaverq cluster up``; ``netns`` puts them in network namespaces so a
test can cut one member's peer link.  docs/cluster.md describes both.
"""
