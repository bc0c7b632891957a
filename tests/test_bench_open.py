"""Smoke test of benchmarks/bench_open.py: every command runs on every size and the goal
is judged by the numbers.  Not a performance test: the figures themselves are not checked.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_open.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_open", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_open"] = module  # attrs looks the module up
    spec.loader.exec_module(module)
    return module


def test_every_command_is_measured_on_every_size() -> None:
    """Goal: the benchmark measures what it says (a command that failed would stop it).

    Method: run it on an empty directory and one of 50 jobs, once each; every command
    has a row per size, with positive wall and CPU times."""
    bench = _load()
    results = bench.measure([0, 50], repeat=1)
    assert {(m.size, m.command) for m in results} == {
        (size, " ".join(command)) for size in (0, 50) for command in bench.COMMANDS
    }
    assert all(m.wall_s > 0 and m.cpu_s > 0 for m in results)


def test_the_table_judges_the_goal_by_the_extra_time_over_empty() -> None:
    bench = _load()
    measured = [
        bench.Measurement(0, "status", 0.20, 0.2),
        bench.Measurement(100_000, "status", 0.29, 0.3),
        bench.Measurement(1_000_000, "status", 0.60, 0.6),
    ]
    rows = bench.table(measured).splitlines()
    assert rows[3].endswith("| +0.090 | met |")
    assert rows[4].endswith("| +0.400 | missed (<= 0.3 s) |")
