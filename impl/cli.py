"""The command line: ``beaverq [--data-dir DIR] <command> [options]``.

Each command is two small functions: ``_add_<command>`` declares its arguments on
its own subparser, and ``_run_<command>(args) -> int`` does the work and returns
the exit status.  ``COMMANDS`` lists the pairs; adding a command (``enqueue``,
``run``, ``status``, ...) is adding a pair there and nothing else.

Exit status, for every command:

* 0: done;
* 1: the command ran and failed; one line on stderr says why;
* 2: the command line is wrong; one line on stderr says what (argparse's status).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from importlib import metadata
from typing import NoReturn

from .simulate import (
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
    from .fs import RealFileSystem
    from .verify import format_report, verify_data_dir

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
    from .fs import RealFileSystem
    from .wal_dump import dump_wal

    directory = _data_dir(args)
    if not os.path.isdir(directory):
        return _fail(f"{directory}: no such data directory")
    for line in dump_wal(RealFileSystem(), directory):
        sys.stdout.write(line + "\n")
    return 0


# -- The command table and the entry point. ----------------------------------------------

Command = tuple[
    Callable[["argparse._SubParsersAction[_Parser]"], _Parser],
    Callable[[argparse.Namespace], int],
]
COMMANDS: dict[str, Command] = {
    "simulate": (_add_simulate, _run_simulate),
    "verify": (_add_verify, _run_verify),
    "wal": (_add_wal, _run_wal),
}


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
    args = build_parser().parse_args(argv)
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
