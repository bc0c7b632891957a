"""The codec: events and checkpoints to bytes and back, through one cattrs converter.

Encoding: MessagePack (``cattrs.preconf.msgpack``).  Measured against JSON via
orjson on our events: about the same speed, 25 % smaller (binary integers, no
quoting), and the WAL is binary framing anyway.  Events are a tagged union: each
is a map with a ``"type"`` key holding the event class name.  Those names are part
of the on-disk format (and the TLA+ action names), so renaming an event class or
changing its fields is a format change: ``SCHEMA_VERSION`` goes up.

Older schemas stay readable (docs/storage.md, "Schema evolution"): each WAL segment
and snapshot records the schema it was written in, ``decode_event`` decodes a
payload by its own schema, and ``read_event`` upcasts a schema-1 event to today's
(model/upcast.py) at its place in the log.  The checkpoint encoding is the same in
schemas 1 and 2 (only events changed), so a schema-1 snapshot is read as it is.
Anything newer than this code is refused, never guessed at.

Jobs inside checkpoints are the bulk of a snapshot, so they are written as
positional rows (arrays in field order) and read back with direct constructor
calls: a snapshot of a million jobs must load in about a second.
"""

from __future__ import annotations

import operator
from typing import Any

import attrs
import cattrs
from cattrs.preconf.msgpack import make_converter
from cattrs.strategies import configure_tagged_union

from beaverq.model import AttemptRecord, BrokenInvariant, Event, Job, JobSpec, JobStatus, State
from beaverq.model.checkpoint import Checkpoint
from beaverq.model.upcast import SCHEMA1_RENAMED, Schema1Event, upcast_schema1

#: Version of the encoding of events and checkpoints this code writes.
#: 1: up to commit 3322584; 2: ending events record their outcome (``target``).
SCHEMA_VERSION = 2
#: The versions this code reads: its own, and older ones through the upcaster.
SCHEMA_VERSIONS_READABLE = frozenset({1, SCHEMA_VERSION})

EVENT_TAG = "type"


class CodecError(Exception):
    """Bytes that do not decode to a known event or checkpoint of this schema version."""


_converter = make_converter()
configure_tagged_union(Event, _converter, tag_name=EVENT_TAG)

# Schema 1: the same tags, and the schema-1 shapes of the events that changed.
_SCHEMA1_TAGS = {cls: new.__name__ for cls, new in SCHEMA1_RENAMED.items()}
_schema1_converter = make_converter()
configure_tagged_union(
    Schema1Event,
    _schema1_converter,
    tag_name=EVENT_TAG,
    tag_generator=lambda cls: _SCHEMA1_TAGS.get(cls, cls.__name__),
)

_SPEC_FIELDS = tuple(field.name for field in attrs.fields(JobSpec))
_RECORD_FIELDS = tuple(field.name for field in attrs.fields(AttemptRecord))
_JOB_FIELDS = tuple(field.name for field in attrs.fields(Job))
if _JOB_FIELDS[0] != "spec":  # the row layout below puts the spec first
    raise BrokenInvariant(f"Job's first field is {_JOB_FIELDS[0]!r}, not 'spec'")
_JOB_TAIL_FIELDS = _JOB_FIELDS[1:]  # after the spec, in declaration order
_SPEC_WIDTH = len(_SPEC_FIELDS)
_ROW_WIDTH = _SPEC_WIDTH + len(_JOB_TAIL_FIELDS)
_STATUS_BY_VALUE = {status.value: status for status in JobStatus}
_spec_values = operator.attrgetter(*_SPEC_FIELDS)
_job_values = operator.attrgetter(*_JOB_TAIL_FIELDS)
_record_values = operator.attrgetter(*_RECORD_FIELDS)
_new = object.__new__


def _job_to_row(job: Job) -> list[Any]:
    """A job as one flat array: the spec's fields, then the job's, in declaration order."""
    row = [*_spec_values(job.spec), *_job_values(job)]
    status_at = _SPEC_WIDTH + _JOB_TAIL_FIELDS.index("status")
    row[status_at] = job.status.value
    row[-1] = [list(_record_values(record)) for record in job.history]
    return row


