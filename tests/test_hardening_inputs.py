"""The smaller points of issue 11: deep JSON, unreadable paths for the offline readers,
an idle runner with --snapshot-interval 0, echoed values, no-op pause/resume, and
what ``verify`` may promise about a damaged tail.

Each is tested where it shows: through a real ``beaverq`` process where the command
line is what misbehaved, on the model (and the oracle) for the JSON rule.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest
from disk_support import CLI, WAIT_S, Runner, beaverq, wait_until
from hypothesis import given
from hypothesis import strategies as st

from beaverq.impl.runtime.loops import SNAPSHOT_RETRY_S_MAX, SNAPSHOT_RETRY_S_MIN, SnapshotRetry
from beaverq.impl.storage.fs import RealFileSystem
from beaverq.impl.storage.storage import Storage
from beaverq.model import (
    Complete,
    Enqueue,
    JobFailed,
    Lease,
    Rejected,
    decide,
    evolve,
    initial_state,
    limits,
)
from beaverq.model.errors import ECHO_CHARS_MAX
from beaverq.model.validation import is_nested_deeper_than
from beaverq.spec.oracle import Oracle, _nesting_depth

DEEP = 995  # where Python's JSON reader used to give up with a RecursionError


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def files_of(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


# -- Deep JSON. ----------------------------------------------------------------------------


def test_json_nested_to_the_limit_is_accepted_and_one_deeper_is_refused() -> None:
    """Goal: JSON_DEPTH_MAX is enforced exactly at its boundary, for args (refused
    with args_json_too_deep) and results (the attempt fails, saying why), and text
    far deeper than Python's parser can read is refused the same way, not crashed on.
    Method: decide Enqueue with args 64, 65 and 995 levels deep; complete a leased
    attempt with a result 65 deep."""
    assert limits.JSON_DEPTH_MAX == 64
    decide(initial_state(), Enqueue(now_ms=1, handler="h", args_json=nested(64)))
    for depth in (65, DEEP, 30_000):
        with pytest.raises(Rejected) as refused:
            decide(initial_state(), Enqueue(now_ms=1, handler="h", args_json=nested(depth)))
        assert refused.value.rejection.rule == "args_json_too_deep"
        assert "JSON_DEPTH_MAX" in refused.value.rejection.detail
    state = initial_state()
    for command in (Enqueue(now_ms=1, handler="h", job_id="a"), Lease(now_ms=2, worker_id="w")):
        for event in decide(state, command):
            state = evolve(state, event)
    (failed,) = decide(state, Complete(now_ms=3, job_id="a", attempt=1, result_json=nested(65)))
    assert isinstance(failed, JobFailed) and "JSON_DEPTH_MAX" in failed.error


JSON_ALPHABET = st.text(alphabet='[]{}"\\a,:', max_size=200)


@given(text=JSON_ALPHABET, depth_max=st.integers(0, 12))
def test_model_and_oracle_measure_depth_alike(text: str, depth_max: int) -> None:
    """Goal: the model's depth scan (regex tokens, stopping early) and the oracle's
    (one character at a time) read the rule of docs/semantics.md alike, on any text,
    valid JSON or not (strings, escapes, unbalanced brackets).
    Method: Hypothesis draws texts from the characters that matter."""
    assert is_nested_deeper_than(text, depth_max) == (_nesting_depth(text) > depth_max)


@given(depth=st.integers(0, 3 * limits.JSON_DEPTH_MAX), padding=st.sampled_from(["", '"[", ']))
def test_model_and_oracle_refuse_the_same_deep_args(depth: int, padding: str) -> None:
    """Goal: an Enqueue with deep args is refused by both, with the same rule, or
    accepted by both.  Method: decide it in the model and execute it in the oracle,
    with and without brackets inside a string before the nesting."""
    args = "[" * depth + padding + "0" + "]" * depth if depth else "0"
    command = Enqueue(now_ms=1, handler="h", args_json=args)
    try:
        decide(initial_state(), command)
        model_rule = None
    except Rejected as rejected:
        model_rule = rejected.rejection.rule
    try:
        Oracle().execute(command)
        oracle_rule = None
    except Rejected as rejected:
        oracle_rule = rejected.rejection.rule
    assert model_rule == oracle_rule
    assert (model_rule == "args_json_too_deep") == (depth > limits.JSON_DEPTH_MAX)


def test_deep_json_on_the_command_line_is_refused_in_one_line(tmp_path: Path) -> None:
    """Goal: ARGS_JSON or a batch line nested ~995 deep gets a one-line refusal
    naming JSON_DEPTH_MAX (was a RecursionError traceback), and writes nothing.
    Method: run ``beaverq enqueue`` both ways on a fresh path."""
    data_dir = tmp_path / "data"
    done = beaverq(data_dir, "enqueue", "noop", nested(DEEP))
    assert done.returncode == 2 and "JSON_DEPTH_MAX" in one_line(done.stderr)
    line = json.dumps({"handler": "noop"})[:-1] + ', "args": ' + nested(DEEP) + "}\n"
    done = beaverq(data_dir, "enqueue", "--batch", "-", stdin=line)
    assert done.returncode == 1 and "JSON_DEPTH_MAX" in one_line(done.stderr)
    assert not data_dir.exists()
    done = beaverq(data_dir, "enqueue", "noop", nested(limits.JSON_DEPTH_MAX))
    assert done.returncode == 0, done.stderr


# -- verify and wal dump on paths they cannot read. ------------------------------------------


def test_verify_and_wal_dump_name_what_they_cannot_read(tmp_path: Path) -> None:
    """Goal: ``verify`` and ``wal dump`` answer a path that is a file, and a segment
    that is a directory, with one line naming the path (exit 1), never a traceback.
    Method: a file as --data-dir; a data directory whose only segment is a folder."""
    a_file = tmp_path / "file"
    a_file.write_text("not a data directory")
    for argv in (["verify"], ["wal", "dump"]):
        done = beaverq(a_file, *argv)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert str(a_file) in done.stdout + done.stderr
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "wal-0000000000000000-0000000000000000.log").mkdir()
    done = beaverq(data_dir, "verify")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "Is a directory" in done.stdout
    done = beaverq(data_dir, "wal", "dump")
    assert done.returncode == 1 and "Is a directory" in one_line(done.stderr)


def test_verify_and_wal_dump_name_an_unreadable_directory(tmp_path: Path) -> None:
    """Goal: a data directory the user may not read gets one line, not a traceback.
    Method: mode 000 on the directory; as root, who reads everything, the commands
    run without the capabilities that override file modes (setpriv); skipped where
    that cannot be arranged."""
    data_dir = tmp_path / "data"
    assert beaverq(data_dir, "enqueue", "noop").returncode == 0
    prefix = (
        [] if os.geteuid() != 0 else ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
    )
    data_dir.chmod(0o000)
    try:
        for argv in (["verify"], ["wal", "dump"]):
            try:
                done = subprocess.run(
                    [*prefix, *CLI, "--data-dir", str(data_dir), *argv],
                    capture_output=True,
                    text=True,
                    timeout=WAIT_S,
                )
            except OSError as error:
                pytest.skip(f"cannot drop the capability to read any file here: {error}")
            if prefix and done.returncode != 1 and "setpriv" in done.stderr:
                pytest.skip(f"setpriv refused here: {done.stderr.strip()}")
            assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
            assert "Permission denied" in done.stdout + done.stderr
            assert str(data_dir) in done.stdout + done.stderr
    finally:
        data_dir.chmod(0o700)


# -- An idle runner with --snapshot-interval 0. ----------------------------------------------


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_an_idle_runner_with_snapshot_interval_0_does_not_spin(tmp_path: Path) -> None:
    """Goal: ``run --snapshot-interval 0`` idles without spinning (it used 64 % of a
    core).  Method: start it, let it settle until it answers ``status``, then watch
    its CPU time over 1.5 s of wall time (the wait is for its exit, which must not
    come): it stays under 0.3 s, whatever else the machine runs."""
    data_dir = tmp_path / "data"
    assert beaverq(data_dir, "enqueue", "noop").returncode == 0
    runner = Runner(data_dir, "--snapshot-interval", "0")
    try:
        wait_until(lambda: beaverq(data_dir, "status").returncode == 0)
        before = _cpu_seconds(runner.process.pid)
        with pytest.raises(subprocess.TimeoutExpired):
            runner.process.wait(timeout=1.5)
        assert _cpu_seconds(runner.process.pid) - before < 0.3
    finally:
        runner.kill()


def test_snapshot_retries_back_off_from_the_interval_to_the_cap() -> None:
    """Goal: each failed snapshot in a row doubles the wait before the next, from the
    interval (at least SNAPSHOT_RETRY_S_MIN) to SNAPSHOT_RETRY_S_MAX; a success
    resets it.  Method: drive ``SnapshotRetry`` with explicit times."""
    retry = SnapshotRetry(now=0.0)
    assert not retry.waiting(0.0)
    waits = []
    for _ in range(10):
        retry.failed(now=100.0, interval_s=0.0)
        waits.append(retry.retry_at - 100.0)
    assert waits[:3] == [SNAPSHOT_RETRY_S_MIN, 2 * SNAPSHOT_RETRY_S_MIN, 4 * SNAPSHOT_RETRY_S_MIN]
    assert waits[-1] == SNAPSHOT_RETRY_S_MAX and waits == sorted(waits)
    assert retry.waiting(100.0 + SNAPSHOT_RETRY_S_MAX - 0.1)
    retry.succeeded()
    retry.failed(now=200.0, interval_s=5.0)
    assert retry.retry_at == 205.0  # a longer interval is the first wait


def test_a_failed_snapshot_write_removes_its_temporary_file(tmp_path: Path) -> None:
    """Goal: a ``write_snapshot`` that fails half-way leaves no ``.snap.tmp`` behind
    and raises ``SnapshotFailed`` (an ``OSError`` still, as callers expect), saying so.
    Method: a child process limited to 4 KiB files (RLIMIT_FSIZE, so the write fails
    with EFBIG, as a full disk fails it with ENOSPC) writes a 10 KB snapshot."""
    script = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        "from beaverq.impl.storage.fs import RealFileSystem\n"
        "from beaverq.impl.storage.snapshot import SnapshotFailed, write_snapshot\n"
        "try:\n"
        "    write_snapshot(RealFileSystem(), sys.argv[1], 7, bytes(10_000))\n"
        "except SnapshotFailed as failure:\n"
        "    assert isinstance(failure, OSError)\n"
        "    print(failure)\n"
    )
    done = subprocess.run(
        [CLI[0], "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=WAIT_S
    )
    assert done.returncode == 0, done.stderr
    assert (
        "cannot write the snapshot" in done.stdout and "temporary file was removed" in done.stdout
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == []


# -- Echoed values. ------------------------------------------------------------------------


def test_a_huge_id_is_cut_in_the_error(tmp_path: Path) -> None:
    """Goal: an id of 100 KB on the command line or 10 MB in a batch is quoted in at
    most ECHO_CHARS_MAX characters of its error (it was echoed whole).
    Method: enqueue, cancel and show with such ids; measure stderr."""
    data_dir = tmp_path / "data"
    assert beaverq(data_dir, "enqueue", "noop").returncode == 0
    long_id = "x " * 50_000  # white space too: the message that quoted the value
    for argv in (["enqueue", "noop", "--id", long_id], ["cancel", long_id], ["show", long_id]):
        done = beaverq(data_dir, *argv)
        assert done.returncode == 1
        assert len(one_line(done.stderr)) < 3 * ECHO_CHARS_MAX + 200, argv[0]
    batch = json.dumps({"handler": "noop", "id": "x" * 10_000_000}) + "\n"
    done = beaverq(data_dir, "enqueue", "--batch", "-", stdin=batch)
    assert done.returncode == 1 and len(one_line(done.stderr)) < 3 * ECHO_CHARS_MAX + 200


def test_huge_values_of_the_wrong_type_are_cut_in_the_error(tmp_path: Path) -> None:
    """Goal: a value of the wrong type, an unknown field or parameter name, or an
    unknown operation is quoted in at most ECHO_CHARS_MAX characters of its error,
    with and without a runner (the parameter checks echoed them whole: 1 MB in, 1 MB
    of error out).
    Method: a batch of jobs whose priority, timeout or field name is 1 MB, without a
    runner (measure stderr); then raw requests with such values to a real runner's
    socket (measure each answer)."""
    data_dir = tmp_path / "data"
    huge = "x" * 1_000_000
    for job in ({"priority": huge}, {"timeout": huge}, {"max_attempts": huge}, {huge: 1}):
        batch = json.dumps({"handler": "noop", **job}) + "\n"
        done = beaverq(data_dir, "enqueue", "--batch", "-", stdin=batch)
        assert done.returncode == 1 and len(one_line(done.stderr)) < 3 * ECHO_CHARS_MAX + 200
    runner = Runner(data_dir)
    try:
        for request in (
            {"op": huge},
            {"op": "status", "params": {huge: 1}},
            {"op": "jobs", "params": {"state": huge}},
            {"op": "jobs", "params": {"limit": huge}},
            {"op": "enqueue", "params": {"job": {"handler": "noop", "delay": huge}}},
        ):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.settimeout(WAIT_S)
                client.connect(str(data_dir / "control.sock"))
                client.sendall(json.dumps(request).encode() + b"\n")
                with client.makefile("rb") as stream:
                    answer = json.loads(stream.readline())
            assert answer["ok"] is False and len(answer["error"]) < 3 * ECHO_CHARS_MAX + 200
    finally:
        runner.kill()


# -- No-op pause and resume. -----------------------------------------------------------------


def test_a_no_op_pause_or_resume_changes_no_byte(tmp_path: Path) -> None:
    """Goal: pausing a paused queue (or resuming a running one) without a runner
    writes nothing (each used to leave a new WAL segment).
    Method: pause once; then compare every file's bytes around a second pause and
    around resumes of a queue that is not paused."""
    data_dir = tmp_path / "data"
    assert beaverq(data_dir, "enqueue", "noop").returncode == 0
    assert beaverq(data_dir, "pause", "q").returncode == 0
    before = files_of(data_dir)
    assert beaverq(data_dir, "pause", "q").returncode == 0
    assert beaverq(data_dir, "resume", "other").returncode == 0
    assert files_of(data_dir) == before
    assert beaverq(data_dir, "resume", "q").returncode == 0  # a change: written
    assert json.loads(beaverq(data_dir, "status", "--json").stdout)["paused"] == []


# -- A damaged last frame. -----------------------------------------------------------------


def _log_ending_in_an_event(data_dir: Path) -> Path:
    """A data directory whose last segment ends with an event frame; that segment."""
    storage, state, _report = Storage.open(RealFileSystem(), str(data_dir))
    for index in range(3):
        events = decide(state, Enqueue(now_ms=index, handler="noop", job_id=f"a{index}"))
        storage.append(events)
        for event in events:
            state = evolve(state, event)
        storage.flush()
    storage.close()
    return sorted(data_dir.glob("wal-*.log"))[-1]


def test_verify_does_not_promise_a_damaged_last_frame_was_never_acknowledged(
    tmp_path: Path,
) -> None:
    """Goal: a bit flip in the last (complete) frame of the active segment, which
    recovery cuts as a torn tail, is reported as possibly acknowledged, naming what
    is cut; zeros after the last frame (a write a crash cut short) are reported as
    never acknowledged.  Method: flip one payload bit of the last frame; then, on
    another directory, append zeros; run ``verify`` on each."""
    flipped = tmp_path / "flipped"
    segment = _log_ending_in_an_event(flipped)
    data = bytearray(segment.read_bytes())
    data[-12] ^= 0x01  # inside the last event's payload
    segment.write_bytes(bytes(data))
    done = beaverq(flipped, "verify")
    assert done.returncode == 0, done.stdout
    warning = next(line for line in done.stdout.splitlines() if line.startswith("warning:"))
    assert "nothing acknowledged is lost" not in done.stdout
    assert "may have been acknowledged" in warning and "LSN 3" in warning
    assert segment.name in warning
    zeroed = tmp_path / "zeroed"
    segment = _log_ending_in_an_event(zeroed)
    with segment.open("ab") as file:
        file.write(bytes(64))
    done = beaverq(zeroed, "verify")
    assert done.returncode == 0 and "never acknowledged" in done.stdout
    assert "may have been acknowledged" not in done.stdout


def test_run_on_a_data_dir_that_cannot_be_looked_at_fails_in_one_line(tmp_path: Path) -> None:
    """Goal: ``beaverq run`` on a path whose ``stat`` fails other than "no such file"
    (a component that is a file: ENOTDIR; a symlink loop: ELOOP) fails in one line, as
    it did before the data directory's trust check ran first.  Method: a real runner
    on each such path; it must exit 1 at once with one line naming the path."""
    (tmp_path / "a-file").write_text("")
    (tmp_path / "loop").symlink_to("loop")
    for data_dir in (tmp_path / "a-file" / "data", tmp_path / "loop"):
        done = beaverq(data_dir, "run", "--until-idle")
        assert done.returncode == 1, (done.stdout, done.stderr)
        assert str(data_dir) in one_line(done.stderr)
