"""A small client for etcd 3.4's HTTP/JSON gateway: kv, txn, leases, election, watch.

Why our own, over the gateway (docs/cluster.md, "The client"): no maintained Python
client wraps etcd's election API, and the gRPC ones break on protobuf versions; the
gateway is plain HTTP that httpx speaks, and at beaverq's batch sizes its cost is not
the bottleneck (measured: 11,400-18,600 events/s packed, against the ~6,000 the
Python side can decide).  ``EtcdClient`` is the seam: a gRPC client can replace it.

What the gateway does that a reader must know: keys and values travel in base64;
64-bit integers arrive as JSON strings; fields holding their default value are left
out (a failed txn has no ``succeeded`` at all, a put event no ``type``).

Errors say what is known.  ``EtcdUnavailable`` with ``maybe_applied=True`` is an
*unknown outcome*: the request may have been applied (seen in the feasibility study:
a client timeout during a leader change hid a committed write).  A caller that must
not apply a write twice finds out by reading, never by blindly retrying.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import attrs
import httpx

#: The gateway's error text when the backend quota is full; etcd is read-only until
#: an operator frees space and disarms the alarm (docs/cluster.md, "Bounded").
NOSPACE_TEXT = "database space exceeded"


class EtcdError(Exception):
    """etcd refused the request (the message is etcd's)."""


class EtcdNoSpace(EtcdError):
    """etcd's backend quota is full: it takes no writes until space is reclaimed."""


class EtcdUnavailable(EtcdError):
    """No member answered.  ``maybe_applied``: the request reached a member, so a
    write may have been applied all the same (an unknown outcome)."""

    def __init__(self, message: str, *, maybe_applied: bool) -> None:
        super().__init__(message)
        self.maybe_applied = maybe_applied


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def prefix_end(prefix: bytes) -> bytes:
    """The range end that covers every key starting with ``prefix`` (etcd's rule:
    the prefix with its last byte below 0xff incremented)."""
    for index in range(len(prefix) - 1, -1, -1):
        if prefix[index] < 0xFF:
            return prefix[:index] + bytes([prefix[index] + 1])
    return b"\x00"  # every key


@attrs.frozen
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int

    @classmethod
    def from_json(cls, kv: dict[str, Any]) -> KeyValue:
        return cls(
            key=_unb64(kv.get("key")),
            value=_unb64(kv.get("value")),
            create_revision=int(kv.get("create_revision", 0)),
            mod_revision=int(kv.get("mod_revision", 0)),
            version=int(kv.get("version", 0)),
            lease=int(kv.get("lease", 0)),
        )


@attrs.frozen
class RangeResult:
    kvs: tuple[KeyValue, ...]
    more: bool
    revision: int  # the store's revision when it answered


# -- txn operations ---------------------------------------------------------------------


@attrs.frozen
class Compare:
    """``target`` of ``key`` compared EQUAL to ``value`` (int for the revisions and
    the version, bytes for the value).  A missing key has version 0 and create
    revision 0."""

    key: bytes
    target: Literal["VERSION", "CREATE", "MOD", "VALUE"]
    value: int | bytes

    def to_json(self) -> dict[str, Any]:
        field = {"VERSION": "version", "CREATE": "create_revision", "MOD": "mod_revision"}
        body: dict[str, Any] = {"key": _b64(self.key), "target": self.target, "result": "EQUAL"}
        if self.target == "VALUE":
            if not isinstance(self.value, bytes):
                raise TypeError("a VALUE compare needs bytes")
            body["value"] = _b64(self.value)
        else:
            body[field[self.target]] = str(self.value)
        return body


@attrs.frozen
class Put:
    key: bytes
    value: bytes
    lease: int = 0

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"key": _b64(self.key), "value": _b64(self.value)}
        if self.lease:
            body["lease"] = str(self.lease)
        return {"request_put": body}


@attrs.frozen
class Get:
    key: bytes
    range_end: bytes = b""
    limit: int = 0

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"key": _b64(self.key)}
        if self.range_end:
            body["range_end"] = _b64(self.range_end)
        if self.limit:
            body["limit"] = str(self.limit)
        return {"request_range": body}


