"""The shape of the shell (docs/architecture.md): its rooms depend one way, no module
imports itself round a circle, no module outgrows a reading, and the names that must
agree (``JobRequest`` and ``Enqueue``; the control table and the controller) agree.

The import graph is read from the source with ``ast``, not from ``sys.modules``, so a
lazy import inside a function counts as much as one at the top.  An import under ``if
TYPE_CHECKING:`` does not count: it is a type annotation's name, never run (loops.py
and shutdown.py name ``Controller`` that way, and the controller calls them).
"""

from __future__ import annotations

import ast
from pathlib import Path

import attrs
import pytest

from beaverq.impl.frontends import control
from beaverq.impl.runtime.job_request import JobRequest
from beaverq.model import WORKER_SEPARATOR, Cancel, Enqueue

REPO_ROOT = Path(__file__).resolve().parent.parent

# The folders of the shell and of the teaching tools, by the package each one is.
PACKAGES = {"impl": "beaverq.impl", "teaching": "beaverq.teaching"}

#: "About 600 lines" (issue 9): a module longer than this is read in two sittings.
LINES_MAX = 600
#: Modules allowed past the limit, each with its reason.  None today.
LINES_MAX_EXCEPTIONS: set[str] = set()

#: Which room may import which (by module-name prefix).  storage knows no runtime,
#: the runtime no front end; the teaching tools may use the shell, and of the shell
#: only the CLI uses them (``beaverq simulate``, ``beaverq demo``).
MAY_IMPORT = {
    "beaverq.impl.storage": ("beaverq.impl.storage",),
    "beaverq.impl.runtime": ("beaverq.impl.storage", "beaverq.impl.runtime"),
    # The cluster runs the runtime on the etcd log; its RPC speaks the control
    # protocol, so it may use the one table of operations (frontends.control), and its
    # metrics are the runner's with a node label (frontends.metrics).
    "beaverq.impl.cluster": (
        "beaverq.impl.storage",
        "beaverq.impl.runtime",
        "beaverq.impl.cluster",
        "beaverq.impl.frontends.control",
        "beaverq.impl.frontends.metrics",
    ),
    "beaverq.impl.frontends": ("beaverq.impl",),
    "beaverq.teaching": ("beaverq.impl", "beaverq.teaching"),
}
#: The front end that offers the teaching tools as commands.
TEACHING_USERS = ("beaverq.impl.frontends.cli",)


def _modules() -> dict[str, Path]:
    """Every module of the shell and of the teaching tools: name -> file."""
    found = {}
    for folder, package in PACKAGES.items():
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            parts = path.relative_to(REPO_ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((package, *parts))] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that runs, at any depth; not those under TYPE_CHECKING."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append(child)
            visit(child)

    visit(tree)
    return found


def _import_graph() -> dict[str, set[str]]:
    """module -> the modules of the shell and teaching tools it imports."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        package = name if is_package else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in _imports(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                bases = [alias.name for alias in node.names]
                candidates = bases
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                # ``from pkg import mod`` imports the module pkg.mod.
                candidates = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            for candidate in candidates:
                if candidate in modules and candidate != name:
                    targets.add(candidate)
        graph[name] = targets
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle, as the list of modules round it; None if there is none."""
    visiting: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> list[str] | None:
        if node in visiting:
            return [*visiting[visiting.index(node) :], node]
        if node in done:
            return None
        visiting.append(node)
        for target in sorted(graph[node]):
            cycle = visit(target)
            if cycle is not None:
                return cycle
        visiting.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start)
        if cycle is not None:
            return cycle
    return None


