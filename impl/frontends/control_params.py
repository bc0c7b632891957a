"""The control protocol's parameters: each name's check, and how its JSON value becomes
the controller method's argument (control.py's table, ``OPERATIONS``, names them).

A name means the same in every operation (``job_id`` is a job's id wherever it
appears), so ``PARAMETERS`` declares each once, and a request is checked from the
table alone, as strictly as the CLI's parser checks a command line.  A job's fields
use the CLI's vocabulary (flag names; seconds, not milliseconds): ``job_request`` turns
them into a ``JobRequest``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from beaverq.impl.runtime.job_request import JobRequest
from beaverq.model.errors import echo
from beaverq.model.limits import JOBS_MAX

_SECONDS_FIELDS = {"timeout": "timeout_ms", "delay": "delay_ms"}
_RENAMED_FIELDS = {"id": "job_id"}


def job_request(fields: Mapping[str, Any]) -> JobRequest:
    """A ``JobRequest`` from the CLI's vocabulary (flag names; seconds, not ms).

    ``--max-attempts`` may be spelt ``max_attempts`` or ``max-attempts``; ``timeout``
    and ``delay`` are seconds, turned into the model's milliseconds here."""
    converted: dict[str, Any] = {}
    for raw_name, value in fields.items():
        if not isinstance(raw_name, str):
            raise ValueError(f"field names must be strings, got {echo(raw_name)}")
        name = raw_name.replace("-", "_")
        if name in _SECONDS_FIELDS:
            converted[_SECONDS_FIELDS[name]] = seconds_to_ms(value, name)
        else:
            converted[_RENAMED_FIELDS.get(name, name)] = value
    for name in ("priority", "max_attempts"):
        value = converted.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"{name} must be an integer, got {echo(value)}")
    return JobRequest.from_mapping(converted)


def seconds_to_ms(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number of seconds, got {echo(value)}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {echo(value)}")
    if value > 10**12:  # far beyond every model limit; keeps the product exact
        raise ValueError(f"{name} is out of range: {echo(value)} seconds")
    return round(value * 1000)


def json_type(value: Any) -> str:
    """The JSON name of ``value``'s type, for an error message."""
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string"}
    names |= {list: "an array", dict: "an object", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {json_type(value)}")
    return value


def _job(value: Any) -> JobRequest:
    if not isinstance(value, dict):
        raise ValueError(f"must be an object (a job's fields), got {json_type(value)}")
    return job_request(value)


def _jobs(value: Any) -> list[JobRequest]:
    if not isinstance(value, list) or not value:
        got = "an empty array" if value == [] else json_type(value)
        raise ValueError(f"must be a non-empty array of jobs, got {got}")
    return [_job(job) for job in value]


def _job_state(value: Any) -> str:
    if value not in _JOB_STATES:
        raise ValueError(f"must be one of {', '.join(_JOB_STATES)}, got {echo(value)}")
    return str(value)


def _limit(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= JOBS_MAX:
        raise ValueError(f"must be an integer from 0 to {JOBS_MAX}, got {echo(value)}")
    return value


_JOB_STATES = ("pending", "delayed", "in_flight", "completed", "dead", "cancelled")
#: Every parameter name any operation takes, and how its JSON value is checked and
#: becomes the method's argument.  A name means the same in every operation, so the
#: socket checks a request from the table alone, as strictly as the CLI's parser.
PARAMETERS: dict[str, Callable[[Any], Any]] = {
    "job": _job,
    "jobs": _jobs,
    "job_id": _string,
    "queue": _string,
    "state": _job_state,
    "limit": _limit,
}
