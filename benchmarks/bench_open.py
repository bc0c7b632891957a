"""Benchmark of CLI commands without a runner, against the size of the data directory.

Not a test: it measures and prints a Markdown table (``--write`` records it in
docs/performance.md).  It is the baseline of the goal "a command without a runner
costs at most 0.1 s more on 100,000 jobs than on an empty directory, 0.3 s more on
1,000,000" (docs/performance.md, "Opening").

Method:

1. For each size N, build a data directory holding N pending no-op jobs, the way a
   user gets one: the events of N enqueues through the real storage (one batch),
   then a snapshot, then the directory closed.  Build it once per size.
2. For each command, run the real ``beaverq`` console script in a child process on
   a fresh copy of that directory (so a command that writes starts from the same
   bytes every time), ``--repeat`` times, and keep the median wall time and the
   median CPU time (user + system of the child, from ``wait4``).
3. Report each command's cost over the empty directory's, against the goal.

Run: ``python benchmarks/bench_open.py [--sizes 0,10000,100000] [--repeat 3] [--write]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import attrs

from beaverq.impl.storage.fs import RealFileSystem
from beaverq.impl.storage.storage import Storage
from beaverq.model import Enqueue, Event, State, decide, evolve

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "performance.md"
BEGIN, END = "<!-- bench_open:start -->", "<!-- bench_open:end -->"
BEAVERQ = str(Path(sys.executable).with_name("beaverq"))
#: The goal: extra seconds over the empty directory, by size.
EXTRA_S_MAX = {100_000: 0.1, 1_000_000: 0.3}
#: The commands measured; ``{job}`` is a job id the directory holds.
COMMANDS: tuple[tuple[str, ...], ...] = (
    ("status",),
    ("show", "{job}"),
    ("jobs", "--state", "dead"),
    ("enqueue", "noop"),
    ("cancel", "{job}"),
)


@attrs.frozen
class Measurement:
    size: int
    command: str
    wall_s: float
    cpu_s: float


def build_data_dir(directory: Path, size: int) -> str:
    """N pending jobs in a snapshot; returns the id of one of them ('' when empty)."""
    storage, state, _report = Storage.open(RealFileSystem(), str(directory))
    events: list[Event] = []
    for index in range(size):
        state, made = _decide(state, Enqueue(now_ms=index, handler="noop", job_id=f"b{index}"))
        events.extend(made)
    storage.append(events)
    storage.flush()
    storage.take_snapshot(state)
    storage.close()
    return "b0" if size else ""


def _decide(state: State, command: Enqueue) -> tuple[State, tuple[Event, ...]]:
    events = decide(state, command)
    for event in events:
        state = evolve(state, event)
    return state, events


def run_once(template: Path, scratch: Path, argv: list[str], exit_code: int) -> tuple[float, float]:
    """Wall and CPU seconds of one command, on a fresh copy of ``template``; a command
    that does not exit with ``exit_code`` stops the benchmark (it measured nothing)."""
    target = scratch / "run"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(template, target)
    started = time.perf_counter()
    process = subprocess.Popen(
        [BEAVERQ, *argv, "--data-dir", str(target)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _pid, status, usage = os.wait4(process.pid, 0)
    wall_s = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != exit_code:
        raise SystemExit(f"{argv} exited {process.returncode}, expected {exit_code}")
    return wall_s, usage.ru_utime + usage.ru_stime


def measure(sizes: list[int], repeat: int) -> list[Measurement]:
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-open-") as root:
        scratch = Path(root)
        for size in sizes:
            template = scratch / f"size-{size}"
            job = build_data_dir(template, size) or "nothing"
            for command in COMMANDS:
                argv = [part.format(job=job) for part in command]
                # On the empty directory, show and cancel are refused (no such job, exit
                # 1): the cost of finding that out is their baseline.
                exit_code = 1 if job == "nothing" and "{job}" in command else 0
                samples = [run_once(template, scratch, argv, exit_code) for _ in range(repeat)]
                wall = statistics.median(sample[0] for sample in samples)
                cpu = statistics.median(sample[1] for sample in samples)
                results.append(Measurement(size, " ".join(command), wall, cpu))
                print(f"N={size:>9,} {' '.join(command):<20} wall {wall:.3f} s  cpu {cpu:.3f} s")
    return results


def table(results: list[Measurement]) -> str:
    empty = {m.command: m.wall_s for m in results if m.size == 0}
    lines = [
        "| jobs | command | wall s | CPU s | wall over empty | goal |",
        "|---:|---|---:|---:|---:|---|",
    ]
    for m in results:
        over = m.wall_s - empty.get(m.command, m.wall_s)
        goal = EXTRA_S_MAX.get(m.size)
        verdict = "" if goal is None else ("met" if over <= goal else f"missed (<= {goal} s)")
        lines.append(
            f"| {m.size:,} | `{m.command}` | {m.wall_s:.3f} | {m.cpu_s:.3f} | "
            f"{over:+.3f} | {verdict} |"
        )
    return "\n".join(lines)


def write_doc(text: str) -> None:
    doc = DOC.read_text()
    block = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in doc:
        head, rest = doc.split(BEGIN, 1)
        doc = head + block + rest.split(END, 1)[1]
    else:
        doc = doc.rstrip() + "\n\n## Opening: commands without a runner\n\n" + block + "\n"
    DOC.write_text(doc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0,10000,100000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="record in docs/performance.md")
    options = parser.parse_args()
    sizes = [int(size) for size in options.sizes.split(",")]
    if 0 not in sizes:
        sizes.insert(0, 0)  # the baseline every other size is compared with
    if options.repeat < 1:
        parser.error("--repeat must be at least 1")
    results = measure(sizes, options.repeat)
    machine = f"{platform.machine()}, Python {platform.python_version()}, {os.cpu_count()} CPUs"
    text = (
        f"Machine: {machine}, {time.strftime('%Y-%m-%d')}. Command: `python "
        f"benchmarks/bench_open.py --sizes {options.sizes} --repeat {options.repeat}`; "
        "median of the repeats, each on a fresh copy of the directory.\n\n" + table(results)
    )
    print(text)
    if options.write:
        write_doc(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
