"""Requests with the wrong JSON types (issue 11): the control socket checks every
request from the operations table's declared parameters (impl/frontends/control.py,
``PARAMETERS``), as strictly as the CLI's parser, with or without a runner.

The socket tests talk to a real ``beaverq run`` through raw socket requests; the
runner is stopped (or killed) at the end whatever happens.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from beaverq.impl.frontends import control
from beaverq.impl.frontends.control import CommandFailed, execute

WAIT_S = 60.0  # generous: only a broken test waits this long
CLI = [sys.executable, "-m", "beaverq.impl.frontends.cli"]

#: (request, a fragment of the one-line error it must get).
BAD_REQUESTS: list[tuple[Any, str]] = [
    ({"op": "enqueue", "params": {"job": ["noop"]}}, "enqueue: job must be an object"),
    ({"op": "enqueue", "params": {"job": "noop"}}, "enqueue: job must be an object"),
    ({"op": "enqueue_batch", "params": {"jobs": {"handler": "noop"}}}, "must be a non-empty"),
    ({"op": "enqueue_batch", "params": {"jobs": []}}, "must be a non-empty array"),
    ({"op": "enqueue_batch", "params": {"jobs": [["noop"]]}}, "must be an object"),
    ({"op": "jobs", "params": {"queue": ["default"]}}, "jobs: queue must be a string"),
    ({"op": "jobs", "params": {"limit": -1}}, "jobs: limit must be an integer from 0"),
    ({"op": "jobs", "params": {"limit": True}}, "jobs: limit must be an integer"),
    ({"op": "jobs", "params": {"limit": 1.5}}, "jobs: limit must be an integer"),
    ({"op": "jobs", "params": {"state": "sleeping"}}, "jobs: state must be one of pending"),
    ({"op": "jobs", "params": {"state": ["dead"]}}, "jobs: state must be one of"),
    ({"op": "show", "params": {"job_id": ["j1"]}}, "show: job_id must be a string"),
    ({"op": "show", "params": {"job_id": {"id": "j1"}}}, "show: job_id must be a string"),
    ({"op": "cancel", "params": {"job_id": 1}}, "cancel: job_id must be a string"),
    ({"op": "pause", "params": {"queue": None}}, "pause: queue must be a string, got null"),
    ({"op": "cancel", "params": {"job_id": "j1", "force": True}}, "unknown parameter 'force'"),
    ({"op": "status", "params": {"verbose": 1}}, "unknown parameter 'verbose'"),
    ({"op": "status", "params": []}, "status: params must be an object, got an array"),
    ({"op": "status", "params": None}, "params must be an object, got null"),
    ({"op": "status", "extra": 1}, "and nothing else"),
    ({"op": ["status"]}, "a request is"),
    (["status"], "a request is"),
]


def raw_request(path: str, request: Any) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(WAIT_S)
        client.connect(path)
        client.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = client.recv(65536)
            assert chunk, "the runner hung up without answering"
            data += chunk
    answer: dict[str, Any] = json.loads(data)
    return answer


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A ``beaverq run`` (one for the module) with one job, ``long``; its data dir."""
    data_dir = tmp_path_factory.mktemp("requests") / "data"
    enqueued = subprocess.run(
        [*CLI, "--data-dir", str(data_dir), "enqueue", "sleep", '{"seconds": 60}', "--id", "long"],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )
    assert enqueued.returncode == 0, enqueued.stderr
    process = subprocess.Popen(
        [*CLI, "--data-dir", str(data_dir), "run", "--workers", "1", "--grace", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    path = data_dir / "control.sock"
    deadline = time.monotonic() + WAIT_S
    while not path.exists() and process.poll() is None:
        assert time.monotonic() < deadline, "the runner did not serve its socket"
        threading.Event().wait(0.01)
    try:
        assert process.poll() is None, process.communicate()
        yield data_dir
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.communicate(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


@pytest.mark.parametrize(
    "line",
    [
        b"[" * 100_000 + b"\n",
        b'{"op": "enqueue", "params": {"job": {"handler": "noop", "args": '
        + b"[" * 5_000
        + b"]" * 5_000
        + b"}}}\n",
    ],
    ids=["bare", "in-args"],
)
def test_a_request_nested_too_deep_to_parse_is_refused_in_one_line(
    runner: Path, line: bytes
) -> None:
    """Goal: a request nested deeper than Python's JSON reader can go (a RecursionError)
    is the client's error, named as such, not "internal error" (a bug of the runner's);
    the runner serves on.  Method: the raw line (json.dumps cannot even write it) to a
    real runner's socket; then ``status`` answers."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(WAIT_S)
        client.connect(str(runner / "control.sock"))
        client.sendall(line)
        with client.makefile("rb") as stream:
            answer = json.loads(stream.readline())
    assert answer["ok"] is False, answer
    assert "nests arrays and objects too deep" in answer["error"], answer
    assert "internal error" not in answer["error"]
    assert raw_request(str(runner / "control.sock"), {"op": "status"})["ok"] is True


@pytest.mark.parametrize(("request_", "complaint"), BAD_REQUESTS)
def test_a_request_with_wrong_types_is_refused_in_one_line(
    runner: Path, request_: Any, complaint: str
) -> None:
    """Goal: each malformed request gets ``ok: false`` and a one-line error naming the
    operation, the parameter and what it must be, never "internal error" (a list as
    the job gave "'list' object has no attribute 'items'"); the runner serves on.

    Method: send the raw request to a real runner's socket; then ``status`` answers."""
    answer = raw_request(str(runner / "control.sock"), request_)
    assert answer["ok"] is False, answer
    error = answer["error"]
    assert complaint in error, error
    assert "internal error" not in error and "\n" not in error
    assert raw_request(str(runner / "control.sock"), {"op": "status"})["ok"] is True


def test_good_requests_are_still_answered(runner: Path) -> None:
    """Goal: the checks refuse only what is wrong: every parameter of ``jobs`` given
    well, ``limit`` 0, a parameter left out, and ``show`` of the one job all answer.

    Method: raw requests to the real runner; compare with what the job is."""
    path = str(runner / "control.sock")
    listed = raw_request(
        path, {"op": "jobs", "params": {"state": "in_flight", "queue": "default", "limit": 5}}
    )
    assert listed["ok"] is True and [job["job_id"] for job in listed["result"]] in ([], ["long"])
    assert raw_request(path, {"op": "jobs", "params": {"limit": 0}})["result"] == []
    assert len(raw_request(path, {"op": "jobs", "params": {}})["result"]) == 1
    assert (
        raw_request(path, {"op": "show", "params": {"job_id": "long"}})["result"]["job_id"]
        == "long"
    )


@pytest.mark.parametrize(("request_", "complaint"), BAD_REQUESTS[:17])
def test_without_a_runner_the_same_checks_refuse_and_write_nothing(
    tmp_path: Path, request_: dict[str, Any], complaint: str
) -> None:
    """Goal: without a runner, ``execute`` (the CLI's and the API's road) refuses the
    same requests with the same message, and changes no byte of the data directory.

    Method: a directory with one job; each bad request through ``execute``; compare
    every file's bytes before and after."""
    data_dir = tmp_path / "data"
    execute(str(data_dir), "enqueue", {"job": {"handler": "noop", "id": "one"}})
    before = {path.name: path.read_bytes() for path in sorted(data_dir.iterdir())}
    with pytest.raises(CommandFailed) as refused:
        execute(str(data_dir), request_["op"], request_["params"])
    assert complaint in str(refused.value)
    after = {path.name: path.read_bytes() for path in sorted(data_dir.iterdir())}
    assert after == before


def test_every_parameter_of_the_table_is_declared() -> None:
    """Goal: the checks come from the table: every parameter an operation takes has a
    declared check, and an operation with an undeclared one is refused at import.

    Method: look up each operation's parameters in ``PARAMETERS``; run
    ``check_wiring`` on a table with an undeclared parameter."""
    for name, operation in control.OPERATIONS.items():
        for param in operation.params:
            assert param in control.PARAMETERS, (name, param)
    half_wired = {"show": control.Operation("show", ("job_id", "colour"), None)}
    with pytest.raises(TypeError, match="parameter 'colour' is not declared"):
        control.check_wiring(half_wired)


def test_the_client_s_answer_wait_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    """Goal: ``$BEAVERQ_ANSWER_WAIT_S`` must be a number of seconds > 0; anything else
    is a one-line error naming it.

    Method: set bad and good values; call ``answer_wait_s``."""
    for bad in ("0", "-1", "nan", "inf", "soon"):
        monkeypatch.setenv(control.ANSWER_WAIT_VARIABLE, bad)
        with pytest.raises(CommandFailed, match=control.ANSWER_WAIT_VARIABLE):
            control.answer_wait_s()
    monkeypatch.setenv(control.ANSWER_WAIT_VARIABLE, "2.5")
    assert control.answer_wait_s() == 2.5
    monkeypatch.delenv(control.ANSWER_WAIT_VARIABLE)
    assert control.answer_wait_s() == control.ANSWER_WAIT_S_MAX
    assert os.environ.get(control.ANSWER_WAIT_VARIABLE) is None