def test_the_graph_sees_the_imports_that_matter() -> None:
    """Goal: the reader of the graph is not blind (a test of the test).

    Method: a few edges that are known to exist, relative, absolute and lazy, are in it."""
    graph = _import_graph()
    assert "beaverq.impl.runtime.loops" in graph["beaverq.impl.runtime.controller"]
    assert "beaverq.impl.storage.storage" in graph["beaverq.impl.runtime.controller"]
    assert "beaverq.teaching.demo" in graph["beaverq.impl.frontends.cli"]  # lazy
    # Under TYPE_CHECKING only: not an edge.
    assert "beaverq.impl.runtime.controller" not in graph["beaverq.impl.runtime.loops"]


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _find_cycle(graph) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circles() -> None:
    """Goal: no module of beaverq.impl or beaverq.teaching imports itself round a circle
    (the CLI and the demo once imported each other)."""
    cycle = _find_cycle(_import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_the_rooms_depend_one_way() -> None:
    """Goal: storage <- runtime <- cluster <- front ends, and the teaching tools stay
    outside the shell (docs/architecture.md)."""
    wrong = []
    for module, targets in _import_graph().items():
        room = next((room for room in MAY_IMPORT if module.startswith(room)), None)
        if room is None:
            continue  # the packages' own __init__ modules import nothing
        for target in targets:
            if target.startswith("beaverq.teaching") and module in TEACHING_USERS:
                continue
            if not target.startswith(MAY_IMPORT[room]):
                wrong.append(f"{module} imports {target}")
    assert wrong == []


def test_no_module_is_over_600_lines() -> None:
    """Goal: every module of the shell and the teaching tools can be read in one sitting."""
    long = []
    for path in _modules().values():
        relative = path.relative_to(REPO_ROOT).as_posix()
        lines = len(path.read_text().splitlines())
        if lines > LINES_MAX and relative not in LINES_MAX_EXCEPTIONS:
            long.append(f"{relative}: {lines} lines")
    assert long == []


def test_the_shell_names_workers_by_the_models_rule_only() -> None:
    """Goal: the runtime's worker ids and the model's reading of their node (AbandonNode)
    cannot drift apart: no module of the shell or the teaching tools builds a worker id
    with the separator spelled out; they call ``model.worker_id_of``.

    Method: every string constant, f-string parts included, read with ``ast``: one that
    ends with the separator is the text before an index (``f"{node}-w{index}"`` has the
    part ``"-w"``).  Words that merely hold it ("--workers", "beaverq-worker") do not.
    It caught the controller's own ``f"{runner_id}-w{index}"`` before the change."""
    spelled = [
        f"{module}:{node.lineno}: {node.value!r}"
        for module, path in _modules().items()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value.endswith(WORKER_SEPARATOR)
    ]
    assert spelled == []


def test_job_request_has_the_fields_of_enqueue() -> None:
    """Goal: ``JobRequest`` (what a producer asks for) and ``Enqueue`` (the model's
    command) cannot drift apart: the same fields, but ``now_ms``, with the same
    defaults, and ``JobRequest.command`` gives every field to the command."""
    request_fields = {f.name: f.default for f in attrs.fields(JobRequest)}
    enqueue_fields = {f.name: f.default for f in attrs.fields(Enqueue) if f.name != "now_ms"}
    assert request_fields == enqueue_fields
    request = JobRequest(handler="h", job_id="j", queue="q", priority=3, idempotency_key="k")
    command = request.command(now_ms=5)
    assert attrs.asdict(command) == {"now_ms": 5, **attrs.asdict(request)}


def test_every_operation_is_wired() -> None:
    """Goal: the control table is whole: each operation's method exists, and each
    command takes exactly the operation's parameters (checked at import, too)."""
    control.check_wiring(control.OPERATIONS)
    assert set(control.OPERATIONS) >= {"enqueue", "cancel", "pause", "status", "show"}


@pytest.mark.parametrize(
    ("operation", "complaint"),
    [
        (control.Operation("pause_all", ("queue",), None), "Controller has no method"),
        (control.Operation("status", (), None), None),
        (control.Operation("cancel", ("queue",), Cancel), "Cancel takes"),
        (control.Operation("enqueue_request", ("job",), Enqueue), None),
    ],
)
def test_a_half_wired_operation_is_refused_by_name(
    operation: control.Operation, complaint: str | None
) -> None:
    """Goal: a table entry that names no method, or a command with other fields than its
    parameters, is an error that names the operation."""
    table = {"wired_by_hand": operation}
    if complaint is None:
        control.check_wiring(table)
        return
    with pytest.raises(TypeError, match=f"operation 'wired_by_hand' is half-wired: {complaint}"):
        control.check_wiring(table)


def test_an_unknown_operation_is_an_error_naming_it() -> None:
    with pytest.raises(ValueError, match="unknown operation 'frobnicate'"):
        control.perform(object(), "frobnicate", {})
    with pytest.raises(control.CommandFailed, match="unknown operation 'frobnicate'"):
        control.execute_locally("/nonexistent", "frobnicate", {})
