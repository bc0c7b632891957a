"""``beaverq run``: hold the data directory and run its jobs until a signal.

``api.Runner`` does the running (the controller, the pool, the control socket); this
module adds what a command line needs around it: the options, the signals (the first
stops gracefully, the second ends the grace), ``--until-idle`` and ``--metrics-port``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from beaverq.impl.runtime.dispatch_window import HORIZON_S_DEFAULT
from beaverq.model.errors import BrokenInvariant

from .cli_args import PROG, Parser, Subparsers, data_dir, fail, int_between, seconds
from .cli_cluster import add_node_options, cluster_urls, run_node


def add_run(subparsers: Subparsers[Parser]) -> Parser:
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
        type=int_between(1, 1_000),
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
        type=int_between(0, 65535),
        metavar="PORT",
        help="serve Prometheus metrics on 127.0.0.1:PORT/metrics (0: any free port)",
    )
    parser.add_argument(
        "--snapshot-interval",
        type=seconds,
        default=2.0,
        metavar="SECONDS",
        help="snapshot at most this often when anything changed (default 2)",
    )
    parser.add_argument(
        "--lease-ahead",
        type=seconds,
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
        help="register MODULE's handlers (repeatable): a module name, looked for on the "
        "path and then in the current directory as 'python -m' does, or a file "
        "(--import ./jobs/tasks.py)",
    )
    parser.add_argument(
        "--grace",
        type=seconds,
        default=10.0,
        metavar="SECONDS",
        help="how long running jobs may finish on stop (default 10)",
    )
    add_node_options(parser)
    return parser


def run_run(args: argparse.Namespace) -> int:
    from beaverq.impl.runtime.handlers import HandlerRegistry

    from .api import RunFailed, Runner

    try:
        registry = HandlerRegistry(allow_shell=args.allow_shell)
        for module in args.imports:
            registry.import_module(module)
    except (ImportError, ValueError, TypeError) as error:
        return fail(f"--import: {error}")
    if cluster_urls(args) is not None:
        signals = _Signals()
        try:
            return run_node(args, registry, signals.stop)
        finally:
            signals.restore()
    runner = Runner(
        data_dir(args),
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
        return fail(str(failure))
    if runner.controller is None:
        raise BrokenInvariant("broken invariant: runner.controller is not None")
    try:
        stop_metrics = _start_metrics(args, runner)
    except OSError as error:
        runner.stop(0.0)
        signals.restore()
        return fail(f"--metrics-port {args.metrics_port}: {error.strerror or error}")
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
        return fail(str(outcome["failure"]))
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
