"""A handler for the nemesis tests' node processes (``--import cluster_handlers``, with
tests/ on their PYTHONPATH): the demo's handlers all stop at their deadline and report
a failure before the leader could expire the lease; this one does not."""

from __future__ import annotations

import time
from typing import Any

from beaverq.impl.runtime.handlers import HandlerContext, handler

OVERRUN = "nemesis.overrun"


@handler(OVERRUN)
def overrun(args: Any, context: HandlerContext) -> dict[str, float]:
    """Sleep ``args["seconds"]`` whatever the deadline: the lease expires under it
    (``LeaseExpired``), and the late result is dropped by the attempt fence."""
    seconds = float(args["seconds"])
    time.sleep(seconds)
    return {"slept_s": seconds}
