"""Adding a command or an event is a checked path: every place that must know it does.

Goal: docs/model.md, "Adding a command, step by step", lists the places a new
command or event must be wired into.  Adding ``Release`` touched about forty files;
a step forgotten there would have surfaced, if at all, as a puzzling failure far
away.  Each test here fails, naming the command or event, when one of those places
does not know a command or event that the model declares.

Method: the declarations are the source of truth (``Command`` and ``Event``, the
unions in model/commands.py and model/events.py, and their ``*_TYPES`` tuples);
each test compares one place with them.  Where a place leaves an event out on
purpose (the TLA+ spec abstracts retention and pausing), the exception is listed
here with its reason, so a new event is never left out silently.
"""

from __future__ import annotations

import importlib
import inspect
import re
import typing
from pathlib import Path

import attrs
import pytest
from hypothesis import HealthCheck, find, settings
from strategies import commands

from beaverq.model import COMMAND_TYPES, EVENT_TYPES, JOB_EVENT_TYPES, Command, Event
from beaverq.model.jobs import JobSpec
from beaverq.model.lifecycle import TRANSITIONS, JobStatus
from beaverq.model.upcast import SCHEMA1_RENAMED, Schema1Event
from beaverq.spec.lifecycle import spec_edges
from beaverq.spec.oracle import Oracle

ROOT = Path(__file__).resolve().parent.parent
TLA_SPEC = ROOT / "tla" / "BeaverQueue.tla"

#: Events the TLA+ spec leaves out, and why (tla/README.md, docs/tla.md).
TLA_ABSTRACTED = {
    "JobForgotten": "retention is abstracted away",
    "QueuePaused": "pausing is abstracted away",
    "QueueResumed": "pausing is abstracted away",
}


#: Event types added after schema 1: a schema-1 log cannot hold them, so they need no
#: schema-1 reader.  Add a new event type here when you add it to the model.
NEWER_THAN_SCHEMA_1: set[str] = set()


def _names(types: typing.Iterable[type]) -> set[str]:
    return {cls.__name__ for cls in types}


def _decide_table() -> dict[type, object]:
    # importlib: the package re-exports the function ``decide`` under the module's name.
    return importlib.import_module("beaverq.model.decide")._DECIDE


def _apply_table() -> dict[type, object]:
    return importlib.import_module("beaverq.model.evolve")._APPLY


def test_the_type_tuples_list_exactly_the_unions() -> None:
    assert set(typing.get_args(Command)) == set(COMMAND_TYPES)
    assert set(typing.get_args(Event)) == set(EVENT_TYPES)


@pytest.mark.parametrize("command", COMMAND_TYPES, ids=lambda c: c.__name__)
def test_decide_handles_every_command(command: type) -> None:
    assert command in _decide_table(), f"decide has no handler for {command.__name__}"


def test_decide_handles_nothing_else() -> None:
    assert set(_decide_table()) <= set(COMMAND_TYPES)


@pytest.mark.parametrize("event", JOB_EVENT_TYPES, ids=lambda e: e.__name__)
def test_evolve_applies_every_job_event(event: type) -> None:
    assert event in _apply_table(), f"evolve has no apply function for {event.__name__}"


@pytest.mark.parametrize("event", JOB_EVENT_TYPES, ids=lambda e: e.__name__)
def test_the_lifecycle_tables_name_every_job_event(event: type) -> None:
    model = {name for _, name, _ in TRANSITIONS}
    spec = {trigger for _, trigger, _ in spec_edges()}
    assert event.__name__ in model, f"model/lifecycle.py TRANSITIONS lacks {event.__name__}"
    assert event.__name__ in spec, f"spec/lifecycle.py machine lacks {event.__name__}"


# The codec is wired by construction (its tagged union is built from ``Event``), and
# tests/test_codec.py round-trips a generated instance of every type in EVENT_TYPES.


@pytest.mark.parametrize("old", list(SCHEMA1_RENAMED), ids=lambda e: e.__name__)
def test_every_schema_1_shape_has_an_upcaster_to_a_current_event(old: type) -> None:
    """An event whose shape changes gets a schema-N shape and an upcaster, never a
    silent decoding failure of old logs (docs/storage.md, "Schema evolution")."""
    upcasters = importlib.import_module("beaverq.model.upcast")._UPCASTERS
    assert old in upcasters, f"no upcaster for {old.__name__}"
    assert SCHEMA1_RENAMED[old] in EVENT_TYPES


def test_the_schema_1_reader_knows_every_event_older_than_schema_2() -> None:
    """Every schema-1 tag decodes: the shared classes and the schema-1 shapes cover
    the events of schema 1, which are today's events (none was added since)."""
    schema1_tags = {SCHEMA1_RENAMED.get(cls, cls).__name__ for cls in typing.get_args(Schema1Event)}
    assert schema1_tags == _names(EVENT_TYPES) - NEWER_THAN_SCHEMA_1


@pytest.mark.parametrize("event", EVENT_TYPES, ids=lambda e: e.__name__)
def test_the_tla_spec_has_an_action_for_every_event(event: type) -> None:
    name = event.__name__
    if name in TLA_ABSTRACTED:
        pytest.skip(f"{name}: {TLA_ABSTRACTED[name]}")
    text = TLA_SPEC.read_text()
    assert re.search(rf"^{name}\(.*\) ==", text, re.MULTILINE), f"no TLA+ action {name}"
    assert f'"{name}"' in text.split("EventTypes ==", 1)[1].split("\n\n", 1)[0]


