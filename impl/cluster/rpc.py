"""The nodes' HTTP RPC (the design's Phase 2): JSON over HTTP/1.1.

Four calls, all ``POST`` with a JSON body and a JSON answer:

``/v1/op``       ``{"op": ..., "params": {...}}``: the control socket's operations, with
                 the same table and refusal rules (impl/frontends/control.py, ``answer``).
                 Any node takes them: a follower forwards a change to the leader and
                 answers a read from its own fold of the log.
``/v1/lease``    ``{"worker_ids": [...]}`` -> ``{"ok": true, "tasks": [...]}`` (leader only)
``/v1/results``  ``{"results": [...]}`` -> ``{"ok": true}`` (leader only)
``/v1/abandon_node``  ``{"node": ...}``: end that node's leases (leader only; a
                 node that restarts asks it for itself before it leases)

A node that is not the leader answers a leader-only call with 409 and the leader's
node name, if it knows one.  Bodies are bounded (``BODY_BYTES_MAX``): a client cannot
make a node buffer without end.  The RPC has no authentication: bind it to loopback
or a private network (docs/security.md, "The cluster").
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

import cattrs
import httpx

from beaverq.impl.runtime.workers import Task, TaskResult

from .node_workers import LeaderUnreachable

BODY_BYTES_MAX = 64 * 1024 * 1024
#: How long a client waits for a node's answer (a forwarded command included).
ANSWER_WAIT_S = 30.0

_converter = cattrs.Converter()


class RpcTarget(Protocol):
    """What serves the calls: the node (node.py)."""

    def answer_op(self, body: bytes) -> dict[str, Any]: ...

    def lease(self, worker_ids: Sequence[str]) -> list[Task]: ...

    def record_results(self, results: Sequence[TaskResult]) -> None: ...

    def abandon_node(self, node: str) -> int: ...


class RpcRefused(LeaderUnreachable):
    """The node refused the request itself (too large, malformed): asking another node
    the same would not help a client; a node's workers still keep their results."""


class NotLeader(Exception):
    """A leader-only call reached a node that does not lead."""


class _Handler(BaseHTTPRequestHandler):
    server: RpcServer

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 <= length <= BODY_BYTES_MAX:
            self._send(413, {"ok": False, "error": f"a body is at most {BODY_BYTES_MAX} bytes"})
            return
        body = self.rfile.read(length)
        target = self.server.target
        try:
            if self.path == "/v1/op":
                self._send(200, target.answer_op(body))
                return
            request = json.loads(body)
            if self.path == "/v1/lease":
                tasks = target.lease([str(w) for w in request["worker_ids"]])
                self._send(200, {"ok": True, "tasks": _converter.unstructure(tasks)})
            elif self.path == "/v1/results":
                results = _converter.structure(request["results"], list[TaskResult])
                target.record_results(results)
                self._send(200, {"ok": True})
            elif self.path == "/v1/abandon_node":
                self._send(200, {"ok": True, "abandoned": target.abandon_node(request["node"])})
            else:
                self._send(404, {"ok": False, "error": f"no call {self.path}"})
        except NotLeader as error:
            self._send(409, {"ok": False, "error": str(error)})
        except (ValueError, KeyError, TypeError, cattrs.BaseValidationError) as error:
            self._send(400, {"ok": False, "error": f"bad request: {error}"})
        except Exception as error:  # the node failed: say so, the caller retries elsewhere
            self._send(503, {"ok": False, "error": f"{type(error).__name__}: {error}"})

    def _send(self, status: int, answer: dict[str, Any]) -> None:
        data = json.dumps(answer, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request would drown the node's log


class RpcServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, port: int, target: RpcTarget) -> None:
        super().__init__((host, port), _Handler)
        self.target = target
        self._thread = threading.Thread(target=self.serve_forever, name="beaverq-rpc", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():  # shutdown() waits for a serve_forever that never ran
            self.shutdown()
        self.server_close()


class RpcClient:
    """Calls one node's RPC; a node that cannot be reached is ``LeaderUnreachable``."""

    def __init__(self, url: str, *, timeout_s: float = ANSWER_WAIT_S) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def call(self, path: str, body: dict[str, Any] | bytes) -> dict[str, Any]:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        try:
            response = self._http.post(self.url + path, content=content)
            answer = response.json()
        except (httpx.TransportError, ValueError, RuntimeError) as error:
            # No answer, an answer that is not JSON, or this client closed meanwhile (a
            # leader change): nothing was learnt, so the caller keeps what it sent.
            raise LeaderUnreachable(f"{self.url} did not answer: {error}") from error
        if response.status_code != 200 or not isinstance(answer, dict):
            # Not the leader (409), failing (503), or a request it refused (4xx): the
            # caller keeps its results and asks again, never takes this for a yes.
            error_text = answer.get("error") if isinstance(answer, dict) else answer
            refused = 400 <= response.status_code < 500 and response.status_code != 409
            kind = RpcRefused if refused else LeaderUnreachable
            raise kind(f"{self.url} ({response.status_code}): {error_text}")
        return answer

    # A LeaderPort over HTTP (node_workers.py).

    def lease(self, worker_ids: Sequence[str]) -> list[Task]:
        answer = self.call("/v1/lease", {"worker_ids": list(worker_ids)})
        return _converter.structure(answer["tasks"], list[Task])

    def results(self, results: Sequence[TaskResult]) -> None:
        self.call("/v1/results", {"results": _converter.unstructure(list(results))})

    def abandon_node(self, node: str) -> int:
        return int(self.call("/v1/abandon_node", {"node": node})["abandoned"])
