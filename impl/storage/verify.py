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
from .snapshot import decode_snapshot, list_snapshots
from .wal_reader import WalCorrupt, list_segments, read_wal


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
        torn = contents.torn_tail
        warnings.append(
            f"{torn.path}: torn tail at byte {torn.offset} ({torn.size - torn.offset} bytes, "
            f"{torn.reason}); recovery will cut it, nothing acknowledged is lost"
        )
    for record, schema_version in zip(
        contents.records, contents.record_schema_versions, strict=True
    ):
        try:
            event = read_event(state, record.payload, schema_version)
            state = state if event is None else evolve(state, event)
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
            state = restore(decode_checkpoint(loaded.body))
        except (CodecError, BrokenInvariant) as error:
            lines.append(f"snapshot {name}: undecodable ({error}); recovery skips it")
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
