"""The command line: ``beaverq [--data-dir DIR] <command> [options]``.

Each command is two small functions: ``_add_<command>`` declares its arguments on
its own subparser, and ``_run_<command>(args) -> int`` does the work and returns
the exit status.  ``COMMANDS`` lists the pairs; adding a command (``enqueue``,
``run``, ``status``, ...) is adding a pair there and nothing else.  What the commands
share (the parser, the argument types, ``fail``) is in cli_args.py; ``run``, the
longest, is in cli_run.py.

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
import os
import sys
from collections.abc import Callable
from importlib import metadata
from typing import Any

from beaverq.model.errors import echo
from beaverq.model.limits import JSON_DEPTH_MAX
from beaverq.model.validation import is_nested_deeper_than
from beaverq.teaching.simulate import (
    SIMULATION_JOBS_MAX,
    SIMULATION_WORKERS_MAX,
    SimulationFailed,
    simulate,
)

from .cli_args import (
    PROG,
    Parser,
    Subparsers,
    add_global_options,
    data_dir,
    fail,
    int_between,
    seconds,
    usage,
)
from .cli_cluster import add_cluster, run_cluster
from .cli_run import add_run, run_run

SEED_MAX = 2**64 - 1


# -- simulate ---------------------------------------------------------------------------


def _add_simulate(subparsers: argparse._SubParsersAction[Parser]) -> Parser:
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
        type=int_between(0, SEED_MAX),
        required=True,
        help="seed of the run's random choices (0 to 2**64-1)",
    )
    parser.add_argument(
        "--jobs",
        type=int_between(0, SIMULATION_JOBS_MAX),
        required=True,
        help=f"how many distinct jobs to enqueue (0 to {SIMULATION_JOBS_MAX})",
    )
    parser.add_argument(
        "--workers",
        type=int_between(1, SIMULATION_WORKERS_MAX),
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
        return fail(f"simulation failed: {failure}")
    sys.stdout.write(report.render(quiet=args.quiet))
    return 0


# -- verify and wal dump: offline inspection of a data directory -------------------------


def _add_verify(subparsers: argparse._SubParsersAction[Parser]) -> Parser:
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

    report = verify_data_dir(RealFileSystem(), data_dir(args))
    print(format_report(report))
    return 0 if report.ok else 1


def _add_wal(subparsers: argparse._SubParsersAction[Parser]) -> Parser:
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
    add_global_options(dump, default=argparse.SUPPRESS)
    return parser


def _run_wal(args: argparse.Namespace) -> int:
    from beaverq.impl.storage.fs import RealFileSystem
    from beaverq.impl.storage.wal_dump import dump_wal

    directory = data_dir(args)
    if not os.path.isdir(directory):
        return fail(f"{directory}: no such data directory")
    try:
        for line in dump_wal(RealFileSystem(), directory):
            sys.stdout.write(line + "\n")
    except OSError as error:  # a segment that is a directory, or unreadable
        return fail(f"{error.filename or directory}: {error.strerror or error}")
    return 0


# -- The queue's commands: through the runner's control socket, or on the directory. ------


def _execute(args: argparse.Namespace, op: str, params: dict[str, Any]) -> Any:
    """Run ``op`` via a runner if one answers, else on the data directory itself;
    ``CommandFailed`` carries the one-line error."""
    from .cli_cluster import cluster_urls, execute_on_cluster
    from .control import execute

    if cluster_urls(args) is not None:
        return execute_on_cluster(args, op, params)
    return execute(data_dir(args), op, params)


def _json_value(text: str) -> Any:
    # Measured before parsing: Python's parser recurses per level (a traceback near
    # 1,000); the queue refuses payloads deeper than JSON_DEPTH_MAX anyway.
    if is_nested_deeper_than(text, JSON_DEPTH_MAX):
        raise argparse.ArgumentTypeError(
            f"ARGS_JSON nests arrays and objects deeper than JSON_DEPTH_MAX ({JSON_DEPTH_MAX}) "
            "levels"
        )
    try:
        return json.loads(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"ARGS_JSON is not valid JSON: {error}") from None


def _add_enqueue(subparsers: Subparsers[Parser]) -> Parser:
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
    parser.add_argument("--timeout", type=seconds, metavar="SECONDS", help="per attempt")
    parser.add_argument("--delay", type=seconds, metavar="SECONDS", help="before first run")
    parser.add_argument("--idempotency-key", metavar="K", help="same key: same job, once")
    parser.add_argument("--batch", metavar="FILE", help="JSON lines of jobs ('-': stdin)")
    return parser


_JOB_FLAGS = ("queue", "job_id", "priority", "max_attempts", "timeout", "delay", "idempotency_key")


def _run_enqueue(args: argparse.Namespace) -> int:
    if args.batch is not None:
        if args.handler is not None or any(getattr(args, f) is not None for f in _JOB_FLAGS):
            return usage("enqueue", "--batch takes no HANDLER, ARGS_JSON or job flags")
        return _enqueue_batch(args)
    if args.handler is None:
        return usage("enqueue", "give a HANDLER, or --batch FILE")
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
        return fail(f"{args.batch}: cannot read: {error}")
    jobs = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if is_nested_deeper_than(line, JSON_DEPTH_MAX + 1):  # + the job's own object
            return fail(
                f"{args.batch}: line {number}: nested deeper than a job object whose args "
                f"nest JSON_DEPTH_MAX ({JSON_DEPTH_MAX}) levels"
            )
        try:
            job = json.loads(line)
        except ValueError as error:
            return fail(f"{args.batch}: line {number}: not valid JSON: {error}")
        if not isinstance(job, dict):
            return fail(f"{args.batch}: line {number}: a job is a JSON object")
        jobs.append(job)
    if not jobs:
        return fail(f"{args.batch}: no jobs")
    return _print_outcome(lambda: _execute(args, "enqueue_batch", {"jobs": jobs}))


def _print_outcome(produce: Callable[[], list[str]]) -> int:
    from .control import CommandFailed

    try:
        lines = produce()
    except CommandFailed as failure:
        return fail(str(failure))
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    return 0


def _add_status(subparsers: Subparsers[Parser]) -> Parser:
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
    cluster = status.get("cluster")
    if cluster is not None:
        lines.append(
            f"cluster {cluster['name']}: {len(cluster['nodes'])} nodes "
            f"({', '.join(cluster['nodes'])}), {cluster['workers']} workers; leader "
            f"{cluster['leader']} (epoch {cluster['epoch']}); answered by "
            f"{cluster['answered_by']} at LSN {status['last_lsn']}"
        )
    elif runtime is None:
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


def _add_show(subparsers: Subparsers[Parser]) -> Parser:
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


def _add_jobs(subparsers: Subparsers[Parser]) -> Parser:
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
        return fail(str(failure))
    if result is None:  # show: no such job
        return fail(f"unknown job {echo(params.get('job_id'))}")
    if args.json:
        sys.stdout.write(json.dumps(result, ensure_ascii=False, indent=2) + "\n")
    else:
        sys.stdout.write(render(result))
    return 0


def _job_command(name: str, help_text: str, description: str) -> Command:
    """``cancel`` and ``requeue``: a job id in, the job's status out."""

    def add(subparsers: Subparsers[Parser]) -> Parser:
        parser = subparsers.add_parser(name, help=help_text, description=description)
        parser.add_argument("job_id", metavar="JOB_ID")
        return parser

    def run(args: argparse.Namespace) -> int:
        return _print_outcome(lambda: [_execute(args, name, {"job_id": args.job_id})])

    return add, run


