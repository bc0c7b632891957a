"""The command line: ``beaverq [--data-dir DIR] <command> [options]``.

Each command is two small functions: ``_add_<command>`` declares its arguments on
its own subparser, and ``_run_<command>(args) -> int`` does the work and returns
the exit status.  ``COMMANDS`` lists the pairs; adding a command (``enqueue``,
``run``, ``status``, ...) is adding a pair there and nothing else.

Exit status, for every command:

* 0: done;
* 1: the command ran and failed; one line on stderr says why;
* 2: the command line is wrong; one line on stderr says what (argparse's status).

The queue's commands (``enqueue`` ... ``resume``) go through ``control.execute``: to
the runner's control socket when a ``run`` holds the data directory, else to the
directory itself under its lock.  ``run`` is ``api.Runner`` plus signal handling.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import threading
from collections.abc import Callable
from importlib import metadata
from typing import Any, NoReturn

from beaverq.impl.runtime.dispatch_window import HORIZON_S_DEFAULT
from beaverq.teaching.simulate import (
    SIMULATION_JOBS_MAX,
    SIMULATION_WORKERS_MAX,
    SimulationFailed,
    simulate,
)

PROG = "beaverq"
SEED_MAX = 2**64 - 1


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors take one line: what is wrong, and where to look."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _int_between(low: int, high: int) -> Callable[[str], int]:
    """An argparse ``type`` that accepts integers in [low, high] only."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, got {value}")
        return value

    return parse


def _add_global_options(parser: argparse.ArgumentParser, default: object) -> None:
    # Declared on the main parser and again on every subparser, so that global
    # options may come before or after the command.  The subparsers' default is
    # SUPPRESS: an option given before the command is not overwritten after it.
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        default=default,
        help="folder holding the queue's log and snapshots (for the commands that keep "
        "state; 'simulate' keeps none and ignores it)",
    )


# -- simulate ---------------------------------------------------------------------------


def _add_simulate(subparsers: argparse._SubParsersAction[_Parser]) -> _Parser:
    parser = subparsers.add_parser(
        "simulate",
        help="run a deterministic simulation of the model and print its event log",
        description="Run the pure model with fake workers and a fake clock: jobs are "
        "enqueued, leased, completed, failed, expired, cancelled and recovered after "
        "simulated crashes, all drawn from SEED. The same seed always prints the same "
        "output. Ends with a summary and checks that every job finished, that replaying "
        "the log rebuilds the state, and that the spec invariants hold.",
    )
    parser.add_argument(
        "--seed",
        type=_int_between(0, SEED_MAX),
        required=True,
        help="seed of the run's random choices (0 to 2**64-1)",
    )
    parser.add_argument(
        "--jobs",
        type=_int_between(0, SIMULATION_JOBS_MAX),
        required=True,
        help=f"how many distinct jobs to enqueue (0 to {SIMULATION_JOBS_MAX})",
    )
    parser.add_argument(
        "--workers",
        type=_int_between(1, SIMULATION_WORKERS_MAX),
        default=4,
        help=f"how many fake workers lease jobs (1 to {SIMULATION_WORKERS_MAX}; default 4)",
    )
    parser.add_argument(
        "--quiet", action="store_true", help="print the summary only, not the event log"
    )
    return parser


def _run_simulate(args: argparse.Namespace) -> int:
    try:
        report = simulate(args.seed, args.jobs, args.workers)
    except SimulationFailed as failure:
        return _fail(f"simulation failed: {failure}")
    sys.stdout.write(report.render(quiet=args.quiet))
    return 0


# -- verify and wal dump: offline inspection of a data directory -------------------------


def _data_dir(args: argparse.Namespace) -> str:
    """``--data-dir``, else ``$BEAVERQ_DATA_DIR``, else ``./beaverq-data``."""
    chosen = getattr(args, "data_dir", None) or os.environ.get("BEAVERQ_DATA_DIR")
    return os.path.abspath(chosen or "beaverq-data")


def _add_verify(subparsers: argparse._SubParsersAction[_Parser]) -> _Parser:
    return subparsers.add_parser(
        "verify",
        help="check a data directory offline (changes nothing)",
        description="Check every snapshot and the whole WAL of the data directory, replay "
        "the events and check the spec's invariants, without changing any file. Exit "
        "status 0 when the directory is sound (a torn tail, which recovery would cut, is "
        "reported as a warning), 1 on corruption.",
    )


