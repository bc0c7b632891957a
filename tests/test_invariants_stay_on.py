"""Invariants that stay on: ``python -O`` does not switch off a check that guards data.

Goal: a broken invariant is a loud failure in every mode of the interpreter
(model/errors.py).  ``python -O`` strips ``assert`` statements; before this rule, an
event at LSN 5 applied to a state at LSN 0 was refused normally and silently
applied under ``-O``.

Method, three ways:

* this file's checks run under ``-O`` themselves: ``python -O -m pytest
  tests/test_invariants_stay_on.py`` passes and shows the refusal (the checks use
  ``pytest.raises`` and ``pytest.fail``, never a bare ``assert``, so ``-O`` cannot
  hollow them out);
* the default suite runs that command in a subprocess and requires it to pass with
  the interpreter really optimised;
* a static scan: no ``assert`` statement is left in ``model/``, ``spec/``,
  ``impl/`` or ``teaching/``, so no check there depends on the mode.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

from beaverq.model import BrokenInvariant, Enqueue, decide, evolve, initial_state
from beaverq.model.checkpoint import checkpoint_of, restore

ROOT = Path(__file__).resolve().parent.parent
EXPECT_OPTIMIZED = "BEAVERQ_EXPECT_OPTIMIZED"
CHECKED_FOLDERS = ("model", "spec", "impl", "teaching")


def _enqueued_at(lsn: int):
    (event,) = decide(initial_state(), Enqueue(now_ms=0, handler="h", job_id="a"))
    return type(event)(
        lsn=lsn,
        at_ms=event.at_ms,
        spec=event.spec,
        ready_at_ms=event.ready_at_ms,
        target=event.target,
    )


def test_an_event_after_a_gap_in_the_log_is_refused() -> None:
    """The measured case: LSN 5 applied to a state at LSN 0."""
    with pytest.raises(BrokenInvariant, match="log gap: state is at LSN 0, next event has LSN 5"):
        evolve(initial_state(), _enqueued_at(5))
    print("refused under optimize level", sys.flags.optimize, ": log gap at LSN 5")


def test_a_checkpoint_whose_counts_disagree_is_refused() -> None:
    """The read side of the pair of checks across the snapshot boundary."""
    checkpoint = checkpoint_of(evolve(initial_state(), _enqueued_at(1)))
    # One job in the checkpoint, but the counts of an empty state.
    damaged = attrs.evolve(checkpoint, counts=checkpoint_of(initial_state()).counts)
    with pytest.raises(BrokenInvariant, match="counts"):
        restore(damaged)


def test_the_interpreter_is_optimized_when_the_caller_says_so() -> None:
    """Under the subprocess below, prove that ``-O`` really was in effect."""
    if os.environ.get(EXPECT_OPTIMIZED) != "1":
        pytest.skip(f"only meaningful with {EXPECT_OPTIMIZED}=1 (set by the test below)")
    if __debug__ or sys.flags.optimize < 1:
        pytest.fail("expected to run under python -O, but assert statements are live")


def test_these_checks_pass_under_python_O() -> None:
    if os.environ.get(EXPECT_OPTIMIZED) == "1":
        pytest.skip("already the optimised run")
    completed = subprocess.run(
        [sys.executable, "-O", "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", __file__],
        cwd=ROOT,
        env={**os.environ, EXPECT_OPTIMIZED: "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = completed.stdout + completed.stderr
    if completed.returncode != 0:
        pytest.fail(f"python -O run failed:\n{output}")
    if "refused under optimize level 1" not in output or "1 skipped" not in output:
        pytest.fail(f"python -O run did not show the refusal:\n{output}")


def _assert_statements(folder: str) -> list[str]:
    found = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        found.extend(
            f"{path.relative_to(ROOT)}:{node.lineno}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Assert)
        )
    return found


@pytest.mark.parametrize("folder", CHECKED_FOLDERS)
def test_no_check_in_the_code_is_an_assert_statement(folder: str) -> None:
    found = _assert_statements(folder)
    if found:
        pytest.fail(
            "assert statements vanish under python -O; raise BrokenInvariant instead "
            f"(model/errors.py): {', '.join(found)}"
        )
