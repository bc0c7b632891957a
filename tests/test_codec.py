"""The codec: events and checkpoints to bytes and back (impl/storage/codec.py).

The codec is the one place where the model's values become bytes on disk, so it
must be exact both ways: every event of every type decodes to an equal event,
every checkpoint of a reachable state decodes to a checkpoint that restores the
state, and bytes that are not an event of this schema (an unknown tag, garbage, a
cut-off encoding) are refused with ``CodecError``, never misread.
"""

from __future__ import annotations

import attrs
import msgpack
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from storage_support import WORKLOAD_COMMANDS
from strategies import histories, run

from beaverq.impl.storage.codec import (
    EVENT_TAG,
    CodecError,
    decode_checkpoint,
    decode_event,
    encode_checkpoint,
    encode_event,
)
from beaverq.model import (
    EVENT_TYPES,
    Complete,
    Enqueue,
    Fail,
    JobFailed,
    JobSpec,
    Lease,
    QueuePaused,
    Rejected,
    decide,
    evolve,
    initial_state,
)
from beaverq.model.checkpoint import checkpoint_of, restore
from beaverq.model.lifecycle import JobStatus

# -- Strategies: one per event class, built field by field. ---------------------------

# Integers over the whole signed 64-bit range (the model's values are far inside it:
# times stop at 2**53, attempts at 100) and text of any character a str may hold
# except lone surrogates, which are the subject of their own test below.
INTS = st.integers(-(2**63), 2**63 - 1)
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=24)


def _strategy_for(annotation: object) -> st.SearchStrategy:
    # ``attrs.resolve_types`` (which cattrs calls) turns the string annotations into
    # types; accept both.  An unknown type fails loudly, so a new field of a new
    # type is never silently left out of the round trip.
    table = {
        "int": INTS,
        "str": TEXT,
        "int | None": st.none() | INTS,
        "str | None": st.none() | TEXT,
        "JobSpec": st.deferred(lambda: JOB_SPECS),
        "JobStatus": st.sampled_from(JobStatus),
    }
    name = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", None)
    if name is None or name not in table:
        name = str(annotation)
    return table[name]


def _builds(cls: type) -> st.SearchStrategy:
    return st.builds(cls, **{field.name: _strategy_for(field.type) for field in attrs.fields(cls)})


JOB_SPECS = _builds(JobSpec)
EVENT_STRATEGIES = {cls: _builds(cls) for cls in EVENT_TYPES}
EVENTS = st.one_of(*EVENT_STRATEGIES.values())


# -- Events. --------------------------------------------------------------------------


@pytest.mark.parametrize("event_type", EVENT_TYPES, ids=lambda cls: cls.__name__)
@given(data=st.data())
def test_every_event_type_round_trips(event_type, data):
    """Goal: decode(encode(e)) == e for every event class, over its whole field range.

    Method: for each class of ``EVENT_TYPES``, draw an instance with ``st.builds``
    (every field from its own strategy; JobEnqueued with a drawn JobSpec) and
    compare the decoded event with the original, type included.
    """
    event = data.draw(EVENT_STRATEGIES[event_type])
    decoded = decode_event(encode_event(event))
    assert type(decoded) is event_type
    assert decoded == event


@given(EVENTS)
def test_the_tag_is_the_class_name(event):
    """Goal: the on-disk tag of an event is its class name (a format promise).

    Method: unpack the encoding as plain MessagePack and read the tag field; the
    rest of the map is exactly the event's fields.
    """
    raw = msgpack.unpackb(encode_event(event))
    assert raw[EVENT_TAG] == type(event).__name__
    assert set(raw) - {EVENT_TAG} == set(attrs.fields_dict(type(event)))


@given(histories())
def test_events_of_reachable_histories_round_trip(history):
    """Goal: every event the model produces survives the codec unchanged.

    Method: encode and decode each event of a random reachable history.
    """
    events, _states = history
    for event in events:
        assert decode_event(encode_event(event)) == event