@attrs.frozen
class DeleteRange:
    key: bytes
    range_end: bytes = b""

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"key": _b64(self.key)}
        if self.range_end:
            body["range_end"] = _b64(self.range_end)
        return {"request_delete_range": body}


Operation = Put | Get | DeleteRange


@attrs.frozen
class TxnResult:
    succeeded: bool
    revision: int
    #: One per operation of the branch taken: the kvs a ``Get`` read (empty otherwise).
    ranges: tuple[tuple[KeyValue, ...], ...]


@attrs.frozen
class LeaderKey:
    """What a won campaign holds: the election key, and its create revision, which
    is the leader's **epoch** (docs/cluster.md, "What the epoch fences")."""

    name: bytes
    key: bytes
    revision: int
    lease: int


@attrs.frozen
class WatchEvent:
    deleted: bool
    kv: KeyValue


@attrs.frozen
class MemberStatus:
    member_id: int
    leader_id: int
    raft_term: int
    db_size: int
    db_size_in_use: int
    version: str


# -- the client ---------------------------------------------------------------------------


class EtcdClient:
    """One etcd cluster, reached through any of ``urls`` (the first that answers;
    on a connection failure the next is tried and remembered)."""

    def __init__(self, urls: Sequence[str], *, timeout_s: float = 5.0) -> None:
        if not urls:
            raise ValueError("an etcd client needs at least one URL")
        self._urls = [url.rstrip("/") for url in urls]
        self._current = 0
        self._timeout_s = timeout_s
        self._http = httpx.Client(timeout=timeout_s)
        self._lock = threading.Lock()  # guards _current only; httpx.Client is thread-safe

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(self._urls)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> EtcdClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- transport ---------------------------------------------------------------------

    def call(
        self,
        path: str,
        body: dict[str, Any],
        *,
        timeout_s: float | None = None,
        write: bool = False,
    ) -> dict[str, Any]:
        """POST ``body`` to ``path`` on a member that answers.  A connection refused
        moves on to the next member (nothing was applied).  A request that reached a
        member and got no answer is an unknown outcome: a read then asks the next
        member, a ``write`` does not (sending it again could apply it twice: the
        caller reads to learn what happened) and raises ``EtcdUnavailable`` at once."""
        timeout = self._timeout_s if timeout_s is None else timeout_s
        last_error: Exception | None = None
        maybe_applied = False
        with self._lock:
            start = self._current
        for offset in range(len(self._urls)):
            index = (start + offset) % len(self._urls)
            url = self._urls[index]
            try:
                response = self._http.post(url + path, json=body, timeout=timeout)
            except httpx.ConnectError as error:
                last_error = error  # never reached a member: safe to try the next
                continue
            except httpx.TransportError as error:
                last_error, maybe_applied = error, True
                if write:
                    with self._lock:  # the next call starts at another member
                        self._current = (index + 1) % len(self._urls)
                    break
                continue
            except httpx.InvalidURL as error:
                raise EtcdError(f"{url!r} is not an etcd URL: {error}") from None
            with self._lock:
                self._current = index
            if write and response.status_code >= 500:
                # etcd's "request timed out" or "leader changed": applied or not, unknown.
                raise EtcdUnavailable(
                    f"{path} at {url}: {response.text.strip()[:200]}", maybe_applied=True
                )
            return self._answer(path, response)
        raise EtcdUnavailable(
            f"no etcd member answered {path} (tried {', '.join(self._urls)}): {last_error}",
            maybe_applied=maybe_applied,
        )

    @staticmethod
    def _answer(path: str, response: httpx.Response) -> dict[str, Any]:
        try:
            payload = response.json()
        except ValueError as error:
            raise EtcdError(f"{path}: answer is not JSON ({response.status_code})") from error
        if not isinstance(payload, dict):
            raise EtcdError(f"{path}: answer is not a JSON object")
        if response.status_code != 200 or "error" in payload:
            message = str(payload.get("message") or payload.get("error") or payload)
            if NOSPACE_TEXT in message:
                raise EtcdNoSpace(f"etcd is out of space (its quota is full): {message}")
            raise EtcdError(f"{path}: {message}")
        return payload

    # -- kv ----------------------------------------------------------------------------

    def get(self, key: bytes) -> KeyValue | None:
        kvs = self.range(key).kvs
        return kvs[0] if kvs else None

    def range(
        self,
        key: bytes,
        range_end: bytes = b"",
        *,
        limit: int = 0,
        revision: int = 0,
        serializable: bool = False,
        sort_descending: bool = False,
    ) -> RangeResult:
        """Keys in [key, range_end) (just ``key`` if no end), in key order.
        Linearizable unless ``serializable`` (which may answer stale data: display only)."""
        body: dict[str, Any] = {"key": _b64(key)}
        if range_end:
            body["range_end"] = _b64(range_end)
        if limit:
            body["limit"] = str(limit)
        if revision:
            body["revision"] = str(revision)
        if serializable:
            body["serializable"] = True
        if sort_descending:
            body["sort_order"] = "DESCEND"
            body["sort_target"] = "KEY"
        payload = self.call("/v3/kv/range", body)
        return RangeResult(
            kvs=tuple(KeyValue.from_json(kv) for kv in payload.get("kvs", ())),
            more=bool(payload.get("more", False)),
            revision=int(payload["header"].get("revision", 0)),
        )

    def count(self, key: bytes, range_end: bytes = b"") -> int:
        """How many keys [key, range_end) holds, without reading them."""
        body: dict[str, Any] = {"key": _b64(key), "count_only": True}
        if range_end:
            body["range_end"] = _b64(range_end)
        return int(self.call("/v3/kv/range", body).get("count", 0))

    def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        body = Put(key, value, lease).to_json()["request_put"]
        payload = self.call("/v3/kv/put", body, write=True)
        return int(payload["header"].get("revision", 0))

    def delete_range(self, key: bytes, range_end: bytes = b"") -> int:
        body = DeleteRange(key, range_end).to_json()["request_delete_range"]
        payload = self.call("/v3/kv/deleterange", body, write=True)
        return int(payload.get("deleted", 0))

    def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Operation],
        failure: Sequence[Operation] = (),
        *,
        timeout_s: float | None = None,
    ) -> TxnResult:
        body = {
            "compare": [compare.to_json() for compare in compares],
            "success": [operation.to_json() for operation in success],
            "failure": [operation.to_json() for operation in failure],
        }
        payload = self.call("/v3/kv/txn", body, timeout_s=timeout_s, write=True)
        ranges = tuple(
            tuple(
                KeyValue.from_json(kv) for kv in response.get("response_range", {}).get("kvs", ())
            )
            for response in payload.get("responses", ())
        )
        return TxnResult(
            succeeded=bool(payload.get("succeeded", False)),
            revision=int(payload["header"].get("revision", 0)),
            ranges=ranges,
        )

    def compact(self, revision: int, *, physical: bool = True) -> None:
        self.call(
            "/v3/kv/compaction", {"revision": str(revision), "physical": physical}, write=True
        )

    # -- leases ------------------------------------------------------------------------

    def lease_grant(self, ttl_s: int) -> int:
        payload = self.call("/v3/lease/grant", {"TTL": str(ttl_s)}, write=True)
        return int(payload["ID"])

    def lease_keepalive(self, lease: int) -> int:
        """Refresh ``lease``; its remaining TTL in seconds, 0 if it is gone."""
        payload = self.call("/v3/lease/keepalive", {"ID": str(lease)})
        return int(payload.get("result", {}).get("TTL", 0))

    def lease_revoke(self, lease: int) -> None:
        try:
            self.call("/v3/lease/revoke", {"ID": str(lease)}, write=True)
        except EtcdError as error:
            if "lease not found" not in str(error):
                raise

    # -- election ----------------------------------------------------------------------

    def campaign(self, name: bytes, lease: int, value: bytes, *, timeout_s: float) -> LeaderKey:
        """Block until this lease leads election ``name`` (or ``timeout_s`` passes:
        EtcdUnavailable).  Revoking the lease ends a waiting campaign with an error."""
        body = {"name": _b64(name), "lease": str(lease), "value": _b64(value)}
        payload = self.call("/v3/election/campaign", body, timeout_s=timeout_s)
        leader = payload["leader"]
        return LeaderKey(
            name=_unb64(leader.get("name")),
            key=_unb64(leader.get("key")),
            revision=int(leader.get("rev", 0)),
            lease=int(leader.get("lease", 0)),
        )

    def leader(self, name: bytes) -> KeyValue | None:
        """The election's current leader key (its value says who), None if none."""
        try:
            payload = self.call("/v3/election/leader", {"name": _b64(name)})
        except EtcdError as error:
            if "no leader" in str(error):
                return None
            raise
        kv = payload.get("kv")
        return None if kv is None else KeyValue.from_json(kv)

    def resign(self, leader: LeaderKey) -> None:
        body = {
            "leader": {
                "name": _b64(leader.name),
                "key": _b64(leader.key),
                "rev": str(leader.revision),
                "lease": str(leader.lease),
            }
        }
        self.call("/v3/election/resign", body, write=True)

    # -- watch -------------------------------------------------------------------------

    def watch(
        self, key: bytes, range_end: bytes = b"", *, start_revision: int, stop: threading.Event
    ) -> Iterator[WatchEvent]:
        """Every change to [key, range_end) from ``start_revision`` on, in revision
        order, until ``stop`` is set (checked between messages; a quiet stream is
        woken by the read timeout) or the stream breaks (EtcdUnavailable: the caller
        re-reads and watches again from where it got to)."""
        body = {
            "create_request": {
                "key": _b64(key),
                "range_end": _b64(range_end),
                "start_revision": str(start_revision),
            }
        }
        url = self._urls[self._current] + "/v3/watch"
        timeout = httpx.Timeout(self._timeout_s, read=0.5)
        try:
            with self._http.stream("POST", url, json=body, timeout=timeout) as response:
                lines = response.iter_lines()
                while not stop.is_set():
                    try:
                        line = next(lines)
                    except httpx.ReadTimeout:
                        # A quiet log: no message within the read timeout.  httpx cannot
                        # resume a stream after a timeout, so start a fresh one.
                        return
                    except StopIteration:
                        return
                    if line:
                        yield from self._watch_events(json.loads(line))
        except httpx.TransportError as error:
            with self._lock:
                self._current = (self._current + 1) % len(self._urls)
            raise EtcdUnavailable(
                f"the watch on {url} broke: {error}", maybe_applied=False
            ) from error

    @staticmethod
    def _watch_events(message: dict[str, Any]) -> Iterator[WatchEvent]:
        result = message.get("result", {})
        if "error" in message:
            raise EtcdError(f"watch: {message['error']}")
        if result.get("compact_revision") and result.get("canceled"):
            raise EtcdError(f"watch: compacted at revision {result['compact_revision']}")
        for event in result.get("events", ()):
            yield WatchEvent(
                deleted=event.get("type") == "DELETE", kv=KeyValue.from_json(event["kv"])
            )

    # -- maintenance -------------------------------------------------------------------

    def status(self, url: str | None = None) -> MemberStatus:
        """One member's status (the current one if ``url`` is None)."""
        if url is None:
            payload = self.call("/v3/maintenance/status", {})
        else:
            response = self._http.post(url.rstrip("/") + "/v3/maintenance/status", json={})
            payload = self._answer("/v3/maintenance/status", response)
        return MemberStatus(
            member_id=int(payload["header"].get("member_id", 0)),
            leader_id=int(payload.get("leader", 0)),
            raft_term=int(payload.get("raftTerm", 0)),
            db_size=int(payload.get("dbSize", 0)),
            db_size_in_use=int(payload.get("dbSizeInUse", 0)),
            version=str(payload.get("version", "")),
        )

    def alarms(self) -> tuple[str, ...]:
        """The raised alarms (e.g. ``NOSPACE``), empty when none."""
        payload = self.call("/v3/maintenance/alarm", {"action": "GET"})
        return tuple(str(alarm.get("alarm", "NONE")) for alarm in payload.get("alarms", ()))
