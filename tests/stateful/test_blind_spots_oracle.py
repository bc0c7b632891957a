"""Blind spot 1 of issue 15: the model against the oracle, on every field, over long lives.

Goal: the retry delay after a requeue or a release, and every other recorded time, is
the one docs/semantics.md gives, however many leases a job has had.  The mutation run
of issue 15 found that the model-vs-oracle comparison looked at each event's type and
job id only, and that no job was ever leased more than a few times: a backoff computed
from the fence (``attempt``) instead of ``attempts_used``, or one that goes wrong past
``ATTEMPTS_MAX`` leases, went unseen.

Method: the comparison itself now takes every field of every event and a summary of the
state that holds every job field the rules read (tests/stateful/test_model_vs_oracle.py);
here,

- a static check that the summary is complete: every attribute of a job that the rules
  (``model/decide.py``, ``model/recovery.py``, ``model/state.py``, ``model/nodes.py``)
  read, properties such as ``lease_worker_id`` included, is in it, so two
  states with the same summary get the same decisions;
- a property test of one job's long life (up to 250 leases: releases, failures, expiries,
  abandonments, requeues in any order, any backoff base and cap, any jitter seed), run
  through the model and the oracle side by side with ``replay_both``, which compares
  every event field and the state after every command.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import attrs
from hypothesis import example, given
from hypothesis import strategies as st
from test_model_vs_oracle import SUMMARY_JOB_FIELDS, replay_both, run_model

from beaverq.model import (
    Command,
    Complete,
    Enqueue,
    Fail,
    Job,
    JobStatus,
    Lease,
    Recover,
    Release,
    Requeue,
    Tick,
    initial_state,
    limits,
)

MODEL = Path(__file__).resolve().parents[2] / "model"
#: The files whose code decides: the rules, recovery, and the state's own queries.
RULE_FILES = ("decide.py", "recovery.py", "state.py", "nodes.py")
#: Names the rules bind a job to (``job.status``, ``oldest.finished_at_ms``, ...).
JOB_NAMES = r"(?:job|best|oldest|new|existing|found|current)"


def test_the_summary_holds_every_job_field_the_rules_read() -> None:
    """If a rule starts reading a job field the summary leaves out, the differential
    test could no longer see a disagreement in it: this fails first, naming the field."""
    # A property is read like a field (job_id, lease_worker_id), so it counts as one.
    properties = {name for name, value in vars(Job).items() if isinstance(value, property)}
    job_fields = {field.name for field in attrs.fields(Job)} | properties
    read: set[str] = set()
    for name in RULE_FILES:
        text = (MODEL / name).read_text()
        read |= set(re.findall(rf"\b{JOB_NAMES}\.(\w+)", text)) & job_fields
    # job_id is spec.job_id (a property); last_lsn is the state's, read as state.last_lsn.
    assert read, "the scan found no job field at all: the pattern is stale"
    missing = read - SUMMARY_JOB_FIELDS - {"job_id"}
    assert not missing, f"rules read job fields the summary leaves out: {sorted(missing)}"
    # The indexes a rule reads are views of those fields (spec/invariants.py checks
    # that they agree): ready and timers of status/ready_lsn/ready_at_ms, in_flight of
    # lease_expires_at_ms; the finished FIFO's order is compared as finished_order.


ENDINGS = ("release", "fail", "expire", "abandon", "refused_result")


@attrs.define
class _Life:
    """Builds one job's commands against the model's state, so each is meaningful."""

    state: Any = attrs.field(factory=initial_state)
    now: int = 0
    commands: list[Command] = attrs.field(factory=list)

    def run(self, command: Command) -> None:
        self.commands.append(command)
        self.state, _outcome = run_model(self.state, command)

    def job(self) -> Job:
        job: Job = self.state.jobs["x"]
        return job

    def lease(self) -> None:
        """Bring the job to IN_FLIGHT, from wherever it is."""
        job = self.job()
        if job.status is JobStatus.DEAD:
            self.run(Requeue(now_ms=self.now, job_id="x"))
        elif job.status is JobStatus.DELAYED:
            self.now = job.ready_at_ms
            self.run(Tick(now_ms=self.now))
        assert self.job().status is JobStatus.PENDING, self.job()
        self.run(Lease(now_ms=self.now, worker_id="w"))
        assert self.job().status is JobStatus.IN_FLIGHT


@given(
    max_attempts=st.integers(1, limits.ATTEMPTS_MAX),
    base=st.sampled_from([0, 1, 7, 100, 1_000]),
    cap_extra=st.sampled_from([0, 1, 999, limits.BACKOFF_CAP_MS_MAX]),
    # How each lease ends, repeated in a cycle: past ATTEMPTS_MAX leases half the time.
    cycle=st.lists(st.sampled_from(ENDINGS), min_size=1, max_size=6),
    leases=st.one_of(st.integers(1, 12), st.integers(limits.ATTEMPTS_MAX, 250)),
    seeds=st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=8),
)
# The shortest life where the fence and the attempts used differ at a failure: a release,
# then a failure whose backoff window is base * 2**(attempts_used - 1), capped.
@example(max_attempts=3, base=100, cap_extra=999, cycle=["release", "fail"], leases=2, seeds=[5])
def test_a_long_life_of_releases_requeues_and_retries_agrees_field_by_field(
    max_attempts: int, base: int, cap_extra: int, cycle: list[str], leases: int, seeds: list[int]
) -> None:
    cap = min(base + cap_extra, limits.BACKOFF_CAP_MS_MAX)
    endings = [cycle[index % len(cycle)] for index in range(leases)]
    life = _Life()
    life.run(
        Enqueue(
            now_ms=0,
            handler="h",
            job_id="x",
            max_attempts=max_attempts,
            timeout_ms=10,
            backoff_base_ms=base,
            backoff_cap_ms=cap,
        )
    )
    for index, ending in enumerate(endings):
        life.lease()
        attempt = life.job().attempt
        life.now += 1
        seed = seeds[index % len(seeds)]
        if ending == "release":
            life.run(Release(now_ms=life.now, job_id="x", attempt=attempt))
        elif ending == "fail":
            life.run(
                Fail(now_ms=life.now, job_id="x", attempt=attempt, error="e", jitter_seed=seed)
            )
        elif ending == "refused_result":
            life.run(
                Complete(
                    now_ms=life.now, job_id="x", attempt=attempt, result_json="{", jitter_seed=seed
                )
            )
        elif ending == "expire":
            life.now += 10
            life.run(Tick(now_ms=life.now))
        else:
            life.run(Recover(now_ms=life.now))
        assert life.job().status is not JobStatus.IN_FLIGHT
    assert life.job().attempt == len(endings)  # the fence counted every lease
    # Both sides, every event field and the state after every command.
    replay_both(life.commands)
