"""What every command of the command line shares: its parser class, its argument
types, the global options, and how a failure is printed (impl/frontends/cli.py)."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from typing import NoReturn

PROG = "beaverq"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors take one line: what is wrong, and where to look."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def int_between(low: int, high: int) -> Callable[[str], int]:
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


def add_global_options(
    parser: argparse.ArgumentParser, default: object, *, cluster: bool = True
) -> None:
    # Declared on the main parser and again on every subparser, so that global
    # options may come before or after the command.  The subparsers' default is
    # SUPPRESS: an option given before the command is not overwritten after it.
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        default=default,
        help="folder holding the queue's log and snapshots (default $BEAVERQ_DATA_DIR, "
        "else ./beaverq-data; 'simulate' keeps no state and ignores it)",
    )
    if not cluster:
        return  # 'demo' has a --cluster flag of its own (its parser, teaching/demo.py)
    parser.add_argument(
        "--cluster",
        metavar="URLS",
        default=default,
        help="etcd client URLs, comma-separated: use a beaverq cluster instead of a data "
        "directory (default $BEAVERQ_CLUSTER; docs/cluster.md)",
    )
    parser.add_argument(
        "--cluster-name",
        metavar="NAME",
        default=default,
        help="which beaverq cluster on that etcd (default $BEAVERQ_CLUSTER_NAME or 'default')",
    )


Subparsers = argparse._SubParsersAction  # shorthand for the annotations below


def seconds(text: str) -> float:
    """An argparse ``type``: a finite number of seconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def data_dir(args: argparse.Namespace) -> str:
    """``--data-dir``, else ``$BEAVERQ_DATA_DIR``, else ``./beaverq-data``."""
    chosen = getattr(args, "data_dir", None) or os.environ.get("BEAVERQ_DATA_DIR")
    return os.path.abspath(chosen or "beaverq-data")


def fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 1


def usage(command: str, message: str) -> int:
    print(f"{PROG} {command}: error: {message} (see '{PROG} {command} --help')", file=sys.stderr)
    return 2
