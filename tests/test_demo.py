"""``beaverq demo``: the whole story (enqueue, run, SIGKILL, restart, accounting) passes
on a small job count, and says so in its accounting lines."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from beaverq.teaching.demo import job_mix, run_demo

ACCOUNTING = (
    "accounting: enqueued and acknowledged 200; in the log 200; lost 0",
    "accounting: finished 200/200:",
    "more than once for 0",
    "history properties (spec/history.py",
    "replaying the whole WAL from LSN 1 gives the runner's final state",
    "summary: PASS",
)


def test_demo_passes_with_beaverq_run(tmp_path, capsys):
    data_dir = tmp_path / "data"
    argv = ["--jobs", "200", "--workers", "8", "--data-dir", str(data_dir)]
    status = run_demo([*argv, "--timeout", "60"])
    out = capsys.readouterr().out
    assert status == 0, out
    for expected in ACCOUNTING:
        assert expected in out, (expected, out)
    assert "[2/5] run: runner pid" in out and "beaverq run" in out
    assert "[3/5] crash: SIGKILL" in out
    assert "recovered in" in out


def test_demo_refuses_a_used_data_dir(tmp_path, capsys):
    (tmp_path / "something").write_text("x")
    assert run_demo(["--jobs", "10", "--data-dir", str(tmp_path)]) == 1
    assert "not empty" in capsys.readouterr().err
    assert os.listdir(tmp_path) == ["something"]  # nothing written


def test_demo_rejects_bad_options():
    with pytest.raises(SystemExit) as exit_info:
        run_demo(["--jobs", "2"])
    assert exit_info.value.code == 2


def test_the_mix_has_every_kind_and_the_right_count():
    mix = job_mix(200, seed=3)
    assert len(mix) == 200
    assert {kind for kind, _request in mix} == {"noop", "sleep", "flaky", "fail", "timeout"}
    assert job_mix(200, seed=3) == mix  # one seed, one mix


@pytest.mark.skipif(
    shutil.which("etcd") is None,
    reason="etcd is not on PATH: install it with 'apt-get install etcd-server'",
)
def test_cluster_demo_passes_through_the_cli(tmp_path):
    """``beaverq demo --cluster``: 3 etcd members, 3 nodes, the leader node and the etcd
    leader SIGKILLed; the accounting from every member's log holds (about 30 s)."""
    argv = [sys.executable, "-m", "beaverq.impl.frontends.cli", "demo", "--cluster"]
    done = subprocess.run(
        [*argv, "--jobs", "600", "--dir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for expected in (
        "identical yes",
        "gapless yes",
        "acknowledged 600; in the log 600; lost 0; enqueued twice 0",
        "completed twice: 0; event times going backwards: 0",
        "finished 600/600",
        "every check holds",
    ):
        assert expected in done.stdout, (expected, done.stdout)
    assert "took over: jobs flowing again" in done.stdout
