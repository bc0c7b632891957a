"""``beaverq verify``: check a data directory offline, changing nothing.

It does what recovery does, but read-only: every snapshot is decoded and checked,
the WAL is read from the newest valid snapshot on, the events are replayed, and
the resulting state is checked against the spec's invariants.  A torn tail is a
warning (recovery would cut it); corruption, a damaged-but-unfallbackable
snapshot or a broken invariant is an error.  Nothing is locked, truncated or
deleted, so it is safe to run next to a stopped queue or on a copy.
"""

from __future__ import annotations

import posixpath

import attrs

from beaverq.model import State, evolve, initial_state
from beaverq.model.checkpoint import restore
from beaverq.model.errors import BrokenInvariant

from .codec import SCHEMA_VERSIONS_READABLE, CodecError, decode_checkpoint, read_event
from .fs import FileSystem, StorageError
from .record import HEADER_BYTES, FrameProblem, Record, decode_frame, is_zero
from .snapshot import decode_snapshot, list_snapshots
from .wal_reader import TornTail, WalCorrupt, list_segments, read_wal


@attrs.frozen
class VerifyReport:
    lines: tuple[str, ...]
    errors: tuple[str, ...]
    warnings: tuple[str, ...]
    state: State | None

    @property
    def ok(self) -> bool:
        return not self.errors


def verify_data_dir(fs: FileSystem, directory: str) -> VerifyReport:
    """The report on ``directory``; a file that cannot be read (the path is a file, a
    segment is a directory, permission denied) is an error of the report, named."""
    try:
        return _verify(fs, directory)
    except OSError as error:
        where = error.filename or directory
        reason = error.strerror or str(error)
        return VerifyReport((f"data dir: {directory}",), (f"{where}: {reason}",), (), None)


def _verify(fs: FileSystem, directory: str) -> VerifyReport:
    lines: list[str] = [f"data dir: {directory}"]
    errors: list[str] = []
    warnings: list[str] = []
    if not fs.exists(directory):
        errors.append(f"{directory}: no such directory")
        return VerifyReport(tuple(lines), tuple(errors), tuple(warnings), None)
    state, chain = _newest_valid_snapshot(fs, directory, lines, errors)
    try:
        contents = read_wal(fs, directory, after_lsn=state.last_lsn, after_chain_crc=chain)
    except WalCorrupt as error:
        errors.append(str(error))
        return VerifyReport(tuple(lines), tuple(errors), tuple(warnings), None)
    except StorageError as error:
        errors.append(str(error))
        return VerifyReport(tuple(lines), tuple(errors), tuple(warnings), None)
    segments = list_segments(fs, directory)
    lines.append(
        f"wal: {len(segments)} segment(s), {len(contents.records)} record(s) after LSN "
        f"{state.last_lsn}, last LSN {contents.last_lsn}, chain intact"
    )
    if contents.torn_tail is not None:
        warnings.append(_torn_tail_warning(fs, contents.torn_tail, contents.last_lsn))
    for segment in contents.segments:
        if segment.schema_version not in SCHEMA_VERSIONS_READABLE:
            errors.append(
                f"{segment.path}: schema version {segment.schema_version}; "
                f"this beaverq reads {sorted(SCHEMA_VERSIONS_READABLE)}"
            )
    if errors:
        return VerifyReport(tuple(lines), tuple(errors), tuple(warnings), None)
    for record, schema_version in zip(
        contents.records, contents.record_schema_versions, strict=True
    ):
        try:
            event = read_event(state, record.payload, schema_version)
            # The pairing recovery checks (storage.replay_records): without it a
            # frame holding an earlier event would be skipped by evolve's LSN guard.
            if event is None or event.lsn != record.lsn:
                held = "an event at or below it" if event is None else repr(event)
                raise BrokenInvariant(f"frame LSN {record.lsn} holds {held}")
            state = evolve(state, event)
        except (CodecError, BrokenInvariant) as error:
            errors.append(f"record LSN {record.lsn} at byte {record.offset}: {error}")
            return VerifyReport(tuple(lines), tuple(errors), tuple(warnings), None)
    counts = state.counts
    lines.append(
        f"state at LSN {state.last_lsn}: {counts.total} job(s): pending {counts.pending}, "
        f"delayed {counts.delayed}, in flight {counts.in_flight}, completed {counts.completed}, "
        f"dead {counts.dead}, cancelled {counts.cancelled}; paused queues: "
        f"{', '.join(sorted(state.paused)) or 'none'}"
    )
    problems = _invariant_problems(state)
    if problems:
        errors.extend(problems)
    else:
        lines.append("invariants: all hold")
    return VerifyReport(tuple(lines), tuple(errors), tuple(warnings), state)


