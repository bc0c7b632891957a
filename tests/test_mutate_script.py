"""``tools/mutate.py`` still fits the source, so its table cannot rot silently.

The mutation run itself takes minutes and is not part of CI.  What can break without
anyone noticing is cheaper to check: a refactoring of ``impl/`` or ``model/`` that moves
or rewrites a line a mutation replaces.  The script would then refuse to run (each
"before" text must occur exactly once), but only when someone runs it.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_script():
    spec = importlib.util.spec_from_file_location(
        "beaverq_tools_mutate", ROOT / "tools" / "mutate.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


mutate = _load_script()


def test_every_mutation_still_applies_to_the_source():
    """Goal: each mutation's "before" text occurs exactly once in the current source,
    the mutant compiles, and its test files exist.

    Method: the script's own check, run against this checkout.
    """
    assert mutate.check_patches(ROOT) == []


def test_the_issue_list_is_covered():
    """Goal: the issue's seven mistakes are all in the table, each with at least one
    test file, and every mutation changes something.

    Method: the keys 1 to 7 (with or without a variant letter) are present.
    """
    keys = {mutation.key.rstrip("abcdefgh") for mutation in mutate.MUTATIONS}
    assert {str(number) for number in range(1, 8)} <= keys
    for mutation in mutate.MUTATIONS:
        assert mutation.tests, mutation.key
        assert mutation.edits, mutation.key
        assert all(edit.old != edit.new for edit in mutation.edits), mutation.key


def test_a_patch_that_does_not_fit_is_refused(tmp_path):
    """Goal: apply_edits refuses a "before" text found twice or not at all, so a
    mutation never lands in the wrong place.

    Method: a file holding a line twice, and one lacking it.
    """
    (tmp_path / "twice.py").write_text("x = 1\nx = 1\n")
    (tmp_path / "never.py").write_text("y = 2\n")
    for name in ("twice.py", "never.py"):
        edit = mutate.Edit(name, "x = 1\n", "x = 2\n")
        with pytest.raises(mutate.PatchError, match="not once"):
            mutate.apply_edits(tmp_path, (edit,))
    assert (tmp_path / "twice.py").read_text() == "x = 1\nx = 1\n"