def _run_verify(args: argparse.Namespace) -> int:
    from beaverq.impl.storage.fs import RealFileSystem
    from beaverq.impl.storage.verify import format_report, verify_data_dir

    report = verify_data_dir(RealFileSystem(), _data_dir(args))
    print(format_report(report))
    return 0 if report.ok else 1


def _add_wal(subparsers: argparse._SubParsersAction[_Parser]) -> _Parser:
    parser = subparsers.add_parser(
        "wal",
        help="inspect the write-ahead log ('wal dump')",
        description="Inspect the write-ahead log of the data directory.",
    )
    actions = parser.add_subparsers(dest="wal_action", metavar="<action>", required=True)
    dump = actions.add_parser(
        "dump",
        help="print every WAL record, decoded",
        description="Print every frame of every WAL segment: offset, LSN, durable LSN when "
        "framed, chain CRC, and the decoded event. Stops at damage and says where. "
        "Changes nothing.",
    )
    _add_global_options(dump, default=argparse.SUPPRESS)
    return parser


def _run_wal(args: argparse.Namespace) -> int:
    from beaverq.impl.storage.fs import RealFileSystem
    from beaverq.impl.storage.wal_dump import dump_wal

    directory = _data_dir(args)
    if not os.path.isdir(directory):
        return _fail(f"{directory}: no such data directory")
    for line in dump_wal(RealFileSystem(), directory):
        sys.stdout.write(line + "\n")
    return 0


# -- The queue's commands: through the runner's control socket, or on the directory. ------


Subparsers = argparse._SubParsersAction  # shorthand for the annotations below


def _execute(args: argparse.Namespace, op: str, params: dict[str, Any]) -> Any:
    """Run ``op`` via a runner if one answers, else on the data directory itself;
    ``CommandFailed`` carries the one-line error."""
    from .control import execute

    return execute(_data_dir(args), op, params)


