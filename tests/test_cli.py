"""The command line (impl/frontends/cli.py): help everywhere, one-line errors, the right
exit status."""

import subprocess
import sys

import pytest

from beaverq.impl.frontends import cli
from beaverq.teaching.simulate import SimulationFailed, simulate

# Every command line that shows help; each new command adds its own here.
PYTHON_M_CLI = [sys.executable, "-m", "beaverq.impl.frontends.cli"]
HELP_COMMANDS = [["--help"], ["-h"], ["simulate", "--help"], ["--data-dir", "d", "simulate", "-h"]]


@pytest.mark.parametrize("argv", HELP_COMMANDS)
def test_help_exits_zero(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("usage: beaverq")


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    """Goal: no command is left without --help (the table grows with later commands)."""
    for name in cli.COMMANDS:
        with pytest.raises(SystemExit) as exit_:
            cli.main([name, "--help"])
        assert exit_.value.code == 0
        assert f"usage: beaverq {name}" in capsys.readouterr().out


BAD_COMMAND_LINES = [
    [],
    ["bogus"],
    ["simulate"],
    ["simulate", "--seed", "7"],
    ["simulate", "--jobs", "5"],
    ["simulate", "--seed", "7", "--jobs", "-1"],
    ["simulate", "--seed", "7", "--jobs", "100001"],
    ["simulate", "--seed", "7", "--jobs", "many"],
    ["simulate", "--seed", "-1", "--jobs", "5"],
    ["simulate", "--seed", str(2**64), "--jobs", "5"],
    ["simulate", "--seed", "7", "--jobs", "5", "--workers", "0"],
    ["simulate", "--seed", "7", "--jobs", "5", "--workers", "1001"],
    ["simulate", "--seed", "7", "--jobs", "5", "--frobnicate"],
    ["--data-dir"],
]


@pytest.mark.parametrize("argv", BAD_COMMAND_LINES)
def test_bad_command_line_exits_2_with_one_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("beaverq") and ": error: " in lines[0]


def test_bad_jobs_message_names_the_option_and_bounds(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["simulate", "--seed", "7", "--jobs", "-3"])
    err = capsys.readouterr().err
    assert "--jobs" in err and "between 0 and 100000" in err and "-3" in err


def test_a_failed_run_exits_1_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def failing(seed: int, jobs: int, workers: int) -> None:
        raise SimulationFailed(f"seed {seed}: step budget exceeded")

    monkeypatch.setattr(cli, "simulate", failing)
    assert cli.main(["simulate", "--seed", "7", "--jobs", "5"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "beaverq: error: simulation failed: seed 7: step budget exceeded\n"


def test_simulate_prints_the_report(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["simulate", "--seed", "7", "--jobs", "25", "--workers", "3"]) == 0
    assert capsys.readouterr().out == simulate(7, 25, 3).render()


def test_quiet_prints_the_summary_only(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["simulate", "--seed", "7", "--jobs", "25", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out == simulate(7, 25).render(quiet=True)
    assert "LeaseGranted" not in out


@pytest.mark.parametrize(
    ("argv", "data_dir"),
    [
        (["simulate", "--seed", "1", "--jobs", "1"], None),
        (["--data-dir", "before", "simulate", "--seed", "1", "--jobs", "1"], "before"),
        (["simulate", "--seed", "1", "--jobs", "1", "--data-dir", "after"], "after"),
    ],
)
def test_data_dir_is_accepted_before_or_after_the_command(
    argv: list[str], data_dir: str | None
) -> None:
    assert cli.build_parser().parse_args(argv).data_dir == data_dir


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("beaverq ")


def test_runs_as_a_module() -> None:
    """``python -m beaverq.impl.frontends.cli`` is the same program as the console script."""
    proc = subprocess.run(
        [*PYTHON_M_CLI, "simulate", "--seed", "3", "--jobs", "5"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == simulate(3, 5).render()
    bad = subprocess.run(
        [*PYTHON_M_CLI, "simulate", "--seed", "3", "--jobs", "-5"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2
    assert len(bad.stderr.splitlines()) == 1


def test_help_names_the_data_directory_default_and_its_variable():
    """Every command's --help says where the queue lives when --data-dir is not given."""
    import subprocess
    import sys

    for argv in (["--help"], ["status", "--help"], ["enqueue", "--help"]):
        done = subprocess.run(
            [sys.executable, "-m", "beaverq.impl.frontends.cli", *argv],
            capture_output=True,
            text=True,
            timeout=60,
        )
        text = " ".join(done.stdout.split())
        assert done.returncode == 0
        assert "default $BEAVERQ_DATA_DIR, else ./beaverq-data" in text, (argv, text)


def test_the_package_says_what_it_is():
    from importlib import metadata

    meta = metadata.metadata("beaverq")
    assert "crash-safe job queue" in meta["Summary"]
    assert meta["Description"] and "beaverq" in meta["Description"]