def _torn_tail_warning(fs: FileSystem, torn: TornTail, last_lsn: int) -> str:
    """What recovery will cut, and what that may cost.  A crash mid-write leaves an
    incomplete frame or zeros (never acknowledged: the fsync had not returned); a
    complete frame that fails its checks may be just that, or a durable record
    damaged later (a bit flip), which may have been acknowledged.  The reader cannot
    tell the two apart, so it says so rather than promise nothing is lost."""
    cut = f"{torn.path}: torn tail at byte {torn.offset} ({torn.size - torn.offset} bytes"
    cut += f", {torn.reason}), after LSN {last_lsn}; recovery will cut it"
    data = fs.read(torn.path)
    if is_zero(data, torn.offset):
        return f"{cut}: zero bytes, a write a crash cut short (never acknowledged)"
    frame = decode_frame(data, torn.offset, None)
    if isinstance(frame, FrameProblem) and _incomplete(frame):
        return f"{cut}: an incomplete frame, a write a crash cut short (never acknowledged)"
    claimed = f"LSN {frame.lsn}" if isinstance(frame, Record) else f"LSN {last_lsn + 1}"
    return (
        f"{cut}: a complete frame that fails its checks, which may be a durable record "
        f"damaged later; {claimed} and any after it may have been acknowledged "
        f"(the cut bytes are kept as {posixpath.basename(torn.path)}.cut-{torn.offset})"
    )


def _incomplete(problem: FrameProblem) -> bool:
    return problem.reason.endswith(("overruns the file end", f"needs {HEADER_BYTES}"))


def _newest_valid_snapshot(
    fs: FileSystem, directory: str, lines: list[str], errors: list[str]
) -> tuple[State, int]:
    chosen: tuple[State, int] | None = None
    for candidate in list_snapshots(fs, directory):
        name = posixpath.basename(candidate.path)
        try:
            loaded = decode_snapshot(fs.read(candidate.path), candidate.path)
        except StorageError as error:
            errors.append(str(error))
            continue
        if isinstance(loaded, str):
            lines.append(f"snapshot {name}: damaged ({loaded}); recovery skips it")
            continue
        if loaded.schema_version not in SCHEMA_VERSIONS_READABLE:
            errors.append(f"{candidate.path}: schema version {loaded.schema_version}")
            continue
        try:
            checkpoint = decode_checkpoint(loaded.body)
        except CodecError as error:
            lines.append(f"snapshot {name}: undecodable ({error}); recovery skips it")
            continue
        try:
            state = restore(checkpoint)
        except BrokenInvariant as error:
            # Intact bytes that decode to an inconsistent state: the writer had a bug.
            # Recovery refuses it loudly (it does not fall back), and so does verify.
            errors.append(f"{candidate.path}: broken invariant: {error}")
            continue
        lines.append(f"snapshot {name}: LSN {loaded.lsn}, {state.counts.total} job(s), valid")
        if chosen is None:
            chosen = (state, loaded.chain_crc)
    if chosen is None:
        lines.append("snapshot: none valid; the WAL must start at LSN 0")
        return initial_state(), 0
    return chosen


def _invariant_problems(state: State) -> list[str]:
    from beaverq.spec.invariants import check_all

    try:
        check_all(state)
    except BrokenInvariant as error:
        return [f"invariant broken: {error}"]
    return []


def format_report(report: VerifyReport) -> str:
    lines = list(report.lines)
    lines += [f"warning: {warning}" for warning in report.warnings]
    lines += [f"error: {error}" for error in report.errors]
    lines.append("verdict: " + ("OK" if report.ok else "FAILED"))
    return "\n".join(lines)
