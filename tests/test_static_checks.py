"""Run ruff and mypy as ordinary tests, so one pytest run covers the lint and type checks."""

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

# Folders that ruff checks, if they exist.
LINTED_DIRS = ("model", "impl", "spec", "teaching", "tests", "benchmarks", "tools", "docs")

# Subpackages of the `beaverq` namespace package, each backed by a root folder of the same name.
SUBPACKAGES = ("model", "spec", "impl", "teaching")


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
    """Run a command and fail the test with its output if it exits non-zero."""
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, (
        f"{' '.join(args)} exited {proc.returncode}\n"
        f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    )


def test_ruff_is_clean() -> None:
    """Goal: the code has no lint errors.

    Method: run ``ruff check`` with the settings in pyproject.toml over each linted folder.
    """
    dirs = [d for d in LINTED_DIRS if (REPO_ROOT / d).is_dir()]
    _run([sys.executable, "-m", "ruff", "check", "--no-cache", *dirs], cwd=REPO_ROOT)


def test_mypy_strict_on_every_package(tmp_path: Path) -> None:
    """Goal: ``beaverq.model``, ``beaverq.spec``, the shell ``beaverq.impl`` and the
    teaching tools ``beaverq.teaching`` pass ``mypy --strict``.

    Method: mypy cannot follow the import hook of a setuptools editable install, so this
    test builds ``tmp/beaverq/{model,spec,impl,teaching}`` as symlinks to the repo folders.
    It then runs mypy on the packages with MYPYPATH pointing at ``tmp``, using the config in
    pyproject.toml.
    """
    namespace = tmp_path / "beaverq"
    namespace.mkdir()
    for name in SUBPACKAGES:
        (namespace / name).symlink_to(REPO_ROOT / name, target_is_directory=True)
    env = {**os.environ, "MYPYPATH": str(tmp_path)}
    _run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--config-file",
            str(REPO_ROOT / "pyproject.toml"),
            "--cache-dir",
            str(tmp_path / ".mypy_cache"),
            "-p",
            "beaverq.model",
            "-p",
            "beaverq.spec",
            "-p",
            "beaverq.impl",
            "-p",
            "beaverq.teaching",
        ],
        cwd=tmp_path,
        env=env,
    )