def _seconds(text: str) -> float:
    """An argparse ``type``: a finite number of seconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"ARGS_JSON is not valid JSON: {error}") from None


def _add_enqueue(subparsers: Subparsers[_Parser]) -> _Parser:
    parser = subparsers.add_parser(
        "enqueue",
        help="add a job (or a batch of jobs) to the queue",
        description="Enqueue a job and print its id alone on stdout. Exit status 0 only "
        "once the enqueue is durable (fsynced). With --batch FILE ('-' for stdin), read "
        'JSON lines, one job each ({"handler": ..., "args": ..., "queue": ..., '
        '"priority": ..., "max_attempts": ..., "timeout": ..., "delay": ..., "id": ..., '
        '"idempotency_key": ...}), enqueue them all with one durable commit (all or '
        "nothing) and print their ids, one per line, in order.",
    )
    parser.add_argument("handler", nargs="?", metavar="HANDLER", help="the handler's name")
    parser.add_argument(
        "args_json",
        nargs="?",
        metavar="ARGS_JSON",
        type=_json_value,
        default=None,
        help="the job's arguments, as JSON (default null)",
    )
    parser.add_argument("--queue", help="queue name (default 'default')")
    parser.add_argument("--id", dest="job_id", metavar="ID", help="job id (default: generated)")
    parser.add_argument("--priority", type=int, metavar="N", help="-10 (low) to 10 (high)")
    parser.add_argument("--max-attempts", type=int, metavar="N", help="1 to 100 (default 3)")
    parser.add_argument("--timeout", type=_seconds, metavar="SECONDS", help="per attempt")
    parser.add_argument("--delay", type=_seconds, metavar="SECONDS", help="before first run")
    parser.add_argument("--idempotency-key", metavar="K", help="same key: same job, once")
    parser.add_argument("--batch", metavar="FILE", help="JSON lines of jobs ('-': stdin)")
    return parser


_JOB_FLAGS = ("queue", "job_id", "priority", "max_attempts", "timeout", "delay", "idempotency_key")


def _run_enqueue(args: argparse.Namespace) -> int:
    if args.batch is not None:
        if args.handler is not None or any(getattr(args, f) is not None for f in _JOB_FLAGS):
            return _usage("enqueue", "--batch takes no HANDLER, ARGS_JSON or job flags")
        return _enqueue_batch(args)
    if args.handler is None:
        return _usage("enqueue", "give a HANDLER, or --batch FILE")
    job: dict[str, Any] = {"handler": args.handler, "args": args.args_json}
    for flag in _JOB_FLAGS:
        value = getattr(args, flag)
        if value is not None:
            job["id" if flag == "job_id" else flag] = value
    return _print_outcome(lambda: [_execute(args, "enqueue", {"job": job})])


def _enqueue_batch(args: argparse.Namespace) -> int:
    try:
        if args.batch == "-":
            text = sys.stdin.read()
        else:
            with open(args.batch, encoding="utf-8") as file:
                text = file.read()
    except (OSError, UnicodeDecodeError) as error:
        return _fail(f"{args.batch}: cannot read: {error}")
    jobs = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            job = json.loads(line)
        except ValueError as error:
            return _fail(f"{args.batch}: line {number}: not valid JSON: {error}")
        if not isinstance(job, dict):
            return _fail(f"{args.batch}: line {number}: a job is a JSON object")
        jobs.append(job)
    if not jobs:
        return _fail(f"{args.batch}: no jobs")
    return _print_outcome(lambda: _execute(args, "enqueue_batch", {"jobs": jobs}))


def _print_outcome(produce: Callable[[], list[str]]) -> int:
    from .control import CommandFailed

    try:
        lines = produce()
    except CommandFailed as failure:
        return _fail(str(failure))
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    return 0


def _add_status(subparsers: Subparsers[_Parser]) -> _Parser:
    parser = subparsers.add_parser(
        "status",
        help="counts per state and per queue, and the last recovery's figures",
        description="Print how many jobs are in each state, per queue, which queues are "
        "paused, the last recovery's figures and, when a runner holds the data "
        "directory, its workers. --json prints one JSON object with at least the integer "
        "keys pending, in_flight, completed, dead and cancelled.",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    return parser


def _run_status(args: argparse.Namespace) -> int:
    return _show_result(args, "status", {}, _format_status)


def _format_status(status: dict[str, Any]) -> str:
    states = ("pending", "delayed", "in_flight", "completed", "dead", "cancelled")
    lines = [
        "  ".join(f"{name} {status[name]}" for name in states) + f"  (total {status['total']})"
    ]
    for name, counts in status["queues"].items():
        paused = " (paused)" if name in status["paused"] else ""
        lines.append(f"queue {name}{paused}: " + "  ".join(f"{s} {counts[s]}" for s in states))
    for name in status["paused"]:
        if name not in status["queues"]:
            lines.append(f"queue {name} (paused): no jobs")
    recovery = status["recovery"]
    runtime = status.get("runtime")
    if runtime is None:
        lines.append(
            f"runner: none; state at LSN {recovery['last_lsn']} read from the data "
            f"directory in {recovery['seconds']:.3f} s (the runner's last recovery "
            "figures are shown while one runs)"
        )
    else:
        lines.append(
            f"recovery: {recovery['seconds']:.3f} s, snapshot at LSN "
            f"{recovery['snapshot_lsn']}, {recovery['records_replayed']} records replayed, "
            f"{recovery['bytes_truncated']} bytes truncated, "
            f"{recovery['leases_abandoned']} leases abandoned"
        )
        lines.append(
            f"runner: {runtime['workers']} workers, {runtime['tasks_held']} tasks held; "
            f"{runtime['dispatched']} dispatched, {runtime['completed']} completed, "
            f"{runtime['retried']} retried, {runtime['dead']} dead since it started"
        )
    return "\n".join(lines) + "\n"


def _add_show(subparsers: Subparsers[_Parser]) -> _Parser:
    parser = subparsers.add_parser(
        "show",
        help="one job, with every attempt and error",
        description="Print one job: its spec, its state, and every attempt with its error.",
    )
    parser.add_argument("job_id", metavar="JOB_ID")
    parser.add_argument("--json", action="store_true", help="print JSON")
    return parser


def _run_show(args: argparse.Namespace) -> int:
    def format_job(job: dict[str, Any]) -> str:
        lines = [f"{key}: {value}" for key, value in job.items() if key != "attempts"]
        for record in job["attempts"]:
            lines.append("attempt: " + ", ".join(f"{k}={v}" for k, v in record.items()))
        return "\n".join(lines) + "\n"

    return _show_result(args, "show", {"job_id": args.job_id}, format_job)


def _add_jobs(subparsers: Subparsers[_Parser]) -> _Parser:
    parser = subparsers.add_parser(
        "jobs",
        help="list jobs, optionally by state and queue",
        description="List jobs in enqueue order, one per line: id, state, queue, handler, "
        "attempts used / allowed, last error.",
    )
    parser.add_argument(
        "--state",
        choices=("pending", "delayed", "in_flight", "completed", "dead", "cancelled"),
        help="only jobs in this state",
    )
    parser.add_argument("--queue", metavar="Q", help="only jobs of this queue")
    parser.add_argument("--json", action="store_true", help="print JSON")
    return parser


def _run_jobs(args: argparse.Namespace) -> int:
    def format_jobs(jobs: list[dict[str, Any]]) -> str:
        return "".join(
            f"{job['job_id']}\t{job['status']}\t{job['queue']}\t{job['handler']}\t"
            f"{job['attempts_used']}/{job['max_attempts']}\t{job['error'] or ''}\n"
            for job in jobs
        )

    params = {"state": args.state, "queue": args.queue}
    return _show_result(args, "jobs", params, format_jobs)


def _show_result(
    args: argparse.Namespace, op: str, params: dict[str, Any], render: Callable[[Any], str]
) -> int:
    from .control import CommandFailed

    try:
        result = _execute(args, op, params)
    except CommandFailed as failure:
        return _fail(str(failure))
    if result is None:  # show: no such job
        return _fail(f"unknown job {params.get('job_id')!r}")
    if args.json:
        sys.stdout.write(json.dumps(result, ensure_ascii=False, indent=2) + "\n")
    else:
        sys.stdout.write(render(result))
    return 0


def _job_command(name: str, help_text: str, description: str) -> Command:
    """``cancel`` and ``requeue``: a job id in, the job's status out."""

    def add(subparsers: Subparsers[_Parser]) -> _Parser:
        parser = subparsers.add_parser(name, help=help_text, description=description)
        parser.add_argument("job_id", metavar="JOB_ID")
        return parser

    def run(args: argparse.Namespace) -> int:
        return _print_outcome(lambda: [_execute(args, name, {"job_id": args.job_id})])

    return add, run


