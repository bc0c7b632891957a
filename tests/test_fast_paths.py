"""The model's hot-path shortcuts agree with the plain code they replace.

Goal: ``replace_fields`` (model/records.py) and ``Counts.moved`` exist only for speed;
each must give exactly what the obvious code gives.  Method: Hypothesis draws field
changes for each record class and compares the shortcut with ``attrs.evolve`` and
with a recount from scratch.
"""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from beaverq.model import Complete, Enqueue, Lease, decide, evolve, initial_state
from beaverq.model.errors import BrokenInvariant
from beaverq.model.jobs import AttemptRecord, Job
from beaverq.model.lifecycle import JobStatus
from beaverq.model.records import replace_fields
from beaverq.model.state import Counts
from beaverq.model.validation import _has_space_or_control, has_space_or_control_plain


def _sample_job() -> Job:
    state = initial_state()
    for command in (
        Enqueue(now_ms=0, handler="noop", job_id="a"),
        Lease(now_ms=1, worker_id="w"),
        Complete(now_ms=2, job_id="a", attempt=1),
    ):
        for event in decide(state, command):
            state = evolve(state, event)
    return state.jobs["a"]


JOB = _sample_job()
job_changes = st.fixed_dictionaries(
    {},
    optional={
        "status": st.sampled_from(list(JobStatus)),
        "slot": st.integers(-1, 10),
        "last_lsn": st.integers(0, 100),
        "attempt": st.integers(0, 5),
        "error": st.none() | st.text(max_size=5),
        "history": st.just(()),
    },
)


@given(job_changes)
def test_replace_fields_equals_attrs_evolve_for_jobs(changes: dict[str, object]) -> None:
    fast = replace_fields(JOB, **changes)
    assert fast == attrs.evolve(JOB, **changes)
    assert type(fast) is Job
    # The original is untouched: the copy shares no mutable state with it.
    assert _sample_job() == JOB


@given(st.integers(0, 9), st.integers(0, 9))
def test_replace_fields_equals_attrs_evolve_for_counts(pending: int, dead: int) -> None:
    counts = Counts(1, 2, 3, 4, 5, 6)
    assert replace_fields(counts, pending=pending, dead=dead) == attrs.evolve(
        counts, pending=pending, dead=dead
    )


def test_replace_fields_refuses_unknown_fields_and_slotted_classes() -> None:
    with pytest.raises(BrokenInvariant, match="not fields of Job"):
        replace_fields(JOB, colour="blue")

    @attrs.frozen
    class Slotted:
        value: int

    with pytest.raises(BrokenInvariant, match="dict-backed"):
        replace_fields(Slotted(1), value=2)
    record = AttemptRecord(attempt=1, worker_id="w", leased_at_ms=0, expires_at_ms=1)
    assert replace_fields(record, outcome="failed") == attrs.evolve(record, outcome="failed")


statuses = st.sampled_from(list(JobStatus))


@given(st.lists(st.integers(0, 50), min_size=6, max_size=6), statuses, statuses)
def test_counts_moved_equals_a_recount(
    values: list[int], source: JobStatus, target: JobStatus
) -> None:
    if source is target:
        return
    counts = Counts(*values)
    moved = counts.moved(source, target)
    for status in JobStatus:
        if status is JobStatus.ABSENT:
            continue
        expected = counts.of(status) - (status is source) + (status is target)
        assert moved.of(status) == expected, status


def test_the_token_check_shortcut_agrees_on_every_code_point() -> None:
    # Exhaustive, not sampled: the shortcut's argument is about Unicode categories,
    # so every character is checked, alone and after a printable one.
    for code_point in range(0x110000):
        character = chr(code_point)
        for text in (character, "a" + character):
            assert _has_space_or_control(text) == has_space_or_control_plain(text), hex(code_point)


@given(st.text())
def test_the_token_check_shortcut_agrees_on_any_text(text: str) -> None:
    assert _has_space_or_control(text) == has_space_or_control_plain(text)
