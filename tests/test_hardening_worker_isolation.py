"""Process workers import nothing from the runner's working directory (issue 11).

``--pool processes`` used to start ``python -m ...``, which puts the current directory
first on ``sys.path``: a ``json.py`` planted where the runner was started ran in every
worker, as the runner's user.  Workers now start isolated
(impl/runtime/worker_isolation.py): ``python -I``, the runner's path without its
working directory, and the ``--import`` modules found where the runner found them.

Through real ``beaverq`` processes, started by the console script (which, unlike
``python -m``, does not put the working directory on the runner's own path).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

WAIT_S = 60.0
BEAVERQ = os.path.join(os.path.dirname(sys.executable), "beaverq")

PLANTED = """\
import pathlib
pathlib.Path({marker!r}).write_text("the planted json.py ran")
raise ImportError("planted")
"""

TASKS = """\
import importlib.util, os, sys
from beaverq.impl.runtime.handlers import handler

@handler("where")
def where(args, context):
    return {
        "path": sys.path,
        "pid": os.getpid(),
        "sibling": importlib.util.find_spec("sibling") is not None,
    }
"""


def beaverq(
    cwd: Path, data_dir: Path, *argv: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [BEAVERQ, "--data-dir", str(data_dir), *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )
    assert done.returncode == 0, (argv, done.stdout, done.stderr)
    return done


def test_a_module_planted_in_the_working_directory_never_runs(tmp_path: Path) -> None:
    """Goal: a ``json.py`` in the runner's working directory is not imported by the
    worker processes, and the job runs.  Method: the planted module writes a marker
    file (and then fails its import); a noop job run by ``beaverq run --pool processes
    --until-idle`` started in that directory; the job's state and the marker."""
    project = tmp_path / "project"
    project.mkdir()
    marker = tmp_path / "planted-ran"
    (project / "json.py").write_text(PLANTED.format(marker=str(marker)))
    data_dir = tmp_path / "data"

    job_id = beaverq(project, data_dir, "enqueue", "noop", "{}").stdout.strip()
    beaverq(project, data_dir, "run", "--pool", "processes", "--workers", "1", "--until-idle")
    detail = json.loads(beaverq(project, data_dir, "show", job_id, "--json").stdout)

    assert detail["status"] == "completed", detail
    assert not marker.exists()


def test_a_named_module_in_the_working_directory_still_runs(tmp_path: Path) -> None:
    """Goal: ``PYTHONPATH=. beaverq run --import tasks`` still works with the process
    pool: the module the user named is found where the runner found it (the working
    directory), while the worker's path holds no working directory and an unnamed
    sibling module there is not importable.  Method: a handler that reports its
    worker's ``sys.path``, its pid and whether ``sibling`` can be found; run by
    ``beaverq run --pool processes``; the job's result."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "tasks.py").write_text(TASKS)
    (project / "sibling.py").write_text("")
    data_dir = tmp_path / "data"
    env = dict(os.environ, PYTHONPATH=".")

    job_id = beaverq(project, data_dir, "enqueue", "where", "{}").stdout.strip()
    beaverq(
        project,
        data_dir,
        "run",
        *("--pool", "processes", "--workers", "1", "--until-idle", "--import", "tasks"),
        env=env,
    )
    detail = json.loads(beaverq(project, data_dir, "show", job_id, "--json").stdout)

    assert detail["status"] == "completed", detail
    result = json.loads(detail["result_json"])
    here = os.path.realpath(project)
    assert [p for p in result["path"] if p in ("", ".") or os.path.realpath(p) == here] == []
    assert result["sibling"] is False


NAMED = """\
from beaverq.impl.runtime.handlers import handler

@handler("which")
def which(args, context):
    return {{"module": {name!r}}}
"""


def test_a_named_module_is_the_runners_own_even_if_another_has_its_name(tmp_path: Path) -> None:
    """Goal: the worker runs the very module the runner imported for ``--import
    tasks``, even when another ``tasks`` lies on the path behind the working
    directory (the runner found ./tasks.py first; a worker, without the working
    directory on its path, used to find the other one and run its code).
    Method: ``PYTHONPATH=.:elsewhere``, a ``tasks.py`` in each with a handler that says
    which it is; ``beaverq run --pool processes --import tasks``; the job's result."""
    project = tmp_path / "project"
    elsewhere = tmp_path / "elsewhere"
    for folder in (project, elsewhere):
        folder.mkdir()
        (folder / "tasks.py").write_text(NAMED.format(name=folder.name))
    data_dir = tmp_path / "data"
    env = dict(os.environ, PYTHONPATH=f".{os.pathsep}{elsewhere}")

    job_id = beaverq(project, data_dir, "enqueue", "which", "{}").stdout.strip()
    beaverq(
        project,
        data_dir,
        "run",
        *("--pool", "processes", "--workers", "1", "--until-idle", "--import", "tasks"),
        env=env,
    )
    detail = json.loads(beaverq(project, data_dir, "show", job_id, "--json").stdout)

    assert detail["status"] == "completed", detail
    assert json.loads(detail["result_json"]) == {"module": "project"}
