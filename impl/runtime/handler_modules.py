"""Finding the module a user names with ``--import``: as ``python -m`` would, or by file.

``beaverq run --import tasks`` with ``tasks.py`` in the current directory must work
without ``PYTHONPATH=.``: ``python -m`` looks in the current directory first, and a user
expects the same here.  And ``--import ./jobs/tasks.py`` names a file: it is imported as
module ``tasks`` from its own directory.

The current directory is put on the path only for the moment of that one import, never
left there: the runner's path stays as it was, and a worker process gets the module
through worker_isolation.py's finder, which knows where the runner found each named
module (and only those), so a ``json.py`` in that directory still runs nowhere.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType


def import_named(text: str) -> tuple[str, ModuleType]:
    """(module name, module) for ``text``: a dotted module name, looked up on the path
    and then in the current directory, or a path to a ``.py`` file."""
    if text.endswith(".py") or os.sep in text:
        return _import_file(text)
    try:
        return text, importlib.import_module(text)
    except ModuleNotFoundError as error:
        if error.name != text.partition(".")[0]:
            raise  # the module was found; something it imports is missing: say that
    try:
        return text, _import_from(text, os.getcwd())
    except ModuleNotFoundError as error:
        if error.name != text.partition(".")[0]:
            raise
        raise ModuleNotFoundError(
            f"no module named {text!r} on the path or in the current directory "
            f"({os.getcwd()}); a file can be named by its path (--import ./tasks.py)",
            name=text,
        ) from None


def _import_file(text: str) -> tuple[str, ModuleType]:
    path = os.path.realpath(text)
    if not os.path.isfile(path):
        raise ModuleNotFoundError(f"no such file: {text}")
    name = os.path.splitext(os.path.basename(path))[0]
    if not name.isidentifier():
        raise ImportError(f"{text}: {name!r} is not a module name (letters, digits, _)")
    module = _import_from(name, os.path.dirname(path))
    found = os.path.realpath(getattr(module, "__file__", None) or "")
    if found != path:
        raise ImportError(
            f"{text}: a module named {name!r} is already imported from {found or 'elsewhere'}; "
            "rename the file"
        )
    return name, module


def _import_from(name: str, directory: str) -> ModuleType:
    """Import ``name`` with ``directory`` first on the path, for this import only."""
    sys.path.insert(0, directory)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(directory)  # the first occurrence: the one inserted here
