"""tools/hunt.py: rounds until a deadline, each round's seed and verdict logged."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def hunt(tmp_path: Path, *tests: str) -> tuple[int, str]:
    log = tmp_path / "hunt.log"
    done = subprocess.run(
        [sys.executable, "tools/hunt.py", "--hours", "0.0001", "--examples", "3",
         "--log", str(log), *tests],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    return done.returncode, log.read_text()


def test_a_passing_round_is_logged_with_its_seed(tmp_path: Path) -> None:
    code, log = hunt(tmp_path, "tests/test_dispatch_window.py")
    assert code == 0
    lines = log.splitlines()
    assert lines[0].startswith("hunt start")
    assert lines[1].startswith("round 1 seed ") and " passed " in lines[1]
    assert lines[-1].startswith("hunt end: 1 rounds passed")
    assert (tmp_path / "hunt.rounds" / "round-001.txt").read_text().count("passed") >= 1


def test_the_hunt_stops_at_a_failing_round(tmp_path: Path) -> None:
    failing = tmp_path / "test_always_fails.py"
    failing.write_text("def test_fails():\n    assert False\n")
    code, log = hunt(tmp_path, str(failing))
    assert code == 1
    assert " FAILED " in log.splitlines()[-1]
