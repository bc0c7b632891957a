"""Checks of command fields against the named limits.

Each check returns None when the value is acceptable, or a ``(rule, detail)``
pair that ``decide`` turns into a :class:`~beaverq.model.errors.Rejection`.
Rules are short snake_case names; details quote the limit by its name in
limits.py so that an operator can find it.
"""

from __future__ import annotations

import json
import re

from . import limits
from .errors import echo

Problem = tuple[str, str]

# Derived ids are "j" + the LSN of the enqueue (decide.derived_job_id); callers may
# not use that shape, so a caller's id can never collide with a future derived one.
DERIVED_JOB_ID = re.compile(r"j[0-9]+")
QUEUE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def is_valid_unicode(text: str) -> bool:
    """Whether ``text`` can be stored: no lone surrogates (they have no UTF-8 form)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def has_space_or_control_plain(text: str) -> bool:
    """The definition: some character is white space or not printable."""
    return any(ch.isspace() or not ch.isprintable() for ch in text)


def _has_space_or_control(text: str) -> bool:
    """``has_space_or_control_plain`` at C speed (every Lease and result checks a token:
    1.2 µs -> 0.14 µs).  Why it is the same: every white-space character but the ASCII
    space is a control or separator character, which ``isprintable`` refuses;
    tests/test_fast_paths.py checks all 1,114,112 code points."""
    return " " in text or not text.isprintable()


def check_range(name: str, value: int, low: int, high: int, limit_names: str) -> Problem | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return (f"{name}_invalid", f"{name} must be an integer, got {echo(value)}")
    if not low <= value <= high:
        return (
            f"{name}_out_of_range",
            f"{name}={value} is outside [{low}, {high}] ({limit_names})",
        )
    return None


def check_integer(name: str, value: int) -> Problem | None:
    """Any integer (``bool`` is not one here, though Python says it is)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return (f"{name}_invalid", f"{name} must be an integer, got {echo(value)}")
    return None


def check_time(now_ms: int) -> Problem | None:
    return check_range("now_ms", now_ms, 0, limits.NOW_MS_MAX, "0..NOW_MS_MAX")


def check_token(name: str, value: str, bytes_max: int, limit_name: str) -> Problem | None:
    """A non-empty identifier without white space or control characters."""
    if not isinstance(value, str) or not value:
        return (f"{name}_invalid", f"{name} must be a non-empty string")
    if not is_valid_unicode(value):
        return (f"{name}_invalid", f"{name} contains lone surrogates, which have no UTF-8 form")
    if _utf8_len(value) > bytes_max:
        return (f"{name}_too_long", f"{name} is longer than {bytes_max} bytes ({limit_name})")
    if _has_space_or_control(value):
        return (
            f"{name}_invalid",
            f"{name} {echo(value)} contains white space or control characters",
        )
    return None


def check_job_id(job_id: str) -> Problem | None:
    problem = check_token("job_id", job_id, limits.JOB_ID_BYTES_MAX, "JOB_ID_BYTES_MAX")
    if problem is None and DERIVED_JOB_ID.fullmatch(job_id):
        return ("job_id_reserved", f"ids of the form j<digits> ({echo(job_id)}) are derived ids")
    return problem


def check_queue_name(queue: str) -> Problem | None:
    problem = check_token("queue", queue, limits.QUEUE_NAME_BYTES_MAX, "QUEUE_NAME_BYTES_MAX")
    if problem is None and not QUEUE_NAME.fullmatch(queue):
        return ("queue_invalid", f"queue {echo(queue)} must match {QUEUE_NAME.pattern}")
    return problem


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


# One decoder for every check: ``json.loads`` with a keyword builds a new decoder per
# call, which cost more than decoding a small result (4.8 µs for "null").
_STRICT_JSON = json.JSONDecoder(parse_constant=_refuse_constant)


def check_json(name: str, text: str, bytes_max: int, limit_name: str) -> Problem | None:
    if not isinstance(text, str):
        return (f"{name}_invalid", f"{name} must be JSON text")
    if not is_valid_unicode(text):
        return (f"{name}_invalid", f"{name} contains lone surrogates, which have no UTF-8 form")
    if _utf8_len(text) > bytes_max:
        return (f"{name}_too_large", f"{name} is larger than {bytes_max} bytes ({limit_name})")
    if is_nested_deeper_than(text, limits.JSON_DEPTH_MAX):
        return (
            f"{name}_too_deep",
            f"{name} nests arrays and objects deeper than {limits.JSON_DEPTH_MAX} levels "
            "(JSON_DEPTH_MAX)",
        )
    try:
        _STRICT_JSON.decode(text)
    except (ValueError, RecursionError) as error:
        return (f"{name}_invalid", f"{name} is not valid JSON: {error}")
    return None


# What the depth scan stops at: brackets, and what starts, ends or escapes in a string.
_JSON_STRUCTURE = re.compile(r'[\[\]{}"\\]')


def is_nested_deeper_than(text: str, depth_max: int) -> bool:
    """Whether ``text`` opens more than ``depth_max`` arrays and objects at once.

    The depth (docs/semantics.md, "JSON payloads"): scanning left to right outside
    strings, ``[`` and ``{`` add one and ``]`` and ``}`` take one away; the depth is
    the highest count reached.  A string runs from a ``"`` to the next ``"`` that a
    backslash does not escape (or to the end).  Any text has a depth, valid JSON or
    not, and it is measured by a loop, never by recursion: that is the point.
    """
    if text.count("[") + text.count("{") <= depth_max:
        return False  # cannot open more than it holds: the usual case, at C speed
    depth = 0
    in_string = False
    escaped_at = -1  # in a string, the position a backslash escapes
    for match in _JSON_STRUCTURE.finditer(text):
        at, found = match.start(), match.group()
        if at == escaped_at:
            continue
        if in_string:
            if found == "\\":
                escaped_at = at + 1
            elif found == '"':
                in_string = False
        elif found == '"':
            in_string = True
        elif found in "[{":
            depth += 1
            if depth > depth_max:
                return True
        elif found in "]}":
            depth -= 1
    return False


def truncate_utf8(text: str, bytes_max: int) -> str:
    """``text`` made storable: lone surrogates replaced by U+FFFD, then cut to at most
    ``bytes_max`` UTF-8 bytes, never inside a character."""
    # Encoding with surrogatepass gives a lone surrogate its (invalid) 3-byte form,
    # which decoding with "replace" turns into U+FFFD.
    storable = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    encoded = storable.encode("utf-8")
    if len(encoded) <= bytes_max:
        return storable
    return encoded[:bytes_max].decode("utf-8", "ignore")