def _queue_command(name: str, help_text: str, description: str) -> Command:
    """``pause`` and ``resume``: a queue name in, nothing out."""

    def add(subparsers: Subparsers[_Parser]) -> _Parser:
        parser = subparsers.add_parser(name, help=help_text, description=description)
        parser.add_argument("queue", metavar="Q")
        return parser

    def run(args: argparse.Namespace) -> int:
        def act() -> list[str]:
            _execute(args, name, {"queue": args.queue})
            return []  # success says nothing, like mkdir

        return _print_outcome(act)

    return add, run


# -- run: the runner. -----------------------------------------------------------------------


def _add_run(subparsers: Subparsers[_Parser]) -> _Parser:
    parser = subparsers.add_parser(
        "run",
        help="run the queue: lease jobs to workers until stopped",
        description="Hold the data directory, recover it, and run jobs with a pool of "
        "workers, serving the other commands on control.sock in the data directory. "
        "SIGINT/SIGTERM stop gracefully: no new leases, running jobs get --grace "
        "seconds, the rest return to the queue, a final snapshot is written, exit 0. A "
        "second signal ends the grace at once.",
    )
    parser.add_argument(
        "--workers",
        type=_int_between(1, 1_000),
        default=4,
        metavar="N",
        help="worker count (1 to 1000; default 4)",
    )
    parser.add_argument(
        "--pool",
        choices=("threads", "processes"),
        default="threads",
        help="run handlers on threads (default) or in worker processes",
    )
    parser.add_argument(
        "--until-idle",
        action="store_true",
        help="exit 0 once no job is pending, delayed or in flight",
    )
    parser.add_argument(
        "--metrics-port",
        type=_int_between(0, 65535),
        metavar="PORT",
        help="serve Prometheus metrics on 127.0.0.1:PORT/metrics (0: any free port)",
    )
    parser.add_argument(
        "--snapshot-interval",
        type=_seconds,
        default=2.0,
        metavar="SECONDS",
        help="snapshot at most this often when anything changed (default 2)",
    )
    parser.add_argument(
        "--lease-ahead",
        type=_seconds,
        default=HORIZON_S_DEFAULT,
        metavar="SECONDS",
        help="lease jobs the workers will start within this time, so one fsync covers "
        f"many leases (default {HORIZON_S_DEFAULT:g}; 0: one lease per idle worker, so a "
        "crash costs at most one unstarted attempt per worker; docs/runtime.md)",
    )
    parser.add_argument("--allow-shell", action="store_true", help="register the shell handler")
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="register MODULE's handlers (repeatable)",
    )
    parser.add_argument(
        "--grace",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="how long running jobs may finish on stop (default 10)",
    )
    return parser


