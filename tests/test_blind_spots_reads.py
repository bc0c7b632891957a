"""Issue 15, kind 2: reads before durability.

Goal: ``status``, ``show`` and ``jobs`` never report a state that is not yet durable
(impl/controller.py, R2: "every answer (status, show, a rejection) waits for the LSN of
the state it read").  A read that says "completed" before the ``JobCompleted`` is fsynced
would be undone by a crash: the caller was told something the queue then forgets.
Leases had such a check (tests/test_controller.py, ``World._check_lease_durable``);
reads had none, so a read that skipped its wait went unseen.

Method: the controller runs in step mode over the crashable file system with
``InlineCommit``, which frames events at once but makes them durable only when someone
waits, so the published state is often ahead of the durable log (a result is decided
without a wait: nobody is answered).  After every step of a random workload, a read
(``status``, ``show`` or ``jobs``, called on the controller or through ``answer``, the
control socket's handler) must equal the same read computed from the durable log alone:
the events up to the storage's ``durable_lsn`` when the read returned, replayed.  That
is what a crash right after the read would leave.  One test goes through a real control
socket, the path of the CLI and of the Python API while a runner runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import event, given
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from test_controller import FAILED, OK, World

from beaverq.impl.frontends.control import StateView, answer, perform, request_runner
from beaverq.impl.frontends.control_server import ControlServer
from beaverq.model import FINISHED, JobStatus, initial_state, replay

READS: list[tuple[str, dict[str, Any]]] = [
    ("status", {}),
    ("jobs", {}),
    ("jobs", {"state": "completed"}),
    ("jobs", {"state": "in_flight"}),
    ("show", {"job_id": "j1"}),  # the first job
    ("show", {"job_id": "j2"}),
]


def comparable(op: str, result: Any) -> Any:
    """What of an answer is about the state: for ``status``, leave out the runtime
    figures (counters of this process, not of the log)."""
    if op == "status":
        result = {key: value for key, value in result.items() if key not in ("runtime", "recovery")}
    return json.loads(json.dumps(result))  # as a socket client sees it


def durable_answer(world: World, op: str, params: dict[str, Any]) -> Any:
    """The read computed from the durable log alone: what survives a crash now."""
    durable = replay(initial_state(), world.log[: world.storage.durable_lsn])
    return comparable(op, perform(StateView(durable, {}), op, params))


def read_is_durable(
    world: World, op: str, params: dict[str, Any], via_socket_handler: bool
) -> None:
    ahead = world.storage.durable_lsn < world.controller.state.last_lsn
    if currently_in_test_context():  # coverage, shown by --hypothesis-show-statistics
        event(f"read while the state is ahead of the log: {ahead}")
    if via_socket_handler:
        line = json.dumps({"op": op, "params": params}).encode()
        reply = answer(world.controller, line)
        assert reply["ok"], reply
        result = reply["result"]
    else:
        result = perform(world.controller, op, params)
    assert comparable(op, result) == durable_answer(world, op, params), (op, params)


ACTIONS = ("enqueue", "enqueue_delayed", "finish_ok", "finish_fail", "tick", "cancel")


@given(
    steps=st.lists(
        st.tuples(st.sampled_from(ACTIONS), st.sampled_from(range(len(READS))), st.booleans()),
        min_size=1,
        max_size=25,
    )
)
def test_every_read_reports_only_what_is_durable(steps: list[tuple[str, int, bool]]) -> None:
    world = World(workers=2)
    for action, read, via_socket_handler in steps:
        if action == "enqueue":
            world.enqueue(max_attempts=2, backoff_base_ms=0, backoff_cap_ms=0)
        elif action == "enqueue_delayed":
            world.enqueue(delay_ms=500)
        elif action in ("finish_ok", "finish_fail") and world.pool.running:
            world.pool.finish(0, OK if action == "finish_ok" else FAILED)
        elif action == "tick":
            world.clock.advance(600)
        elif action == "cancel" and world.ids:
            first = world.controller.state.jobs.get(world.ids[0])
            if first is not None and first.status not in FINISHED:
                world.controller.cancel(first.job_id)
        world.controller.step()  # results decided (not waited for), a tick, leases
        op, params = READS[read]
        read_is_durable(world, op, params, via_socket_handler)
    world.check()


def test_a_completion_decided_but_not_durable_is_not_reported() -> None:
    """The case spelled out: the result is decided and published, its event framed but
    not fsynced (nothing waited for it); every read must first make it durable, and so
    report it only once a crash would keep it."""
    world = World(workers=1)
    job_id = world.enqueue()
    world.controller.step()
    world.pool.finish(0, OK)
    world.controller.step()  # decides JobCompleted; no lease follows, so no wait
    assert world.controller.state.jobs[job_id].status is JobStatus.COMPLETED
    assert world.storage.durable_lsn < world.controller.state.last_lsn  # not yet durable
    shown = world.controller.show(job_id)
    assert shown is not None and shown["status"] == "completed"
    assert world.storage.durable_lsn == world.controller.state.last_lsn  # durable first
    for op, params in READS:
        read_is_durable(world, op, params, via_socket_handler=False)


def test_reads_through_the_control_socket_are_durable(tmp_path: Path) -> None:
    """Through a real socket (the CLI's and the API's path while a runner runs): the
    server's thread reads, and what it reports is durable by then."""
    world = World(workers=1)
    job_id = world.enqueue()
    world.controller.step()
    world.pool.finish(0, OK)
    world.controller.step()
    assert world.storage.durable_lsn < world.controller.state.last_lsn
    server = ControlServer(world.controller, str(tmp_path))
    server.start()
    try:
        for op, params in [("show", {"job_id": job_id}), *READS]:
            answered, result = request_runner(str(tmp_path), op, params)
            assert answered
            assert comparable(op, result) == durable_answer(world, op, params), (op, params)
    finally:
        server.close()
    assert world.storage.durable_lsn == world.controller.state.last_lsn
