"""The control channel (impl/frontends/control.py) and the Python API
(impl/frontends/api.py), in-process: the protocol's answers, the socket's mode and
cleanup, a stale socket, the runner-less path, and the README's ten lines.  Waiting is on
conditions, never on sleeps."""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from beaverq.impl.frontends import control
from beaverq.impl.frontends.api import RunFailed, Runner, open_queue
from beaverq.impl.frontends.control import CommandFailed, answer, execute
from beaverq.impl.frontends.control_server import ControlServer
from beaverq.impl.runtime.handlers import HandlerRegistry


def test_answer_maps_errors_to_one_line_and_never_raises(tmp_path: Path) -> None:
    data_dir = str(tmp_path / "data")
    with Runner(data_dir, HandlerRegistry(), workers=1).start() as runner:
        target = runner.controller
        assert answer(target, b"not json")["ok"] is False
        assert answer(target, b"[1]")["ok"] is False
        assert "unknown operation" in answer(target, b'{"op": "drop_tables"}')["error"]
        assert "missing parameter" in answer(target, b'{"op": "cancel"}')["error"]
        refused = answer(target, b'{"op": "cancel", "params": {"job_id": "nope"}}')
        assert refused["ok"] is False and "job_not_found" in refused["error"]
        made = answer(target, b'{"op": "enqueue", "params": {"job": {"handler": "noop"}}}')
        assert made == {"ok": True, "result": "j1"}


def test_a_runner_serves_the_socket_and_removes_it(tmp_path: Path) -> None:
    data_dir = str(tmp_path / "data")
    path = control.socket_path(data_dir)
    with Runner(data_dir, HandlerRegistry(), workers=1).start() as runner:
        assert os.stat(path).st_mode & 0o777 == 0o600
        assert execute(data_dir, "enqueue", {"job": {"handler": "noop", "id": "a"}}) == "a"
        assert runner.until_idle(30.0)
        assert execute(data_dir, "show", {"job_id": "a"})["status"] == "completed"
        with pytest.raises(CommandFailed, match="job_not_found"):
            execute(data_dir, "cancel", {"job_id": "zzz"})
        # A second runner in the same process is refused as clearly as one elsewhere.
        with pytest.raises(RunFailed, match="another runner holds the data directory"):
            Runner(data_dir, HandlerRegistry(), workers=1).start()
    assert not os.path.exists(path)


def test_a_stale_socket_is_not_mistaken_for_a_runner(tmp_path: Path) -> None:
    """A runner killed with SIGKILL leaves its socket; nothing listens on it."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(data_dir / "control.sock"))
    stale.close()  # bound, never listening: connect() is refused
    assert execute(str(data_dir), "enqueue", {"job": {"handler": "noop"}}) == "j1"
    # And a new runner replaces the stale socket with its own.
    with Runner(str(data_dir), HandlerRegistry(), workers=1).start():
        assert execute(str(data_dir), "status", {})["runtime"] is not None


def test_a_held_lock_without_a_socket_names_the_holder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = str(tmp_path / "data")
    execute(data_dir, "enqueue", {"job": {"handler": "noop"}})
    monkeypatch.setattr(control, "RUNNER_STARTING_WAIT_S", 0.0)
    from beaverq.impl.storage.fs import RealFileSystem
    from beaverq.impl.storage.storage import Storage

    fs = RealFileSystem()
    storage, _state, _report = Storage.open(fs, data_dir)  # holds the lock, no socket
    try:
        for op, params in (("status", {}), ("cancel", {"job_id": "j1"})):
            with pytest.raises(CommandFailed, match=f"in use by process {os.getpid()}"):
                execute(data_dir, op, params)
    finally:
        storage.close()


def test_a_runner_that_hangs_up_is_reported(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(data_dir / "control.sock"))
    listener.listen(1)

    def hang_up() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(1024)  # takes the request, answers nothing

    thread = threading.Thread(target=hang_up)
    thread.start()
    try:
        with pytest.raises(CommandFailed, match="without answering"):
            control.request_runner(str(data_dir), "enqueue", {"job": {"handler": "noop"}})
    finally:
        thread.join()
        listener.close()


def test_a_failing_answer_is_an_internal_error_and_the_server_serves_on(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    server = ControlServer(_Broken(), str(data_dir))
    server.start()
    try:
        for _ in range(2):
            with pytest.raises(CommandFailed, match="internal error: broken"):
                control.request_runner(str(data_dir), "status", {})
    finally:
        server.close()


class _Broken:
    def status(self) -> Any:
        raise RuntimeError("broken")


def test_the_readme_example(tmp_path: Path) -> None:
    """The README's ten lines, nearly verbatim."""
    queue = open_queue(str(tmp_path / "data"))

    @queue.handler("add")
    def add(args: Any, context: Any) -> int:
        return int(args["a"] + args["b"])

    job_id = queue.enqueue("add", {"a": 1, "b": 2})
    ids = queue.enqueue_batch([{"handler": "add", "args": {"a": n, "b": n}} for n in range(5)])
    with queue.running(workers=2) as runner:
        assert runner.until_idle(30.0)
        assert queue.status()["runtime"] is not None  # through our own runner
    status = queue.status()  # without a runner: read from the directory
    assert status["completed"] == 6 and status["runtime"] is None
    detail = execute(str(tmp_path / "data"), "show", {"job_id": job_id})
    assert json.loads(detail["result_json"]) == 3
    assert len(ids) == 5


def test_api_refuses_bad_jobs_before_touching_the_directory(tmp_path: Path) -> None:
    queue = open_queue(str(tmp_path / "data"))
    with pytest.raises(ValueError):
        queue.enqueue("noop", timeout=-1)
    with pytest.raises(CommandFailed, match="priority_out_of_range"):
        queue.enqueue("noop", priority=99)
    assert not (tmp_path / "data").exists()


def test_run_blocking_until_idle(tmp_path: Path) -> None:
    queue = open_queue(str(tmp_path / "data"))
    queue.enqueue_batch([{"handler": "noop"}] * 3)
    queue.run(workers=2)
    assert queue.status()["completed"] == 3