def _run_run(args: argparse.Namespace) -> int:
    from beaverq.impl.runtime.handlers import HandlerRegistry

    from .api import RunFailed, Runner

    try:
        registry = HandlerRegistry(allow_shell=args.allow_shell)
        for module in args.imports:
            registry.import_module(module)
    except (ImportError, ValueError, TypeError) as error:
        return _fail(f"--import: {error}")
    runner = Runner(
        _data_dir(args),
        registry,
        workers=args.workers,
        pool=args.pool,
        snapshot_interval_s=args.snapshot_interval,
        lease_ahead_s=args.lease_ahead,
    )
    signals = _Signals()
    try:
        runner.start()
    except RunFailed as failure:
        signals.restore()
        return _fail(str(failure))
    assert runner.controller is not None
    try:
        stop_metrics = _start_metrics(args, runner)
    except OSError as error:
        runner.stop(0.0)
        signals.restore()
        return _fail(f"--metrics-port {args.metrics_port}: {error.strerror or error}")
    try:
        print(
            f"{PROG}: running on {runner.data_dir} with {args.workers} {args.pool} workers "
            f"(recovered in {runner.controller.recovery.seconds:.3f} s)",
            file=sys.stderr,
            flush=True,
        )
        if args.until_idle:
            _set_when_idle(runner, signals.stop)
        while not signals.stop.wait(0.5):
            if runner.controller.failure is not None:
                break  # the stop below reports it
        return _stop_runner(runner, signals, args.grace)
    finally:
        if stop_metrics is not None:
            stop_metrics()
        signals.restore()


