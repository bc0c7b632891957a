"""Smoke test of benchmarks/bench_runtime.py: it runs, every job completes, the goals are
judged by the numbers.  Not a performance test: the figures themselves are not checked."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_runtime.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_runtime", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_runtime"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_quick_run_completes_every_job(tmp_path: Path) -> None:
    """Goal: the beaverq part runs end to end with a tiny N, without matplotlib.

    Method: run the script with ``--quick`` (no ``--write``, no chart) on beaverq alone,
    in a temp dir; every measurement line must say N/N jobs completed, and the table
    must show a positive jobs/s for every row and worker count."""
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--quick",
            "--systems",
            "beaverq",
            "--workers",
            "1,2",
            "--jobs",
            "60",
            "--concurrent-jobs",
            "30",
            "--producers",
            "2",
            "--recovery-runs",
            "1",
            "--dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    done = re.findall(r"(\d+)/(\d+) jobs completed", proc.stderr)
    assert len(done) == 6, proc.stderr  # 3 beaverq rows x 2 worker counts
    assert all(completed == total for completed, total in done), proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| beaverq")]
    assert len(rows) == 3, proc.stdout
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        rates = [float(cell.replace(",", "")) for cell in cells[3:]]
        assert len(rates) == 2 and all(rate > 0 for rate in rates), row
    assert "recovery" in proc.stderr.lower()
    assert not list(tmp_path.iterdir()), "the data directory was left behind"


def test_goals_are_judged_by_the_numbers() -> None:
    """Goal: the doc never claims a goal met that the figures do not show."""
    bench = _load()
    report = bench.Report()
    report.measurements = [
        bench.Measurement("beaverq", "backlog", 1, 1_000, 1.0, 1_000),  # 1,000/s
        bench.Measurement("beaverq", "backlog", 2, 1_000, 0.01, 1_000),  # 100,000/s
        bench.Measurement("huey", "backlog", 1, 100, 1.0, 100),  # 100/s
        bench.Measurement("huey", "backlog", 2, 100, 0.5, 100),  # 200/s
    ]
    lines = "\n".join(bench.goals_of(report))
    assert "200 jobs/s (original design): **met**" in lines
    assert "(our goal): **met**" in lines
    assert "best peer, same shape and worker count, every pairing: **met**" in lines
    report.measurements[1] = bench.Measurement("beaverq", "backlog", 2, 1_000, 1.0, 1_000)
    lines = "\n".join(bench.goals_of(report))
    assert "(our goal): **missed**" in lines
    assert "every pairing: **missed**" in lines  # 1,000/s is 5x huey's 200/s
    report.measurements[0] = bench.Measurement("beaverq", "backlog", 1, 100, 1.0, 100)
    assert "(original design): **missed**" in "\n".join(bench.goals_of(report))
