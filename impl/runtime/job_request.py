"""What a producer asks for: an ``Enqueue`` without its time.

The controller stamps the time when it decides the command (``JobRequest.command``),
under its lock, so that times grow with LSNs.  The fields are ``Enqueue``'s, minus
``now_ms``, with the same defaults: tests/test_architecture.py holds the two equal, so
that a field added to the model's command cannot be forgotten here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import attrs

from beaverq.model import Enqueue, limits
from beaverq.model.errors import ECHO_CHARS_MAX, echo


@attrs.frozen(kw_only=True)
class JobRequest:
    """An ``Enqueue`` without its time: what a producer asks for."""

    handler: str
    args_json: str = "null"
    job_id: str | None = None
    queue: str = "default"
    priority: int = limits.PRIORITY_DEFAULT
    max_attempts: int = limits.ATTEMPTS_DEFAULT
    timeout_ms: int = limits.TIMEOUT_MS_DEFAULT
    delay_ms: int = 0
    backoff_base_ms: int = limits.BACKOFF_BASE_MS_DEFAULT
    backoff_cap_ms: int = limits.BACKOFF_CAP_MS_DEFAULT
    idempotency_key: str | None = None

    @classmethod
    def of(cls, handler: str, args: Any = None, **fields: Any) -> JobRequest:
        """A request from Python values: ``args`` is serialised to JSON here."""
        if "args_json" not in fields:
            fields["args_json"] = _json_text(args)
        elif args is not None:
            raise ValueError("give args or args_json, not both")
        return cls(handler=handler, **fields)

    @classmethod
    def from_mapping(cls, fields: Mapping[str, Any]) -> JobRequest:
        fields = dict(fields)
        unknown = set(fields) - set(attrs.fields_dict(cls)) - {"args"}
        if unknown:
            listed = ", ".join(sorted(unknown))  # cut if long: a field name may be megabytes
            shown = listed if len(listed) <= ECHO_CHARS_MAX else echo(listed)
            raise ValueError(f"unknown job fields: {shown}")
        if "handler" not in fields:
            raise ValueError("a job needs a handler")
        handler = fields.pop("handler")
        args = fields.pop("args", None)
        return cls.of(handler, args, **fields)

    def command(self, now_ms: int) -> Enqueue:
        return Enqueue(now_ms=now_ms, **attrs.asdict(self))


def _json_text(value: Any) -> str:
    try:
        return json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError) as error:
        raise ValueError(f"args are not JSON-able: {error}") from None
    except RecursionError:  # the model refuses past JSON_DEPTH_MAX levels anyway
        raise ValueError("args are not JSON-able: nested too deep") from None