class _Signals:
    """SIGINT/SIGTERM: the first asks for a graceful stop, the second ends the grace."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.hurry = threading.Event()
        self._previous = {
            number: signal.signal(number, self._on_signal)
            for number in (signal.SIGINT, signal.SIGTERM)
        }

    def _on_signal(self, number: int, frame: object) -> None:
        # Only events are set here: the main thread acts on them outside the handler.
        if self.stop.is_set():
            self.hurry.set()
        self.stop.set()

    def restore(self) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, previous)


def _set_when_idle(runner: Any, stop: threading.Event) -> None:
    def wait() -> None:
        try:
            runner.until_idle()
        finally:  # idle, or the controller failed or stopped: either way, stop
            stop.set()

    threading.Thread(target=wait, name="beaverq-until-idle", daemon=True).start()


def _stop_runner(runner: Any, signals: _Signals, grace_s: float) -> int:
    """Stop on a helper thread, so that a second signal can end the grace meanwhile."""
    from beaverq.impl.runtime.errors import ControllerFailed

    outcome: dict[str, Any] = {}

    def stop() -> None:
        try:
            outcome["unfinished"] = runner.stop(grace_s)
        except ControllerFailed as failure:
            outcome["failure"] = failure

    stopper = threading.Thread(target=stop, name="beaverq-stop")
    stopper.start()
    hurried = False
    while stopper.is_alive():
        stopper.join(0.1)
        if signals.hurry.is_set() and not hurried:
            hurried = True
            print(f"{PROG}: second signal: ending the grace now", file=sys.stderr, flush=True)
            runner.end_grace_now()
    if "failure" in outcome:
        return _fail(str(outcome["failure"]))
    unfinished = outcome.get("unfinished", [])
    print(
        f"{PROG}: stopped; {len(unfinished)} unfinished jobs released back to the queue "
        "(attempts not counted)",
        file=sys.stderr,
        flush=True,
    )
    return 0


def _start_metrics(args: argparse.Namespace, runner: Any) -> Callable[[], None] | None:
    """``--metrics-port``: Prometheus text on 127.0.0.1:PORT/metrics (impl/frontends/metrics.py)."""
    if args.metrics_port is None:
        return None
    from .metrics import serve_metrics

    server = serve_metrics(runner.controller, args.metrics_port)
    # The bound port: with --metrics-port 0 the system chose it.
    print(f"{PROG}: metrics on {server.url}", file=sys.stderr, flush=True)
    stop: Callable[[], None] = server.stop
    return stop


# -- demo ---------------------------------------------------------------------------------


def _add_demo(subparsers: Subparsers[_Parser]) -> _Parser:
    # No --help of its own: every option after 'demo', --help included, goes to the
    # demo's own parser (teaching/demo.py), which documents them.
    return subparsers.add_parser(
        "demo",
        add_help=False,
        help="the whole story in under a minute: jobs, a SIGKILL, recovery, accounting",
    )


def _run_demo(args: argparse.Namespace) -> int:
    from beaverq.teaching.demo import run_demo

    argv = list(args.passed_on)
    if getattr(args, "data_dir", None):
        argv = ["--data-dir", args.data_dir, *argv]
    return run_demo(argv)


def _usage(command: str, message: str) -> int:
    print(f"{PROG} {command}: error: {message} (see '{PROG} {command} --help')", file=sys.stderr)
    return 2


# -- The command table and the entry point. ----------------------------------------------

Command = tuple[
    Callable[["argparse._SubParsersAction[_Parser]"], _Parser],
    Callable[[argparse.Namespace], int],
]
COMMANDS: dict[str, Command] = {
    "simulate": (_add_simulate, _run_simulate),
    "verify": (_add_verify, _run_verify),
    "wal": (_add_wal, _run_wal),
    "enqueue": (_add_enqueue, _run_enqueue),
    "run": (_add_run, _run_run),
    "status": (_add_status, _run_status),
    "show": (_add_show, _run_show),
    "jobs": (_add_jobs, _run_jobs),
    "cancel": _job_command(
        "cancel",
        "cancel a job",
        "Cancel a job and print its state: 'cancelled', or 'in_flight' when it is "
        "running (the cancellation takes effect when its attempt ends).",
    ),
    "requeue": _job_command(
        "requeue",
        "return a dead job to the queue",
        "Return a dead job to pending, with fresh attempts; print its state.",
    ),
    "pause": _queue_command(
        "pause", "stop leasing a queue's jobs", "Pause queue Q: its jobs are not leased."
    ),
    "resume": _queue_command("resume", "resume a paused queue", "Resume leasing queue Q's jobs."),
    "demo": (_add_demo, _run_demo),
}
#: Commands whose unknown options are passed on to their own parser.
PASS_ON = frozenset({"demo"})


def build_parser() -> _Parser:
    parser = _Parser(
        prog=PROG,
        description="beaverq: a crash-safe job queue, built as a formally-modelled "
        "reference implementation.",
        epilog="Run 'beaverq <command> --help' for a command's options. Exit status: 0 done, "
        "1 the command failed, 2 bad command line.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    _add_global_options(parser, default=None)
    subparsers = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for add, run in COMMANDS.values():
        subparser = add(subparsers)
        _add_global_options(subparser, default=argparse.SUPPRESS)
        subparser.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, passed_on = parser.parse_known_args(argv)
    if passed_on and args.command not in PASS_ON:
        parser.error(f"unrecognized arguments: {' '.join(passed_on)}")
    args.passed_on = passed_on
    try:
        status: int = args.run(args)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader left early (`beaverq simulate ... | head`).  Point stdout at
        # /dev/null so that the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return status


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 1


def _version() -> str:
    try:
        return metadata.version("beaverq")
    except metadata.PackageNotFoundError:  # running from a tree that is not installed
        return "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