def _job_from_row(row: list[Any], _type: type[Job]) -> Job:
    """The inverse of ``_job_to_row``, on the recovery hot path.

    ``JobSpec``, ``Job`` and ``AttemptRecord`` are dict-backed frozen records with
    no validators (model/records.py checks that), so filling a fresh instance's
    ``__dict__`` builds exactly what the constructor would, at C speed.  This took
    snapshot decoding from about 6 µs to about 1.5 µs per job;
    tests/test_codec.py checks the result equals constructor-built jobs.
    """
    if len(row) != _ROW_WIDTH:
        raise CodecError(f"job row has {len(row)} fields, expected {_ROW_WIDTH}")
    spec = _new(JobSpec)
    spec.__dict__.update(zip(_SPEC_FIELDS, row[:_SPEC_WIDTH], strict=True))
    job = _new(Job)
    fields = job.__dict__
    fields["spec"] = spec
    fields.update(zip(_JOB_TAIL_FIELDS, row[_SPEC_WIDTH:], strict=True))
    fields["status"] = _STATUS_BY_VALUE[fields["status"]]
    fields["history"] = tuple(_record_from_row(record) for record in fields["history"])
    return job


def _record_from_row(row: list[Any]) -> AttemptRecord:
    record = _new(AttemptRecord)
    record.__dict__.update(zip(_RECORD_FIELDS, row, strict=True))
    return record


_converter.register_unstructure_hook(Job, _job_to_row)
_converter.register_structure_hook(Job, _job_from_row)


def encode_event(event: Event) -> bytes:
    encoded: bytes = _converter.dumps(event, Event)
    return encoded


def decode_event(data: bytes) -> Event:
    """A payload of this code's schema as an event."""
    try:
        event: Event = _converter.loads(data, Event)  # type: ignore[arg-type]
    except (cattrs.BaseValidationError, ValueError, TypeError, KeyError) as error:
        raise CodecError(f"not an event of schema {SCHEMA_VERSION}: {_describe(error)}") from None
    return event


def decode_schema1_event(data: bytes) -> Schema1Event:
    """A payload written by schema-1 code, in its schema-1 shape (not yet upcast)."""
    try:
        event: Schema1Event = _schema1_converter.loads(data, Schema1Event)  # type: ignore[arg-type]
    except (cattrs.BaseValidationError, ValueError, TypeError, KeyError) as error:
        raise CodecError(f"not an event of schema 1: {_describe(error)}") from None
    return event


def read_event(state: State, data: bytes, schema_version: int) -> Event | None:
    """The event a WAL payload of ``schema_version`` means today, read in log order.

    ``state`` is the fold of every event before this one (an upcast may need it).
    None: the state already covers the event (see ``upcast_schema1``).
    """
    if schema_version == SCHEMA_VERSION:
        return decode_event(data)
    if schema_version == 1:
        return upcast_schema1(state, decode_schema1_event(data))
    raise CodecError(
        f"schema version {schema_version}; this beaverq reads {sorted(SCHEMA_VERSIONS_READABLE)}"
    )


def encode_checkpoint(checkpoint: Checkpoint) -> bytes:
    encoded: bytes = _converter.dumps(checkpoint)
    return encoded


def decode_checkpoint(data: bytes) -> Checkpoint:
    try:
        checkpoint: Checkpoint = _converter.loads(data, Checkpoint)
    except (cattrs.BaseValidationError, ValueError, TypeError, KeyError) as error:
        raise CodecError(
            f"not a checkpoint of schema {SCHEMA_VERSION}: {_describe(error)}"
        ) from None
    return checkpoint


def _describe(error: BaseException) -> str:
    if isinstance(error, cattrs.BaseValidationError):
        causes = "; ".join(_describe(cause) for cause in error.exceptions)
        return f"{error.message}: {causes}"
    return f"{type(error).__name__}: {error}"