@pytest.mark.parametrize(
    ("text_field", "commands"),
    [
        pytest.param(
            "args_json",
            [Enqueue(now_ms=0, handler="h", job_id="a", args_json='"\ud800"')],
            id="args_json",
        ),
        pytest.param(
            "result_json",
            [
                Enqueue(now_ms=0, handler="h", job_id="a"),
                Lease(now_ms=0, worker_id="w"),
                Complete(now_ms=0, job_id="a", attempt=1, result_json='"\udfff"'),
            ],
            id="result_json",
        ),
        pytest.param(
            "error",
            [
                Enqueue(now_ms=0, handler="h", job_id="a"),
                Lease(now_ms=0, worker_id="w"),
                Fail(now_ms=0, job_id="a", attempt=1, error="bad \udc80 byte"),
            ],
            id="error",
        ),
    ],
)
def test_every_event_decide_accepts_can_be_logged(text_field, commands):
    """Goal: the codec can write every event ``decide`` produces.

    A command the model accepts is appended to the WAL before it takes effect; if
    its event cannot be encoded, the queue has accepted work it cannot log.
    Python strings may hold lone surrogates (they arrive from ``surrogateescape``
    decoding of bytes, e.g. an exception message about a file name), which have
    no UTF-8 form.  The model refuses them in arguments (rule ``*_invalid``, the
    caller sees what is wrong), fails the attempt of a result holding one (the
    error names the field and holds no surrogate), and replaces them with U+FFFD in
    error messages (refusing a failure report would lose the failure itself).

    Method: run commands carrying a lone surrogate in the field; args must be
    refused naming the field, a result or an error must be accepted as a failure
    without a surrogate; every accepted event must round-trip through the codec.
    """
    if text_field in ("error", "result_json"):
        events, _states = run(commands)
        assert len(events) == len(commands), "the model refused the failure report"
        last = events[-1]
        assert isinstance(last, JobFailed)
        if text_field == "error":
            assert "\ufffd" in last.error
        else:
            assert last.error.startswith("the result was refused: result_json contains lone")
        assert not any(0xD800 <= ord(char) <= 0xDFFF for char in last.error)
        assert decode_event(encode_event(last)) == last
        return
    with pytest.raises(Rejected) as refused:
        state = initial_state()
        for command in commands:
            for event in decide(state, command):
                assert decode_event(encode_event(event)) == event
                state = evolve(state, event)
    assert refused.value.rejection.rule == f"{text_field}_invalid"
    assert "surrogate" in refused.value.rejection.detail


def _valid_encoding() -> bytes:
    return encode_event(QueuePaused(lsn=1, at_ms=0, queue="q"))


@pytest.mark.parametrize("tag", ["JobExploded", "jobenqueued", "JobSpec", "Checkpoint", ""])
def test_an_unknown_tag_is_refused_naming_it(tag):
    """Goal: an event tag this schema does not know is refused, and the error names it.

    Method: re-encode a valid event map with the tag replaced (a misspelling, a
    class that is not an event, an empty tag); ``decode_event`` must raise
    CodecError whose message contains the tag.
    """
    raw = msgpack.unpackb(_valid_encoding())
    raw[EVENT_TAG] = tag
    with pytest.raises(CodecError, match=f"'{tag}'"):
        decode_event(msgpack.packb(raw))


def test_a_missing_tag_or_field_is_refused():
    """Goal: a map without its tag, or missing a field, is refused.

    Method: delete the tag, then (separately) the field ``queue``; both must raise
    CodecError naming what is missing.
    """
    raw = msgpack.unpackb(_valid_encoding())
    without_tag = {key: value for key, value in raw.items() if key != EVENT_TAG}
    with pytest.raises(CodecError, match=EVENT_TAG):
        decode_event(msgpack.packb(without_tag))
    without_field = {key: value for key, value in raw.items() if key != "queue"}
    with pytest.raises(CodecError, match="queue"):
        decode_event(msgpack.packb(without_field))


@given(st.binary(max_size=64))
@example(b"")
@example(b"\xc1")  # the one byte MessagePack never uses
@example(msgpack.packb(None))
@example(msgpack.packb(7))
@example(msgpack.packb([1, 2, 3]))
@example(msgpack.packb("QueuePaused"))
@example(msgpack.packb({}))
@example(msgpack.packb({EVENT_TAG: ["QueuePaused"]}))  # an unhashable tag
@example(msgpack.packb(msgpack.ExtType(5, b"x")))
def test_garbage_bytes_are_refused(data):
    """Goal: bytes that are not an encoded event raise CodecError (never another
    exception, never an event).

    Method: arbitrary short byte strings, plus hand-picked MessagePack values of the
    wrong shape (nil, an integer, a list, a bare tag, an empty map, a list as tag,
    an extension type).
    """
    with pytest.raises(CodecError):
        decode_event(data)


