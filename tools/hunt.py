"""Run Hypothesis tests under the ``thorough`` profile, round after round, until a deadline.

A long hunt is how the crash tests earn trust: one ``thorough`` round of the storage crash
machine is 10,000 runs of up to 200 steps; this script repeats such rounds, each with a
fresh random seed, until the time is up or a round fails. Every round's seed, verdict and
duration go to a log, so a failure can be replayed (``--hypothesis-seed``) and a clean hunt
can be quoted with figures.

Usage (from the repo root, in the project's venv)::

    python tools/hunt.py --hours 2.5 --examples 500 --log hunt.log \
        tests/stateful/test_storage_crash.py

One full ``thorough`` round of the storage crash machine (10,000 runs of up to 200
steps) takes about two hours on a free core (0.7 s per run); ``--examples`` makes
rounds smaller (the same depth per run, fewer runs per seed), so that a hunt of a few
hours ends rounds and logs verdicts.

Exit status: 0 if every round passed, 1 at the first failing round (the hunt stops there,
since the point is a shrunk, replayable example, not a count of failures).
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
from pathlib import Path


def run_round(
    tests: list[str], seed: int, log_dir: Path, number: int, examples: int | None
) -> tuple[bool, float]:
    """One pytest run of ``tests`` under the thorough profile; its output kept in a file."""
    output = log_dir / f"round-{number:03d}.txt"
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "--hypothesis-profile=thorough",
        "--hypothesis-show-statistics",  # runs made, and where the time went
        f"--hypothesis-seed={seed}",
        *tests,
    ]
    environment = dict(os.environ)
    if examples is not None:
        environment["BEAVERQ_THOROUGH_EXAMPLES"] = str(examples)  # tests/conftest.py
    started = time.monotonic()
    with output.open("w") as sink:
        finished = subprocess.run(
            command, stdout=sink, stderr=subprocess.STDOUT, check=False, env=environment
        )
    return finished.returncode == 0, time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tests", nargs="+", help="pytest node ids or files to hunt with")
    parser.add_argument(
        "--hours", type=float, required=True, help="stop starting rounds after this"
    )
    parser.add_argument("--log", type=Path, required=True, help="summary log (one line per round)")
    parser.add_argument(
        "--examples",
        type=int,
        help="runs per round (default: the thorough profile's 10,000, about two hours "
        "for the storage crash machine on a free core)",
    )
    args = parser.parse_args(argv)
    if args.hours <= 0:
        parser.error("--hours must be positive")
    if args.examples is not None and args.examples < 1:
        parser.error("--examples must be at least 1")

    log_dir = args.log.with_suffix(".rounds")
    log_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.hours * 3600
    seeds = random.SystemRandom()
    total = 0.0
    number = 0
    with args.log.open("a") as log:
        log.write(
            f"hunt start {time.strftime('%Y-%m-%dT%H:%M:%S')} pid {os.getpid()} "
            f"tests {' '.join(args.tests)} hours {args.hours}\n"
        )
        log.flush()
        while time.monotonic() < deadline:
            number += 1
            seed = seeds.getrandbits(64)
            passed, seconds = run_round(args.tests, seed, log_dir, number, args.examples)
            total += seconds
            verdict = "passed" if passed else "FAILED"
            log.write(
                f"round {number} seed {seed} {verdict} {seconds:.0f} s "
                f"(total {total / 60:.1f} min)\n"
            )
            log.flush()
            if not passed:
                return 1
        log.write(f"hunt end: {number} rounds passed, {total / 3600:.2f} h\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
