"""The handler registry: built-ins, shell safety, user handlers, and how failures read.

No test sleeps: waiting is on a condition with a deadline (``wait_until``), and a
handler's deadline or cancellation is what ends the long-running ones.
"""

from __future__ import annotations

import json
import math
import os
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from beaverq.impl.runtime.handlers import (
    HandlerContext,
    HandlerRegistry,
    JobFailure,
    Outcome,
)
from beaverq.model import limits


def context(job_id: str = "job-1", attempt: int = 1, timeout_s: float = 30.0) -> HandlerContext:
    return HandlerContext(
        job_id=job_id,
        attempt=attempt,
        timeout_s=timeout_s,
        deadline=time.monotonic() + timeout_s,
    )


def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        threading.Event().wait(0.01)


def process_gone(pid: int) -> bool:
    """True once ``pid`` no longer runs (a zombie waiting to be reaped counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def run(registry: HandlerRegistry, name: str, args: object, ctx: HandlerContext | None = None):
    return registry.run(name, json.dumps(args), ctx or context())


# -- Built-ins. --------------------------------------------------------------------------


def test_default_registry_has_the_safe_builtins_only() -> None:
    assert HandlerRegistry().names() == ["fail", "noop", "sleep"]
    assert HandlerRegistry(allow_shell=True).names() == ["fail", "noop", "shell", "sleep"]


def test_noop_succeeds_with_null() -> None:
    assert run(HandlerRegistry(), "noop", None) == Outcome.success("null")


def test_sleep_sleeps_and_reports() -> None:
    started = time.monotonic()
    outcome = run(HandlerRegistry(), "sleep", {"seconds": 0.05})
    assert outcome == Outcome.success('{"slept":0.05}')
    assert time.monotonic() - started >= 0.05


def test_sleep_stops_at_its_deadline() -> None:
    started = time.monotonic()
    outcome = run(HandlerRegistry(), "sleep", {"seconds": 30}, context(timeout_s=0.05))
    assert not outcome.ok
    assert "deadline of 0.05 s reached" in (outcome.error or "")
    assert time.monotonic() - started < 5


def test_sleep_stops_when_cancelled() -> None:
    ctx = context()
    threading.Timer(0.05, ctx.cancelled.set).start()
    outcome = run(HandlerRegistry(), "sleep", {"seconds": 30}, ctx)
    assert outcome == Outcome.failure("sleep: interrupted by shutdown")


@pytest.mark.parametrize("args", [None, {}, {"seconds": -1}, {"seconds": "1"}, {"seconds": True}])
def test_sleep_refuses_bad_args_clearly(args: object) -> None:
    outcome = run(HandlerRegistry(), "sleep", args)
    assert not outcome.ok
    assert (outcome.error or "").startswith('sleep: args must be {"seconds": number >= 0}')


def test_fail_fails_with_its_message() -> None:
    assert run(HandlerRegistry(), "fail", {"message": "boom"}) == Outcome.failure("boom")
    assert run(HandlerRegistry(), "fail", None) == Outcome.failure("fail: failed")


# -- shell. ------------------------------------------------------------------------------


def test_shell_is_refused_unless_allowed() -> None:
    outcome = run(HandlerRegistry(), "shell", {"argv": ["true"]})
    assert not outcome.ok
    assert "unknown handler 'shell'" in (outcome.error or "")
    assert "--allow-shell" in (outcome.error or "")


def test_shell_sees_job_id_and_attempt_and_exit_zero_is_success() -> None:
    registry = HandlerRegistry(allow_shell=True)
    argv = ["sh", "-c", 'echo "$BEAVERQ_JOB_ID/$BEAVERQ_ATTEMPT"']
    outcome = run(registry, "shell", {"argv": argv}, context("job-7", 3))
    assert outcome.ok
    assert json.loads(outcome.result_json or "") == {"exit_status": 0, "stdout": "job-7/3"}


def test_shell_nonzero_exit_fails_with_status_and_stderr() -> None:
    registry = HandlerRegistry(allow_shell=True)
    outcome = run(registry, "shell", {"argv": ["sh", "-c", "echo oops >&2; exit 3"]})
    assert outcome == Outcome.failure("shell: sh exited with status 3: oops")


def test_shell_missing_program_fails_clearly() -> None:
    registry = HandlerRegistry(allow_shell=True)
    outcome = run(registry, "shell", {"argv": ["/nonexistent/program"]})
    assert not outcome.ok
    assert (outcome.error or "").startswith("shell: cannot start '/nonexistent/program'")


@pytest.mark.parametrize("args", [None, {"argv": []}, {"argv": "ls"}, {"argv": ["ls", 1]}])
def test_shell_refuses_bad_args(args: object) -> None:
    outcome = run(HandlerRegistry(allow_shell=True), "shell", args)
    assert not outcome.ok
    assert (outcome.error or "").startswith('shell: args must be {"argv"')


def _background_child_script(pid_file: Path) -> list[str]:
    # The program starts a long child in the background, writes its pid, and waits.
    return ["sh", "-c", f"sleep 300 & echo $! > {pid_file}; wait"]


def test_shell_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    registry = HandlerRegistry(allow_shell=True)
    started = time.monotonic()
    outcome = run(
        registry, "shell", {"argv": _background_child_script(pid_file)}, context(timeout_s=0.5)
    )
    assert time.monotonic() - started < 5
    assert outcome == Outcome.failure(
        "shell: sh timed out after 0.5 s; its process group was killed"
    )
    child = int(pid_file.read_text())
    wait_until(lambda: process_gone(child))


def test_shell_cancel_kills_the_whole_process_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    registry = HandlerRegistry(allow_shell=True)
    ctx = context()
    found: list[Outcome] = []
    thread = threading.Thread(
        target=lambda: found.append(
            run(registry, "shell", {"argv": _background_child_script(pid_file)}, ctx)
        )
    )
    thread.start()
    wait_until(lambda: pid_file.exists() and pid_file.read_text().strip() != "")
    ctx.cancelled.set()
    thread.join(10)
    assert not thread.is_alive()
    assert found == [Outcome.failure("shell: sh interrupted by shutdown; process group killed")]
    wait_until(lambda: process_gone(int(pid_file.read_text())))


def test_shell_leaves_no_process_behind_after_a_normal_exit(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    registry = HandlerRegistry(allow_shell=True)
    # Exits at once, leaving a background child that holds stdout open.
    argv = ["sh", "-c", f"sleep 300 & echo $! > {pid_file}"]
    started = time.monotonic()
    outcome = run(registry, "shell", {"argv": argv})
    assert outcome.ok
    assert time.monotonic() - started < 5
    wait_until(lambda: process_gone(int(pid_file.read_text())))


# -- Unknown handlers and bad results. ---------------------------------------------------


def test_unknown_handler_fails_clearly_and_names_what_exists() -> None:
    outcome = run(HandlerRegistry(), "no.such:thing", None)
    assert outcome == Outcome.failure(
        "unknown handler 'no.such:thing': this runner has fail, noop, sleep "
        "(start the runner with --import no.such to register it)"
    )


def _registry_with(function: Callable[..., object]) -> HandlerRegistry:
    registry = HandlerRegistry()
    registry.add("h", function)
    return registry


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ({1, 2}, "not JSON-able"),
        (math.nan, "not JSON-able"),
        (object(), "not JSON-able"),
        ("\ud800", "lone surrogates"),
        ("x" * (limits.RESULT_JSON_BYTES_MAX + 1), "RESULT_JSON_BYTES_MAX"),
    ],
)
def test_a_result_the_model_would_refuse_fails_the_attempt(value: object, fragment: str) -> None:
    outcome = run(_registry_with(lambda args, ctx: value), "h", None)
    assert not outcome.ok
    assert (outcome.error or "").startswith("h: the result")
    assert fragment in (outcome.error or "")


def test_json_results_pass_through() -> None:
    outcome = run(_registry_with(lambda args, ctx: {"echo": args, "n": [1, 2.5]}), "h", "hé")
    assert outcome == Outcome.success('{"echo":"hé","n":[1,2.5]}')


def test_exceptions_become_failures_never_escape() -> None:
    def broken(args: object, ctx: HandlerContext) -> None:
        raise KeyError("missing")

    def exits(args: object, ctx: HandlerContext) -> None:
        sys.exit(4)

    def refuses(args: object, ctx: HandlerContext) -> None:
        raise JobFailure("card declined")

    assert run(_registry_with(broken), "h", None) == Outcome.failure("h: KeyError: 'missing'")
    assert run(_registry_with(exits), "h", None) == Outcome.failure("h: SystemExit: 4")
    assert run(_registry_with(refuses), "h", None) == Outcome.failure("card declined")


def test_handler_names_are_checked_and_unique() -> None:
    registry = HandlerRegistry()
    with pytest.raises(ValueError, match="already registered"):
        registry.add("noop", lambda args, ctx: None)
    with pytest.raises(ValueError, match="non-empty token"):
        registry.add("two words", lambda args, ctx: None)
    with pytest.raises(TypeError, match="callable"):
        registry.add("x", 3)  # type: ignore[arg-type]


# -- User handlers by import. ------------------------------------------------------------


@pytest.fixture
def user_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    package = tmp_path / "userpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "decorated.py").write_text(
        textwrap.dedent(
            """
            from beaverq.impl.runtime.handlers import handler

            @handler()
            def greet(args, context):
                return {"hello": args["name"], "job": context.job_id, "try": context.attempt}

            @handler("custom-name")
            def renamed(args, context):
                return 42

            def not_a_handler(args, context):
                return "never registered"
            """
        )
    )
    (package / "explicit.py").write_text(
        textwrap.dedent(
            """
            def _double(args, context):
                return args * 2

            def register(registry):
                registry.add("double", _double)
            """
        )
    )
    (package / "empty.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in list(sys.modules):
        if name.startswith("userpkg"):
            monkeypatch.delitem(sys.modules, name)
    return package


def test_import_registers_decorated_functions_as_module_colon_name(user_modules: Path) -> None:
    registry = HandlerRegistry()
    assert registry.import_module("userpkg.decorated") == ["custom-name", "userpkg.decorated:greet"]
    outcome = run(registry, "userpkg.decorated:greet", {"name": "ann"}, context("j9", 2))
    assert json.loads(outcome.result_json or "") == {"hello": "ann", "job": "j9", "try": 2}
    assert run(registry, "custom-name", None) == Outcome.success("42")
    assert not run(registry, "userpkg.decorated:not_a_handler", None).ok
    assert registry.imported == ["userpkg.decorated"]


def test_import_calls_register(user_modules: Path) -> None:
    registry = HandlerRegistry()
    assert registry.import_module("userpkg.explicit") == ["double"]
    assert run(registry, "double", 21) == Outcome.success("42")


def test_import_of_a_module_without_handlers_is_refused(user_modules: Path) -> None:
    with pytest.raises(ValueError, match="registers no handlers"):
        HandlerRegistry().import_module("userpkg.empty")


def test_handlers_are_not_imported_on_demand(user_modules: Path) -> None:
    # Naming a module in a job must never import it: only --import does.
    outcome = run(HandlerRegistry(), "userpkg.decorated:greet", {"name": "x"})
    assert not outcome.ok
    assert "userpkg.decorated" not in sys.modules
    assert "--import userpkg.decorated" in (outcome.error or "")


def test_pid_helper_sees_this_process() -> None:
    assert not process_gone(os.getpid())