@given(EVENTS)
def test_cut_or_extended_encodings_are_refused(event):
    """Goal: an encoding cut short at any byte, or with bytes after it, is refused.

    Method: every strict prefix of a valid encoding and the encoding plus one byte
    must raise CodecError.
    """
    data = encode_event(event)
    for end in range(len(data)):
        with pytest.raises(CodecError):
            decode_event(data[:end])
    with pytest.raises(CodecError):
        decode_event(data + b"\x00")


# -- Checkpoints. ---------------------------------------------------------------------


@given(histories())
def test_checkpoints_of_reachable_states_round_trip(history):
    """Goal: for every reachable state s, restore(decode(encode(checkpoint_of(s)))) == s.

    Method: for every state along a random history (so delayed, in-flight,
    finished and forgotten jobs, stale timers and paused queues all occur), encode
    the checkpoint, decode it, compare the checkpoints, then restore and compare
    the states.  The codec builds jobs by filling instance dicts, bypassing the
    constructors, so each decoded job, spec and attempt record is also compared
    with the constructor-built original as a raw dict (equality of attrs records
    compares declared fields only, and would miss a stray or missing key).
    """
    _events, states = history
    for state in states:
        checkpoint = checkpoint_of(state)
        decoded = decode_checkpoint(encode_checkpoint(checkpoint))
        assert decoded == checkpoint
        for job, original in zip(decoded.jobs, checkpoint.jobs, strict=True):
            assert type(job) is type(original) and vars(job) == vars(original)
            assert vars(job.spec) == vars(original.spec)
            assert [vars(record) for record in job.history] == [
                vars(record) for record in original.history
            ]
            assert type(job.status) is type(original.status)
        assert restore(decoded) == state


def test_checkpoint_of_the_workload_round_trips_with_every_part_present():
    """Goal: the round trip holds on a hand-picked state with every part populated.

    Method: run the workload; check that the final state has jobs in the ready
    FIFOs, finished jobs, a paused queue, and that the state after the cancel of
    the delayed job holds a stale timer; round-trip both.
    """
    events, states = run_workload()
    final = states[-1]
    assert final.ready and len(final.finished) and final.paused
    cancelled_delayed = next(
        index for index, event in enumerate(events) if type(event).__name__ == "JobCancelled"
    )
    with_stale_timer = states[cancelled_delayed + 1]
    assert checkpoint_of(with_stale_timer).timers, "the cancelled job's timer is gone"
    for state in (final, with_stale_timer):
        decoded = decode_checkpoint(encode_checkpoint(checkpoint_of(state)))
        assert restore(decoded) == state


def run_workload():
    return run(WORKLOAD_COMMANDS)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\xc1", id="never-used-byte"),
        pytest.param(msgpack.packb({"last_lsn": 1}), id="fields-missing"),
        pytest.param(msgpack.packb([1, 2]), id="a-list"),
        pytest.param(None, id="an-event"),
        pytest.param("row", id="a-job-row-too-short"),
        pytest.param("status", id="an-unknown-status"),
    ],
)
def test_garbage_checkpoints_are_refused(data):
    """Goal: bytes that are not a checkpoint of this schema raise CodecError.

    Method: hand-picked garbage, an encoded event, and a valid checkpoint whose
    first job row is cut short or carries a status name that does not exist.
    """
    if data is None:
        data = _valid_encoding()
    elif data in ("row", "status"):
        _events, states = run_workload()
        raw = msgpack.unpackb(encode_checkpoint(checkpoint_of(states[-1])))
        row = raw["jobs"][0]
        if data == "row":
            raw["jobs"][0] = row[:-1]
        else:
            status_index = len(attrs.fields(JobSpec))
            row[status_index] = "exploded"
        data = msgpack.packb(raw)
    with pytest.raises(CodecError):
        decode_checkpoint(data)
