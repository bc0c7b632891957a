"""How a worker process starts without importing from the runner's working directory.

``python -m MODULE`` puts the current directory first on ``sys.path``, before the
standard library: a ``json.py`` planted in the directory a runner was started from
would run, as the runner's user, in every worker process.  So a worker is started as

    python -I -c BOOTSTRAP CONFIG

``-I`` (isolated mode) adds neither the current directory nor a script's directory to
the path, and ignores ``PYTHON*`` variables and the user's site-packages.  The
bootstrap then sets the path the runner computed: the runner's own ``sys.path``
without the working directory (``""``, ``"."`` or its absolute name).  The modules the
user named with ``--import`` stay importable from wherever the runner found them,
the working directory included, through a finder that knows only their top-level
names and is consulted first, so that each is the very module the runner imported
(another module of the same name further along the path does not take its place;
and none can shadow the standard library: a name the runner took from there is
found there).  A
sibling module the user did not name, in a directory that is only on the path because
it is the working directory, is not importable in a worker: name it with ``--import``
or put its directory on ``PYTHONPATH``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable

#: Run by ``python -I -c``: only the standard library is imported before the path is set.
BOOTSTRAP = """\
import json, sys
from importlib.machinery import PathFinder
config = json.loads(sys.argv[1])
sys.path[:] = config["path"]
roots = config["roots"]

class NamedRoots:
    @staticmethod
    def find_spec(name, path=None, target=None):
        places = roots.get(name) if path is None else None
        return PathFinder.find_spec(name, places) if places else None

sys.meta_path.insert(0, NamedRoots)  # first: the runner's own module
from beaverq.impl.runtime.process_pool import _worker_process_main
_worker_process_main(config["argv"])
"""


def _is_working_directory(entry: str, here: str) -> bool:
    return entry in ("", ".") or os.path.realpath(entry) == here


def worker_path() -> list[str]:
    """The runner's ``sys.path`` without its working directory."""
    here = os.path.realpath(os.getcwd())
    return [entry for entry in sys.path if not _is_working_directory(entry, here)]


def module_roots(modules: Iterable[str]) -> dict[str, list[str]]:
    """For each named module's top-level package: the directories the runner found it
    in (a worker finds it there, and only it)."""
    roots: dict[str, list[str]] = {}
    for name in modules:
        top = name.partition(".")[0]
        module = sys.modules.get(top)
        spec = getattr(module, "__spec__", None)
        if spec is None:
            continue
        places = list(spec.submodule_search_locations or [])  # a package: its folders
        if places:
            found = [os.path.dirname(place) for place in places]
        elif spec.origin:
            found = [os.path.dirname(spec.origin)]
        else:
            continue
        # Only real directories: an editable install's package lists a path hook, whose
        # "directory" is "" (the working directory); that name is left to the path.
        found = [place for place in found if os.path.isabs(place)]
        if not found:
            continue
        roots[top] = sorted(set(roots.get(top, [])) | set(found))
    return roots


def isolated_worker_argv(argv: list[str], modules: Iterable[str]) -> list[str]:
    """The command line of a worker process that runs ``_worker_process_main(argv)``."""
    config = {"path": worker_path(), "roots": module_roots(modules), "argv": argv}
    return [sys.executable, "-I", "-c", BOOTSTRAP, json.dumps(config)]