def _queue_command(name: str, help_text: str, description: str) -> Command:
    """``pause`` and ``resume``: a queue name in, nothing out."""

    def add(subparsers: Subparsers[Parser]) -> Parser:
        parser = subparsers.add_parser(name, help=help_text, description=description)
        parser.add_argument("queue", metavar="Q")
        return parser

    def run(args: argparse.Namespace) -> int:
        def act() -> list[str]:
            _execute(args, name, {"queue": args.queue})
            return []  # success says nothing, like mkdir

        return _print_outcome(act)

    return add, run


# -- demo ---------------------------------------------------------------------------------


def _add_demo(subparsers: Subparsers[Parser]) -> Parser:
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
    if "--cluster" in argv:
        # 'demo --cluster': 3 etcd members and 3 nodes of its own (teaching/cluster_demo.py).
        from beaverq.teaching.cluster_demo import run_cluster_demo

        return run_cluster_demo([arg for arg in argv if arg != "--cluster"])
    if getattr(args, "data_dir", None):
        argv = ["--data-dir", args.data_dir, *argv]
    return run_demo(argv)


# -- The command table and the entry point. ----------------------------------------------

Command = tuple[
    Callable[["argparse._SubParsersAction[Parser]"], Parser],
    Callable[[argparse.Namespace], int],
]
COMMANDS: dict[str, Command] = {
    "simulate": (_add_simulate, _run_simulate),
    "verify": (_add_verify, _run_verify),
    "wal": (_add_wal, _run_wal),
    "enqueue": (_add_enqueue, _run_enqueue),
    "run": (add_run, run_run),
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
    "cluster": (add_cluster, run_cluster),
}
#: Commands whose unknown options are passed on to their own parser.
PASS_ON = frozenset({"demo"})


def build_parser() -> Parser:
    parser = Parser(
        prog=PROG,
        description="beaverq: a crash-safe job queue, built as a formally-modelled "
        "reference implementation.",
        epilog="Run 'beaverq <command> --help' for a command's options. Exit status: 0 done, "
        "1 the command failed, 2 bad command line.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    add_global_options(parser, default=None)
    subparsers = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for add, run in COMMANDS.values():
        subparser = add(subparsers)
        add_global_options(
            subparser, default=argparse.SUPPRESS, cluster=subparser.prog != "beaverq demo"
        )
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


def _version() -> str:
    try:
        return metadata.version("beaverq")
    except metadata.PackageNotFoundError:  # running from a tree that is not installed
        return "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
