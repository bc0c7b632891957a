"""``beaverq run --import``: a module in the current directory, or a file by its path.

Goal: ``--import tasks`` with ``tasks.py`` in the current directory works without
``PYTHONPATH=.`` (``python -m`` looks there first, and a user expects the same), in a
thread pool and in a process pool (whose workers never have the current directory on
their path: worker_isolation.py finds the named module where the runner found it);
``--import ./jobs/tasks.py`` names a file; a missing one is refused in one line
naming where it was looked for; the runner's path is left as it was.

Method: real ``beaverq`` processes in a temporary directory holding the module.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from beaverq.impl.runtime.handler_modules import import_named

TASKS = """
from beaverq.impl.runtime.handlers import handler

@handler("double")
def double(args, context):
    return {"doubled": args["n"] * 2}
"""


def _cli(cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "beaverq.impl.frontends.cli", "--data-dir", "data", *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("where", "named", "pool"),
    [
        ("tasks.py", "tasks", "threads"),
        ("tasks.py", "tasks", "processes"),
        ("jobs/tasks.py", "./jobs/tasks.py", "threads"),
        ("jobs/tasks.py", "./jobs/tasks.py", "processes"),
    ],
)
def test_a_handler_module_is_found_where_the_user_is(
    tmp_path: Path, where: str, named: str, pool: str
) -> None:
    (tmp_path / where).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / where).write_text(TASKS)
    job = _cli(tmp_path, "enqueue", "double", '{"n": 21}')
    assert job.returncode == 0, job.stderr
    ran = _cli(tmp_path, "run", "--import", named, "--pool", pool, "--until-idle")
    assert ran.returncode == 0, ran.stderr
    shown = _cli(tmp_path, "show", job.stdout.strip())
    assert "status: completed" in shown.stdout and '{"doubled":42}' in shown.stdout, shown.stdout


def test_a_missing_module_is_refused_naming_where_it_was_looked_for(tmp_path: Path) -> None:
    ran = _cli(tmp_path, "run", "--import", "nowhere_to_be_found", "--until-idle")
    assert ran.returncode == 1
    assert "no module named 'nowhere_to_be_found' on the path or in the current directory" in (
        ran.stderr
    )
    assert "Traceback" not in ran.stderr
    missing_file = _cli(tmp_path, "run", "--import", "./nope.py", "--until-idle")
    assert missing_file.returncode == 1 and "no such file: ./nope.py" in missing_file.stderr


def test_the_current_directory_is_not_left_on_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "cwd_module_for_test.py").write_text("VALUE = 7\n")
    monkeypatch.chdir(tmp_path)
    before = list(sys.path)
    try:
        name, module = import_named("cwd_module_for_test")
        assert (name, module.VALUE) == ("cwd_module_for_test", 7)
        assert sys.path == before
    finally:
        sys.modules.pop("cwd_module_for_test", None)
