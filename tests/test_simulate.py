"""The deterministic simulation (teaching/simulate.py): reproducible, complete, self-checking."""

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beaverq.model import FINISHED, JobFailed, LeaseAbandoned, LeaseExpired, QueuePaused
from beaverq.teaching import simulate as simulate_module
from beaverq.teaching.fake_clock import FakeClock
from beaverq.teaching.simulate import SimulationFailed, simulate


def _console_script() -> str:
    """The installed ``beaverq`` script next to this interpreter (or on PATH)."""
    beside = Path(sys.executable).with_name("beaverq")
    found = str(beside) if beside.exists() else shutil.which("beaverq")
    assert found, "the beaverq console script is not installed"
    return found


def test_same_seed_gives_identical_output() -> None:
    """Goal: a run is a function of its arguments.  Method: run twice, compare the text."""
    assert simulate(7, 50).render() == simulate(7, 50).render()


def test_console_script_output_is_identical_across_runs_and_hash_seeds() -> None:
    """Goal: the printed output is byte-identical run to run, whatever the hash seed.

    Method: run ``beaverq simulate --seed 7 --jobs 50`` in two processes with
    different ``PYTHONHASHSEED`` values (which reorder dict and set iteration of
    str keys) and compare both outputs with each other and with the in-process run.
    """
    outputs = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        proc = subprocess.run(
            [_console_script(), "simulate", "--seed", "7", "--jobs", "50"],
            capture_output=True,
            check=False,
            env=env,
        )
        assert proc.returncode == 0, proc.stderr.decode()
        assert proc.stderr == b""
        outputs.append(proc.stdout)
    assert outputs[0] == outputs[1]
    assert outputs[0].decode() == simulate(7, 50).render()


def test_different_seeds_give_different_runs() -> None:
    outputs = {simulate(seed, 30).render() for seed in range(5)}
    assert len(outputs) == 5


@pytest.mark.parametrize("seed", [0, 7, 2**64 - 1])
def test_every_job_finishes(seed: int) -> None:
    report = simulate(seed, 80)
    jobs = report.final_state.jobs
    assert len(jobs) == 80
    unfinished = sorted(job_id for job_id, job in jobs.items() if job.status not in FINISHED)
    assert unfinished == []


def test_summary_adds_up() -> None:
    """Goal: the summary's numbers agree with each other and with the event log."""
    report = simulate(11, 200)
    summary, events = report.summary, report.events
    names = Counter(type(event).__name__ for event in events)
    assert summary.enqueued == names["JobEnqueued"] == 200
    assert summary.completed + summary.dead + summary.cancelled == summary.enqueued
    assert summary.leases == names["LeaseGranted"]
    assert summary.expiries == names["LeaseExpired"]
    assert summary.abandoned == names["LeaseAbandoned"]
    assert summary.final_lsn == len(events) == events[-1].lsn
    assert [event.lsn for event in events] == list(range(1, len(events) + 1))
    # Every lease ends exactly once: completed, failed, expired or abandoned.
    ended = (
        names["JobCompleted"] + names["JobFailed"] + names["LeaseExpired"] + names["LeaseAbandoned"]
    )
    assert summary.leases == ended
    unsuccessful = sum(isinstance(e, (JobFailed, LeaseExpired, LeaseAbandoned)) for e in events)
    assert summary.retried <= unsuccessful


def test_log_has_one_line_per_event_in_lsn_order() -> None:
    report = simulate(3, 60)
    numbered = [line for line in report.log if re.match(r"\[ *\d+\.\d{3}s\] #\d+ ", line)]
    notes = [line for line in report.log if re.match(r"\[ *\d+\.\d{3}s\] -- ", line)]
    assert len(numbered) + len(notes) == len(report.log)
    assert [int(line.split("#")[1].split()[0]) for line in numbered] == [
        event.lsn for event in report.events
    ]
    for line, event in zip(numbered, report.events, strict=True):
        assert f" {type(event).__name__} " in line


def test_lease_line_format() -> None:
    """The format promised in the docs: time, LSN, event, job, attempt, worker, expiry."""
    report = simulate(7, 20)
    leases = [line for line in report.log if " LeaseGranted " in line]
    assert leases
    time = r"\d+\.\d{3}s"
    pattern = rf"\[ *{time}\] #\d+ +LeaseGranted +j\d+ attempt=\d+ worker=w\d+ expires={time}"
    for line in leases:
        assert re.fullmatch(pattern, line), line


def test_a_longer_run_exercises_every_behaviour() -> None:
    """Goal: the scenario is not vacuous: each behaviour it claims to simulate happens."""
    report = simulate(7, 400)
    summary = report.summary
    for name in (
        "duplicates",
        "dead",
        "cancelled",
        "retried",
        "expiries",
        "abandoned",
        "crashes",
        "late_results",
        "cancels",
    ):
        assert getattr(summary, name) > 0, name
    assert any(isinstance(event, QueuePaused) for event in report.events)
    assert any(" ready_at=" in line for line in report.log), "no delayed job"


def test_quiet_render_is_the_summary_only() -> None:
    report = simulate(5, 20)
    quiet = report.render(quiet=True)
    assert quiet.endswith("\n")
    assert "#1 " not in quiet
    assert quiet == "\n".join([report.header(), "", *report.summary_lines()]) + "\n"
    assert report.render().endswith("\n".join(report.summary_lines()) + "\n")


def test_no_jobs_is_a_valid_empty_run() -> None:
    report = simulate(1, 0)
    assert report.summary.enqueued == 0
    assert report.summary.final_lsn == len(report.events)


def test_spec_invariants_are_checked() -> None:
    # spec/invariants.py exists, so the run must have used it.
    assert simulate(2, 30).summary.invariants == "hold"


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"seed": -1, "jobs": 1}, ValueError),
        ({"seed": 1, "jobs": -1}, ValueError),
        ({"seed": 1, "jobs": simulate_module.SIMULATION_JOBS_MAX + 1}, ValueError),
        ({"seed": 1, "jobs": 1, "workers": 0}, ValueError),
        ({"seed": 1, "jobs": 1.5}, TypeError),
        ({"seed": 1, "jobs": True}, TypeError),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        simulate(**kwargs)  # type: ignore[arg-type]


def test_exceeding_the_step_budget_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(simulate_module, "step_budget", lambda jobs: 3)
    with pytest.raises(SimulationFailed, match="step budget"):
        simulate(7, 20)


@settings(max_examples=max(10, settings.default.max_examples // 10))
@given(
    seed=st.integers(0, 2**64 - 1),
    jobs=st.integers(0, 40),
    workers=st.integers(1, 6),
)
def test_any_seed_terminates_with_invariants_holding(seed: int, jobs: int, workers: int) -> None:
    """Goal: for any seed, the run ends with every job finished and the invariants held.

    Method: ``check_every_step`` checks the spec invariants after every command; the
    run itself raises if the step budget is exceeded or the replay of its log differs.
    """
    report = simulate(seed, jobs, workers, check_every_step=True)
    summary = report.summary
    assert summary.completed + summary.dead + summary.cancelled == summary.enqueued == jobs
    assert summary.invariants == "hold"


def test_fake_clock_moves_only_forward() -> None:
    clock = FakeClock()
    assert clock.now_ms() == 0
    clock.advance(250)
    clock.advance_to(1_000)
    clock.advance_to(1_000)
    assert clock.now_ms() == 1_000
    with pytest.raises(ValueError):
        clock.advance_to(999)
    with pytest.raises(ValueError):
        clock.advance(-1)
    with pytest.raises(ValueError):
        FakeClock(-5)
