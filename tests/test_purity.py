"""The pure core (``model/`` and ``spec/``) does no I/O and keeps no hidden state.

Two checks:

- a static one that reads every ``.py`` file under ``model/`` and ``spec/`` and rejects any
  ``import`` of a forbidden module;
- a run-time one that imports every module of ``beaverq.model`` and ``beaverq.spec`` in a fresh
  interpreter and rejects any forbidden module that the import newly loads, directly or through
  another module.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

# Modules that the pure core may not import. Each one brings in something that makes a result
# depend on more than the arguments: the file system or process (os, io, sys, pathlib, shutil,
# tempfile, subprocess, signal), the clock (time, datetime), randomness (random, uuid, secrets),
# concurrency (threading, multiprocessing, asyncio), the network (socket), or output (logging).
# cattrs is serialisation, which belongs to beaverq.impl.
FORBIDDEN_MODULES = frozenset(
    {
        "os",
        "io",
        "sys",
        "time",
        "datetime",
        "random",
        "uuid",
        "threading",
        "multiprocessing",
        "subprocess",
        "socket",
        "logging",
        "pathlib",
        "shutil",
        "tempfile",
        "signal",
        "asyncio",
        "secrets",
        "cattrs",
    }
)

# Per package: the folder, the modules it may not import, and the third-party packages it may use.
# spec/ drives its oracle with `transitions`; model/ must not depend on it.
PACKAGES = {
    "beaverq.model": ("model", FORBIDDEN_MODULES | {"transitions"}, ("attrs", "immutables")),
    "beaverq.spec": ("spec", FORBIDDEN_MODULES, ("attrs", "immutables", "transitions")),
}


def _python_files(folder: str) -> list[Path]:
    files = sorted((REPO_ROOT / folder).rglob("*.py"))
    assert files, f"no Python files under {folder}/"
    return files


def _absolute_imports(path: Path) -> list[tuple[int, str]]:
    """Return (line, dotted module name) for each absolute import in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def _module_name(package: str, folder: str, path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT / folder).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([package, *parts])


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_no_forbidden_imports_in_source(package: str) -> None:
    """Goal: no file of the package imports a forbidden module.

    Method: parse each file with ``ast`` and compare the top-level name of every ``import x`` and
    ``from x import y`` with the forbidden list. Relative imports stay inside beaverq and pass.
    """
    folder, forbidden, _ = PACKAGES[package]
    violations = [
        f"{path.relative_to(REPO_ROOT)}:{line}: imports {name}"
        for path in _python_files(folder)
        for line, name in _absolute_imports(path)
        if name.split(".")[0] in forbidden
    ]
    assert not violations, "forbidden imports in the pure core:\n" + "\n".join(violations)


# Runs in a fresh interpreter. argv[1] is JSON: [baseline imports, modules to import, forbidden].
_PROBE = """
import importlib, json, sys
baseline, targets, forbidden = json.loads(sys.argv[1])
for name in baseline:
    importlib.import_module(name)
before = set(sys.modules)
for name in targets:
    importlib.import_module(name)
new = sorted(m for m in set(sys.modules) - before if m.split(".")[0] in forbidden)
print(json.dumps(new))
"""


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_import_loads_no_forbidden_modules(package: str, tmp_path: Path) -> None:
    """Goal: importing the package does not load a forbidden module, even indirectly.

    Method: in a subprocess, first import the third-party packages the package may use (and the
    submodules of them that it names), then record ``sys.modules``. Then import every module of
    the package, and list the forbidden modules that are newly loaded. Modules already loaded
    at interpreter start (``os``, ``sys``, ``io``, ``time`` and often others) or loaded by the
    allowed dependencies (attrs loads ``threading``, transitions loads ``logging``) cannot be seen
    this way; the static test covers them.
    """
    folder, forbidden, allowed = PACKAGES[package]
    files = _python_files(folder)
    baseline = sorted(
        {
            name
            for path in files
            for _, name in _absolute_imports(path)
            if name.split(".")[0] in allowed
        }
        | set(allowed)
    )
    targets = [_module_name(package, folder, path) for path in files]
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps([baseline, targets, sorted(forbidden)])],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,  # keep the repo folders off sys.path: import the installed package
    )
    assert proc.returncode == 0, f"import probe failed:\n{proc.stdout}\n{proc.stderr}"
    newly_loaded = json.loads(proc.stdout)
    assert not newly_loaded, f"importing {package} loads forbidden modules: {newly_loaded}"
