"""Nodes and their workers: which worker ids belong to which node, in one place.

In a cluster several nodes share one log, and each lease records only the worker
that holds it (``LeaseGranted.worker_id``).  When a node dies, the leases of its
workers, and no others, must end (``AbandonNode``).  So the node of a worker must
be readable from the worker id alone, and the rule that builds a worker id and the
rule that reads its node must be the same rule: they are both here, and the
runtime builds its slot ids with ``worker_id_of`` (impl/runtime/controller.py), so
the two cannot drift apart.

A worker id of a node is ``<node><WORKER_SEPARATOR><index>``, the index in decimal
without leading zeros.  A node name may not contain the separator: then the first
separator in a worker id is where the node ends, and each worker id names at most
one node.  A worker id of any other shape (a caller's own ``Lease`` may use any
token) belongs to no node, and no ``AbandonNode`` ends its lease.
"""

from __future__ import annotations

from . import limits
from .errors import NODE_INVALID, BrokenInvariant, echo
from .validation import Problem, check_token

#: Between a node's name and a worker's index.  Named once: the runtime's ids and the
#: model's reading of them use this constant, never the text.
WORKER_SEPARATOR = "-w"

#: Worker indexes are below this: the runtime has at most one worker slot per lease
#: the model allows (impl/runtime/controller.py refuses a larger pool).
WORKER_INDEX_LIMIT = limits.IN_FLIGHT_MAX


def check_node_name(node: str) -> Problem | None:
    """A node name is a token (as a worker id is) without the separator."""
    problem = check_token("node", node, limits.NODE_NAME_BYTES_MAX, "NODE_NAME_BYTES_MAX")
    if problem is None and WORKER_SEPARATOR in node:
        return (
            NODE_INVALID,
            f"node {echo(node)} contains the worker separator {WORKER_SEPARATOR!r}, "
            "so its workers' ids would not say where the node ends",
        )
    return problem


def worker_id_of(node: str, index: int) -> str:
    """The id of worker ``index`` of ``node``; a valid ``Lease.worker_id``.

    Raises ``ValueError`` for a node name ``check_node_name`` refuses or an index
    outside ``[0, WORKER_INDEX_LIMIT)``: an id built from them would be refused by
    ``Lease`` or would not read back to ``node``.
    """
    problem = check_node_name(node)
    if problem is not None:
        rule, detail = problem
        raise ValueError(f"{rule}: {detail}")
    if isinstance(index, bool) or not isinstance(index, int):
        raise ValueError(f"a worker index must be an integer, got {echo(index)}")
    if not 0 <= index < WORKER_INDEX_LIMIT:
        raise ValueError(f"worker index {index} is outside [0, {WORKER_INDEX_LIMIT})")
    return f"{node}{WORKER_SEPARATOR}{index}"


def node_of_worker(worker_id: str) -> str | None:
    """The node whose worker ``worker_id`` is, or None when it is no node's worker.

    Exactly the inverse of ``worker_id_of``: ``node_of_worker(w) == n`` if and only
    if ``w == worker_id_of(n, i)`` for some index ``i``.
    """
    node, separator, index = worker_id.partition(WORKER_SEPARATOR)
    if not separator or check_node_name(node) is not None:
        return None
    # Canonical decimal only ("0", "17"; not "017", "+1", "١"): one id per worker.
    if not (index.isascii() and index.isdigit()) or str(int(index)) != index:
        return None
    if int(index) >= WORKER_INDEX_LIMIT:
        return None
    return node


# The longest node name with the largest index must still be a valid worker id, or
# the runtime would build ids that Lease refuses.  Checked at import, as limits.py's
# relations are, with or without ``python -O``.
if (
    limits.NODE_NAME_BYTES_MAX + len(WORKER_SEPARATOR) + len(str(WORKER_INDEX_LIMIT - 1))
    > limits.WORKER_ID_BYTES_MAX
):
    raise BrokenInvariant(
        "nodes.py: NODE_NAME_BYTES_MAX + the separator + the largest index "
        "exceed WORKER_ID_BYTES_MAX"
    )