@pytest.mark.parametrize("command", COMMAND_TYPES, ids=lambda c: c.__name__)
def test_the_shared_strategies_draw_every_command(command: type) -> None:
    """The oracle comparison and the stateful tests draw commands from
    ``strategies.commands``; a command it never draws is never tested against the
    oracle.  ``find`` searches for one of this type."""
    found = find(
        commands(),
        lambda drawn: isinstance(drawn, command),
        settings=settings(
            max_examples=2_000, database=None, suppress_health_check=list(HealthCheck)
        ),
    )
    assert isinstance(found, command)


@pytest.mark.parametrize("command", COMMAND_TYPES, ids=lambda c: c.__name__)
def test_the_oracle_handles_every_command(command: type) -> None:
    """The oracle dispatches with an ``isinstance`` chain ending in a loud ``else``;
    its source must name every command."""
    source = inspect.getsource(Oracle._dispatch)
    assert f"isinstance(command, {command.__name__})" in source, (
        f"spec/oracle.py Oracle._dispatch does not handle {command.__name__}"
    )


# -- Step 8: a changed event is a new schema version. ---------------------------------

_JOB = (("lsn", "int"), ("at_ms", "int"), ("job_id", "str"))
_ATTEMPT = (*_JOB, ("attempt", "int"))
_QUEUE = (("lsn", "int"), ("at_ms", "int"), ("queue", "str"))
_OUTCOME = (("target", "JobStatus"), ("retry_at_ms", "int | None"))
_SHARED = {
    "DelayElapsed": _JOB,
    "LeaseGranted": (*_ATTEMPT, ("worker_id", "str"), ("expires_at_ms", "int")),
    "JobCompleted": (*_ATTEMPT, ("result_json", "str")),
    "CancelRequested": _JOB,
    "JobCancelled": _JOB,
    "JobRequeued": _JOB,
    "JobForgotten": _JOB,
    "QueuePaused": _QUEUE,
    "QueueResumed": _QUEUE,
}
_ENQUEUED = (("lsn", "int"), ("at_ms", "int"), ("spec", "JobSpec"), ("ready_at_ms", "int"))
#: Each schema's events as they are on disk: tag -> (field, declared type), in order.
#: Schema 1's rows are those of model/events.py at commit 3322584.  Frozen: the bytes
#: of a log mean what they meant when written, so a row never changes; a change to
#: an event is a new schema (codec.SCHEMA_VERSION), with the old shape and its
#: upcaster in model/upcast.py, and a new row here.
ON_DISK_EVENTS: dict[int, dict[str, tuple[tuple[str, str], ...]]] = {
    1: {
        **_SHARED,
        "JobEnqueued": _ENQUEUED,
        "JobFailed": (*_ATTEMPT, ("error", "str"), ("retry_at_ms", "int | None")),
        "LeaseExpired": _ATTEMPT,
        "LeaseAbandoned": _ATTEMPT,
        "LeaseReleased": _ATTEMPT,
    },
    2: {
        **_SHARED,
        "JobEnqueued": (*_ENQUEUED, ("target", "JobStatus")),
        "JobFailed": (*_ATTEMPT, ("error", "str"), *_OUTCOME),
        "LeaseExpired": (*_ATTEMPT, *_OUTCOME),
        "LeaseAbandoned": (*_ATTEMPT, *_OUTCOME),
        "LeaseReleased": (*_ATTEMPT, *_OUTCOME),
    },
}
#: What every schema so far nests in JobEnqueued, and the statuses ``target`` holds.
ON_DISK_JOB_SPEC = (
    ("job_id", "str"),
    ("queue", "str"),
    ("handler", "str"),
    ("args_json", "str"),
    ("priority", "int"),
    ("max_attempts", "int"),
    ("timeout_ms", "int"),
    ("backoff_base_ms", "int"),
    ("backoff_cap_ms", "int"),
    ("idempotency_key", "str | None"),
)
ON_DISK_STATUSES = {"absent", "pending", "delayed", "in_flight", "completed", "dead", "cancelled"}
_NEW_SCHEMA = (
    "an event's fields changed: that is a new schema version (docs/storage.md, "
    "'Schema evolution'): raise codec.SCHEMA_VERSION, keep the old shape with its "
    "upcaster in model/upcast.py, and add the new schema's row to ON_DISK_EVENTS"
)


def _shape(cls: type) -> tuple[tuple[str, str], ...]:
    # A declared type is its source text until something resolves it (the codec's
    # converter does): ``int``, ``JobStatus``, ``int | None`` either way.
    return tuple(
        (field.name, getattr(field.type, "__name__", str(field.type)))
        for field in attrs.fields(cls)
    )


def test_todays_events_are_the_shapes_of_todays_schema() -> None:
    """Adding a field to an event, even one with a default, or retyping one, changes
    what a log means; without this the suite passed such a change (a defaulted
    field on LeaseGranted: the codec round trip, the fixture and the upcaster tests
    all stayed green, and old logs silently read the default)."""
    from beaverq.impl.storage.codec import SCHEMA_VERSION

    assert {cls.__name__: _shape(cls) for cls in EVENT_TYPES} == ON_DISK_EVENTS[SCHEMA_VERSION], (
        _NEW_SCHEMA
    )
    assert _shape(JobSpec) == ON_DISK_JOB_SPEC, _NEW_SCHEMA
    assert {status.value for status in JobStatus} == ON_DISK_STATUSES, _NEW_SCHEMA


def test_the_schema_1_reader_reads_the_shapes_schema_1_wrote() -> None:
    """The shared classes are read from schema-1 logs as they are: a change to one
    is a change to how schema 1 is read."""
    read = {
        SCHEMA1_RENAMED.get(cls, cls).__name__: _shape(cls) for cls in typing.get_args(Schema1Event)
    }
    assert read == ON_DISK_EVENTS[1], _NEW_SCHEMA
