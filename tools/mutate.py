"""Prove the tests have teeth: apply known-bad changes one at a time, show the suite fails.

Usage (from the repository root)::

    .venv/bin/python tools/mutate.py                 # baseline, then every mutation
    .venv/bin/python tools/mutate.py --only 2a,6b    # some of them
    .venv/bin/python tools/mutate.py --write         # full run, then docs/mutations.md
    .venv/bin/python tools/mutate.py --check         # only: does every patch still apply?
    .venv/bin/python tools/mutate.py --list          # the mutations and their tests

How a mutation is run
=====================
Each mutation is a list of exact text replacements in the source, and a short list of
test files (the tests that should notice it, cheapest first).  For each one:

1. the repository is copied to a fresh temporary directory (without ``.venv``, ``.git``
   and caches); every replacement is applied to the copy, and its "before" text must
   occur exactly once, so a patch cannot apply silently to the wrong place or rot;
2. the package is installed editable from ``/work/main``, so the copy gets its own
   import root: ``<copy>/_pkgroot/beaverq/{model,impl,spec,teaching}`` are symlinks into the
   copy, and pytest runs in the copy with ``PYTHONPATH=<copy>/_pkgroot`` (the path
   finder comes before the editable finder in ``sys.meta_path``).  A small pytest
   plugin (``-p _mutate_probe``) checks at start-up that ``beaverq.model``,
   ``beaverq.impl`` and ``beaverq.spec`` were imported from the copy, and writes
   where they came from; the script refuses the result otherwise, because a table of
   mutants that were never imported would mean nothing;
3. pytest runs the listed files with ``-x -q -p no:cacheprovider``, the Hypothesis
   profile of ``BEAVERQ_HYPOTHESIS_PROFILE`` (``ci`` unless ``--profile`` says) and a
   fixed ``--hypothesis-seed`` (``--seed``), so a run is reproducible;
4. the outcome: **caught** (some test failed: pytest exit status 1), **survived** (all
   passed), or **error** (anything else: collection error, usage error, timeout); the
   first failing test and the first ``E`` line of its report are kept.

Before any mutation the unmutated copy runs every test file any mutation uses, and must
pass: a mutation "caught" by a test that fails anyway would prove nothing.

This is a tool, not part of CI: a full run takes several minutes (``--jobs`` runs
mutations side by side).  ``tests/test_mutate_script.py`` checks cheaply that every
patch still applies to the current source.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("model", "impl", "spec", "teaching")
PROBE_MODULE = "_mutate_probe"
DOC = ROOT / "docs" / "mutations.md"
TIMEOUT_S_DEFAULT = 900

# -- the mutations ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Edit:
    file: str  # relative to the repository root
    old: str  # must occur exactly once
    new: str


@dataclass(frozen=True)
class Mutation:
    key: str  # "1" .. "7" (with a letter for variants) are the issue's; 8 on are extras
    title: str
    where: str
    edits: tuple[Edit, ...]
    tests: tuple[str, ...]  # test files (or node ids), cheapest and most direct first
    note: str  # why this is the change, and why it is harmful


RECORD = "tests/test_record.py"
WAL = "tests/test_wal.py"
REPAIR = "tests/test_wal_repair.py"
SNAPSHOT = "tests/test_snapshot.py"
DURABILITY = "tests/test_snapshot_durability.py"
STORAGE = "tests/test_storage.py"
TEETH = "tests/test_storage_teeth.py"
REPLAY = "tests/test_replay.py"
RECOVERY = "tests/test_recovery.py"
EXHAUSTIVE = "tests/test_storage_exhaustive.py"
CRASH = "tests/stateful/test_storage_crash.py"
CONTROLLER = "tests/test_controller.py"
# Issue 15's blind spots: the tests written for them.
ORACLE_LIVES = "tests/stateful/test_blind_spots_oracle.py"
ORACLE = "tests/stateful/test_model_vs_oracle.py"
READS = "tests/test_blind_spots_reads.py"
RESULTS = "tests/test_blind_spots_results.py"
NO_RUNNER = "tests/test_blind_spots_control.py"
HANDLERS = "tests/test_handlers.py"

# Tests that fail on main because of open bugs in impl/, found by the crash tests.  A
# mutation run cannot use them (a failure would prove nothing), so every run deselects
# them, and the baseline reruns them alone to report whether they still fail.  Remove
# an entry once its bug is fixed (the baseline says so), and regenerate the table.
# Empty while main is green.
KNOWN_FAILING: dict[str, str] = {}

# 5a-5c: the LSN guards of replay.  ``evolve`` checks the state's LSN (and refuses a
# gap); ``apply_event`` checks the job's LSN, and the state's LSN where no job record
# can answer (queue events, jobs forgotten since).
EVOLVE_UNGUARDED = Edit(
    "model/evolve.py",
    "    if event.lsn <= state.last_lsn:\n"
    "        return state\n"
    "    if event.lsn != state.last_lsn + 1:\n"
    "        # The log lost a record (or the caller skipped one): applying this event\n"
    "        # would build a state no history produces.\n"
    "        raise BrokenInvariant(\n"
    '            f"log gap: state is at LSN {state.last_lsn}, next event has LSN {event.lsn}"\n'
    "        )\n"
    "    after = apply_event(state, event)\n"
    "    if after.last_lsn != event.lsn:\n"
    '        raise BrokenInvariant(f"{event!r} left the state at LSN {after.last_lsn}")\n'
    "    return after\n",
    "    return apply_event(state, event)\n",
)
# Storage.take_snapshot's check that the state it snapshots is exactly the durable log.
SNAPSHOT_CHECK = (
    "        if state.last_lsn != self._writer.durable_lsn:\n"
    "            raise BrokenInvariant(\n"
    '                f"snapshot of a state at LSN {state.last_lsn}; the log is durable to "\n'
    '                f"{self._writer.durable_lsn}"\n'
    "            )\n"
)
APPLY_UNGUARDED = (
    Edit(
        "model/evolve.py",
        "        if event.lsn <= state.last_lsn:\n"
        "            # The job is not here but the state is past this event: the job was\n",
        "        if False:\n"
        "            # The job is not here but the state is past this event: the job was\n",
    ),
    Edit(
        "model/evolve.py",
        "    # counts as reflected (a later pause or resume may have overridden it).\n"
        "    if event.lsn <= state.last_lsn:\n"
        "        return state\n",
        "    # counts as reflected (a later pause or resume may have overridden it).\n",
    ),
)

MUTATIONS: tuple[Mutation, ...] = (
    Mutation(
        "1",
        "skip the directory fsync after rename",
        "impl/storage/snapshot.py `write_snapshot`",
        (
            Edit(
                "impl/storage/snapshot.py",
                "    fs.rename(temporary, final)\n    fs.fsync_dir(directory)\n    return final\n",
                "    fs.rename(temporary, final)\n    return final\n",
            ),
        ),
        (DURABILITY, SNAPSHOT, STORAGE, EXHAUSTIVE, CRASH),
        "The rename is then volatile when `write_snapshot` returns.  End to end this is "
        "benign today: `take_snapshot` rotates the WAL right after, and the rotation's "
        "directory fsync makes the rename durable before compaction deletes anything "
        "(CrashFS reverts directory entries only as a prefix in issue order), and the "
        "crash tests pass with it.  The promise is checked where it is made: "
        "`tests/test_snapshot_durability.py` (added for this table) crashes the disk in "
        "every way right after `write_snapshot` returns and requires the snapshot there; "
        "the call-order test of `tests/test_snapshot.py` catches it too.",
    ),
    Mutation(
        "2a",
        "acknowledge before fsync: publish the durable LSN, then write",
        "impl/storage/wal.py `WalWriter.flush`",
        (
            Edit(
                "impl/storage/wal.py",
                "            self.write_batch(batch)\n            self.complete_batch(batch)\n",
                "            self.complete_batch(batch)\n            self.write_batch(batch)\n",
            ),
        ),
        (WAL, STORAGE, EXHAUSTIVE, CRASH),
        "`durable_lsn` (what producers are answered with) moves before the batch is "
        "written and fsynced; a crash or a failed fsync in between loses acknowledged "
        "events.",
    ),
    Mutation(
        "2b",
        "acknowledge without the fsync that covers the batch",
        "impl/storage/wal.py `WalWriter.write_batch`",
        (
            Edit(
                "impl/storage/wal.py",
                "            if current is None:\n"
                '                raise BrokenInvariant("a batch was written, but to no segment")\n'
                "            if unsynced:\n"
                "                self._fs.fsync(current)\n",
                "            if current is None:\n"
                '                raise BrokenInvariant("a batch was written, but to no segment")\n',
            ),
        ),
        (WAL, TEETH, EXHAUSTIVE, CRASH),
        "The batch is written but not fsynced before it is acknowledged.",
    ),
    Mutation(
        "2c",
        "acknowledge before fsync, in the group-commit flusher",
        "impl/storage/group_commit.py `GroupCommit._run`",
        (
            Edit(
                "impl/storage/group_commit.py",
                "            started = time.perf_counter()\n            try:\n",
                "            started = time.perf_counter()\n"
                "            with self._lock:\n"
                "                self._storage.complete_batch(batch)\n"
                "                self._changed.notify_all()\n"
                "            try:\n",
            ),
        ),
        (TEETH, WAL),
        "The flusher thread publishes the batch (waking its producers) before writing "
        "and fsyncing it.  The controller's threaded tests run `GroupCommit` but check "
        "only incidentally when it answers; `tests/test_storage_teeth.py` (added for "
        "this table) blocks the fsync and checks that nobody is answered meanwhile.",
    ),
    Mutation(
        "2d",
        "acknowledge before fsync, in the controller: enqueue returns before its event is durable",
        "impl/runtime/controller.py `Controller._run_one`",
        (
            Edit(
                "impl/runtime/controller.py",
                "        outcomes, lsn, committer = self._apply(lambda now: [make_command(now)])\n"
                "        self._wait_durable(committer, lsn)\n",
                "        outcomes, lsn, committer = self._apply(lambda now: [make_command(now)])\n",
            ),
        ),
        (CONTROLLER,),
        "The runtime's answer to a producer (R2 of `impl/runtime/controller.py`) no longer waits "
        "for the fsync: a crash loses an enqueue that was answered.",
    ),
    Mutation(
        "3a",
        "apply before append: a lease takes effect (its job reaches a worker) before its "
        "event is in the durable log",
        "impl/runtime/controller.py `Controller._dispatch_once`",
        (
            Edit(
                "impl/runtime/controller.py",
                "        # R2: the worker starts only once the lease is in the log.\n"
                "        self._wait_durable(committer, lsn)\n"
                "        for task in tasks:\n",
                "        for task in tasks:\n",
            ),
        ),
        (CONTROLLER,),
        "The runtime (`impl/runtime/controller.py`) orders decide, append (frame), publish the "
        "evolved state, wait until durable, then act.  A state change *takes effect* "
        "when something outside the process sees it: here, a worker starting the "
        "attempt a `LeaseGranted` records.  Without the wait, a crash can lose the "
        "lease while the handler runs: an attempt outside the log, so a job that kills "
        "the process every time never reaches DEAD.  Publishing the evolved state "
        "before framing it (the other half of the order, R1) is not harmful today: "
        "see the end of this page.",
    ),
    Mutation(
        "3b",
        "apply before append: snapshot an applied state whose events are not in the durable log",
        "impl/storage/storage.py `Storage.take_snapshot`",
        (
            Edit(
                "impl/storage/storage.py",
                "        self.flush()\n" + SNAPSHOT_CHECK,
                "",
            ),
            Edit(
                "impl/storage/storage.py",
                "            self._writer.durable_event_chain_crc,\n",
                "            self._writer._event_chain_crc,\n",
            ),
        ),
        (STORAGE, SNAPSHOT, EXHAUSTIVE, CRASH),
        "The storage side of the same rule: the applied state becomes durable in one "
        "place, a snapshot.  Here the snapshot is of the state as applied, its events "
        "only framed: no flush first, no check that the state is the durable log, and "
        "the chain value of what was framed.  A crash before the events' fsync leaves "
        "a snapshot ahead of the log, and recovery refuses the directory.",
    ),
    Mutation(
        "3c",
        "apply before append: accept a snapshot of a state ahead of the durable log",
        "impl/storage/storage.py `Storage.take_snapshot`",
        (
            Edit(
                "impl/storage/storage.py",
                SNAPSHOT_CHECK,
                "",
            ),
        ),
        (STORAGE, CRASH),
        "Only the check is removed (the flush stays): a caller that applied events it "
        "never appended gets a snapshot that no log can continue.",
    ),
    Mutation(
        "4a",
        "skip the frame CRC check",
        "impl/storage/record.py `decode_frame`",
        (Edit("impl/storage/record.py", "    if expected != frame_crc:\n", "    if False:\n"),),
        (RECORD, REPAIR, WAL, CRASH),
        "A damaged payload or header decodes as a valid frame.",
    ),
    Mutation(
        "4b",
        "skip the chain CRC check",
        "impl/storage/record.py `decode_frame`",
        (
            Edit(
                "impl/storage/record.py", "        if linked != chain_crc:\n", "        if False:\n"
            ),
        ),
        (RECORD, REPAIR, CRASH),
        "A deleted, duplicated, reordered or spliced frame, each intact on its own, is accepted.",
    ),
    Mutation(
        "4c",
        "forget the chain check across segments",
        "impl/storage/wal_reader.py `_Reader.read_segment`",
        (
            Edit(
                "impl/storage/wal_reader.py",
                "        if (previous is not None or base_lsn == self.after_lsn) and (\n"
                "            header.previous_chain_crc != known_chain\n"
                "        ):\n",
                "        if False:\n",
            ),
        ),
        (REPAIR, WAL, STORAGE, CRASH),
        "A segment's header claims the chain value it continues, and the claim is no "
        "longer compared with the previous segment (or the snapshot): a segment from "
        "another data directory, or a stale copy, is spliced in.",
    ),
    Mutation(
        "4d",
        "skip the snapshot body CRC check",
        "impl/storage/snapshot.py `decode_snapshot`",
        (
            Edit(
                "impl/storage/snapshot.py",
                "    if crc32c.crc32c(stored) != body_crc:\n",
                "    if False:\n",
            ),
        ),
        (SNAPSHOT, STORAGE, CRASH),
        "A damaged snapshot body may still decode (a flipped byte inside a string) and "
        "is loaded instead of falling back to the older snapshot.",
    ),
    Mutation(
        "5a",
        "replay without the LSN guard (and without the gap check)",
        "model/evolve.py `evolve`",
        (EVOLVE_UNGUARDED,),
        (REPLAY, RECOVERY, STORAGE, CRASH),
        "As the issue words it: `evolve` no longer skips events at or below the "
        "state's LSN, nor refuses a gap.  Re-applied events are still absorbed one "
        "level down, by `apply_event`'s own LSN checks (the job's `last_lsn`, and the "
        "state's LSN for queue events and forgotten jobs: defence in depth), so what "
        "the tests see first is the missing gap check.  5b takes away every level.",
    ),
    Mutation(
        "5b",
        "replay without any LSN guard: events a snapshot covers are applied again",
        "model/evolve.py `evolve`, `apply_event`, `_apply_queue_event`",
        (EVOLVE_UNGUARDED, *APPLY_UNGUARDED),
        (REPLAY, RECOVERY, STORAGE, CRASH),
        "Every LSN check of the replay is gone, the per-job one excepted (a job's "
        "events always reach it in order): replaying a log tail over a snapshot that "
        "covers part of it pauses a queue again after its later resume, and "
        "re-enqueues jobs already forgotten.",
    ),
    Mutation(
        "5c",
        "replay without any LSN guard, in storage recovery too",
        "impl/storage/wal_reader.py `_Reader.read_segment` + model/evolve.py",
        (
            Edit(
                "impl/storage/wal_reader.py",
                "            if lsn > self.after_lsn:\n",
                "            if True:\n",
            ),
            EVOLVE_UNGUARDED,
            *APPLY_UNGUARDED,
        ),
        (STORAGE, SNAPSHOT, EXHAUSTIVE, CRASH),
        "5b, and the reader also returns the records the snapshot covers (the WAL "
        "compaction keeps behind it), so recovery replays them over the snapshot.  Run "
        "against the storage tests only, not the model's, to show they catch it "
        "themselves (first by the recovery report's count of replayed records).",
    ),
    Mutation(
        "5d",
        "replay across a hole in the log (the gap check removed)",
        "model/evolve.py `evolve`",
        (
            Edit(
                "model/evolve.py",
                "    if event.lsn != state.last_lsn + 1:\n"
                "        # The log lost a record (or the caller skipped one): applying this "
                "event\n"
                "        # would build a state no history produces.\n"
                "        raise BrokenInvariant(\n"
                '            f"log gap: state is at LSN {state.last_lsn}, next event has LSN '
                '{event.lsn}"\n'
                "        )\n",
                "",
            ),
        ),
        (REPLAY, STORAGE, CRASH),
        "A lost record is stepped over silently instead of failing loudly.",
    ),
    Mutation(
        "6a",
        "delete WAL segments before the snapshot is durable",
        "impl/storage/storage.py `Storage.take_snapshot`",
        (
            Edit(
                "impl/storage/storage.py",
                "        path = write_snapshot(self._fs, self._directory, state.last_lsn, data)\n"
                "        self._writer.rotate()\n"
                "        self._writer.flush()\n"
                "        self._compact()\n",
                "        self._writer.rotate()\n"
                "        self._writer.flush()\n"
                "        segments = list_segments(self._fs, self._directory)\n"
                "        for (_i, _b, old), (_n, next_base, _p) in pairwise(segments):\n"
                "            if next_base < state.last_lsn:\n"
                "                self._fs.unlink(old)\n"
                "        self._fs.fsync_dir(self._directory)\n"
                "        path = write_snapshot(self._fs, self._directory, state.last_lsn, data)\n"
                "        self._compact()\n",
            ),
        ),
        (STORAGE, SNAPSHOT, EXHAUSTIVE, CRASH),
        "The segments the new snapshot covers are deleted (durably) before the snapshot "
        "is written: a crash in between leaves neither the events nor a snapshot of "
        "them.",
    ),
    Mutation(
        "6b",
        "delete WAL segments the older kept snapshot still needs",
        "impl/storage/storage.py `Storage._compact`",
        (
            Edit(
                "impl/storage/storage.py",
                "        oldest_kept_lsn = kept[-1].lsn\n",
                "        oldest_kept_lsn = kept[0].lsn\n",
            ),
        ),
        (STORAGE, SNAPSHOT, CRASH),
        "Compaction trusts the newest snapshot alone; if it turns out damaged, the "
        "fallback snapshot has lost the WAL behind it.",
    ),
    Mutation(
        "6c",
        "rename the snapshot before its bytes are durable",
        "impl/storage/snapshot.py `write_snapshot`",
        (Edit("impl/storage/snapshot.py", "        fs.fsync(temporary)\n", ""),),
        (DURABILITY, SNAPSHOT, EXHAUSTIVE, CRASH),
        "The name is made durable, the data is not: a crash leaves an empty or partial "
        "snapshot, and the segments its predecessor needed may already be deleted.",
    ),
    Mutation(
        "7a",
        "truncate on mid-log damage: damage in a sealed segment taken for a torn tail",
        "impl/storage/wal_reader.py `_Reader._damage`",
        (
            Edit(
                "impl/storage/wal_reader.py",
                "        if not is_last:\n"
                '            raise WalCorrupt(path, offset, f"{problem} (in a sealed segment)")\n',
                "",
            ),
        ),
        (REPAIR, STORAGE, CRASH),
        "Damage in a sealed segment (always complete, so never torn) is cut instead of "
        "refused: everything after it, acknowledged long ago, is dropped.",
    ),
    Mutation(
        "7b",
        "truncate on mid-log damage: the `synced_lsn` evidence ignored",
        "impl/storage/wal_reader.py `_Reader._damage`",
        (
            Edit(
                "impl/storage/wal_reader.py",
                "        for evidence in find_valid_frames_after(data, offset):\n",
                "        for evidence in ():\n",
            ),
        ),
        (REPAIR, CRASH),
        "Damage in the last segment before frames that prove it was acknowledged is cut "
        "as a torn tail, dropping acknowledged events.",
    ),
    Mutation(
        "7c",
        "truncate on mid-log damage: a damaged last-segment header drops the segment",
        "impl/storage/wal_reader.py `_segment_header`",
        (
            Edit(
                "impl/storage/wal_reader.py",
                "        if is_last and not find_valid_frames_after(data, 0):\n",
                "        if is_last:\n",
            ),
        ),
        (REPAIR, CRASH),
        "A damaged header of the last segment is taken for a torn segment start even "
        "when valid frames follow it (the writer makes a header durable before any "
        "frame after it is written, so that is rot, not a torn write): the whole "
        "segment goes, with its acknowledged events.",
    ),
    Mutation(
        "8",
        "rotation does not seal (fsync) the old segment before creating the new one",
        "impl/storage/wal.py `WalWriter.write_batch`",
        (
            Edit(
                "impl/storage/wal.py",
                "                    if current is not None and unsynced:\n"
                "                        # Seal the old segment before the new one can exist.\n"
                "                        self._fs.fsync(current)\n",
                "",
            ),
        ),
        (TEETH, WAL, EXHAUSTIVE, CRASH),
        "A batch that spans a rotation fsyncs only the new segment: the old segment's "
        "part of the batch is acknowledged but volatile.  `tests/test_storage_teeth.py` "
        "(added for this table while the exhaustive crash test, which covers rotating "
        "flushes too, failed on main for an open bug since fixed) checks every crash "
        "state after a rotating flush returned.",
    ),
    Mutation(
        "9",
        "a new segment's name is not made durable before its events are acknowledged",
        "impl/storage/wal.py `WalWriter.write_batch`",
        (
            Edit(
                "impl/storage/wal.py",
                "            if created:\n"
                "                # The new name must be durable before any event in it is "
                "acknowledged.\n"
                "                self._fs.fsync_dir(self._directory)\n",
                "",
            ),
        ),
        (WAL, TEETH, EXHAUSTIVE, CRASH),
        "A crash that reverts the directory entry loses the segment with its acknowledged events.",
    ),
    Mutation(
        "10",
        "retry and trust after a failed fsync",
        "impl/storage/wal.py `WalWriter.write_batch`",
        (Edit("impl/storage/wal.py", "            self._failure = failure\n", ""),),
        (WAL, CRASH),
        "After a failed fsync the WAL keeps accepting work; the kernel may have dropped "
        'the failed pages and marked them clean, so a later fsync "succeeds" without '
        "them and events are acknowledged that are not on disk.",
    ),
    Mutation(
        "11",
        "recovery does not make its cut of a torn tail durable",
        "impl/storage/storage.py `_cut_torn_tail`",
        (
            Edit(
                "impl/storage/storage.py",
                "        fs.truncate(torn.path, torn.offset)\n        fs.fsync(torn.path)\n",
                "        fs.truncate(torn.path, torn.offset)\n",
            ),
        ),
        (REPAIR, STORAGE, EXHAUSTIVE, CRASH),
        "After a crash the torn bytes come back, now in a sealed segment (recovery "
        "started a new one): the next recovery refuses the data directory.",
    ),
    Mutation(
        "12",
        "frames claim every earlier frame durable (`synced_lsn` = the appended LSN)",
        "impl/storage/wal.py `WalWriter.append`",
        (
            Edit(
                "impl/storage/wal.py",
                "            RecordKind.EVENT, lsn, self.durable_lsn, payload, self.chain_crc\n",
                "            RecordKind.EVENT, lsn, self.appended_lsn, payload, self.chain_crc\n",
            ),
        ),
        (REPAIR, WAL, EXHAUSTIVE, CRASH),
        "The damage policy's evidence lies: each frame claims the frame before it, in "
        "its own unacknowledged batch, was durable.  A torn last batch whose later "
        "frame survives then looks acknowledged, and recovery refuses a data directory "
        "that only needed its unacknowledged tail cut.",
    ),
    Mutation(
        "13",
        "a new segment's header is not made durable before its events are written",
        "impl/storage/wal.py `WalWriter.write_batch`",
        (
            Edit(
                "impl/storage/wal.py",
                "                    self._fs.append(chunk.path, data[:SEGMENT_HEADER_FRAME_BYTES])"
                "\n"
                "                    self._fs.fsync(chunk.path)\n"
                "                    data = data[SEGMENT_HEADER_FRAME_BYTES:]\n"
                "                    created, unsynced = True, False\n",
                "                    created = True\n",
            ),
        ),
        (EXHAUSTIVE, CRASH),
        "The header and the first events of a new segment go down in one write, as "
        "before 34a1314.  A "
        "power loss can then tear the header and keep a later event frame, which the "
        "reader must call corruption (rot in a header cannot be told from it): an "
        "ordinary crash during a rotating flush makes the directory refuse to start.  "
        "This was a real bug, found by the exhaustive crash test and fixed in 34a1314; "
        "the row keeps it fixed.",
    ),
    # -- issue 15: the blind spots of the suite, one row per kind (14 to 18), and the
    # live bug found on the way (19).
    Mutation(
        "14a",
        "the retry delay counts every lease (the fence), not the attempts used",
        "model/decide.py `_failure`",
        (
            Edit(
                "model/decide.py",
                "        job.attempts_used, job.spec.backoff_base_ms, job.spec.backoff_cap_ms, "
                "jitter_seed\n",
                "        job.attempt, job.spec.backoff_base_ms, job.spec.backoff_cap_ms, "
                "jitter_seed\n",
            ),
        ),
        (ORACLE_LIVES, ORACLE),
        "After a release or a requeue the fence runs ahead of `attempts_used`, so the "
        "backoff window doubles too early; and past `ATTEMPTS_MAX` leases (releases and "
        "requeues included) the backoff's own bound check fails: a job leased more than "
        "a hundred times can no longer fail.  Only the retry time and the job's ready "
        "time differ, which the model-vs-oracle comparison did not look at (it compared "
        "event types and job ids), and no test leased a job a hundred times.",
    ),
    Mutation(
        "14b",
        "a lease's expiry is counted from the enqueue, not from the lease",
        "model/decide.py `_decide_lease`",
        (
            Edit(
                "model/decide.py",
                "            expires_at_ms=command.now_ms + job.spec.timeout_ms,\n",
                "            expires_at_ms=job.enqueued_at_ms + job.spec.timeout_ms,\n",
            ),
        ),
        (ORACLE, ORACLE_LIVES),
        "A job that waited in the queue gets a shorter lease, or one already expired.  "
        "What differs first is a field (`LeaseGranted.expires_at_ms`) and the state's "
        "lease timer; the types of events change only at a later tick, if one falls in "
        "between.  Run against the differential tests alone.",
    ),
    Mutation(
        "15",
        "reads answer from the published state without waiting for it to be durable",
        "impl/runtime/controller.py `Controller._durable_state`",
        (
            Edit(
                "impl/runtime/controller.py",
                "            state, committer = self._state, self._committer\n"
                "        self._wait_durable(committer, state.last_lsn)\n"
                "        return state\n",
                "            state, committer = self._state, self._committer\n"
                "        return state\n",
            ),
        ),
        (READS, CONTROLLER),
        "`status`, `show` and `jobs` (on the controller, and through the control socket "
        "and the API) may report a completion whose event is framed but not fsynced: a "
        "crash then undoes what the caller was told.  Leases had a durability check "
        "(the fake pool's), reads had none.",
    ),
    Mutation(
        "16",
        "a task that never started is counted as a failed attempt",
        "impl/runtime/loops.py `process_results`",
        (
            Edit(
                "impl/runtime/loops.py",
                "            if not result.started:\n",
                "            if not result.started and False:\n",
            ),
        ),
        (RESULTS, CONTROLLER),
        "A task whose lease ran out while it waited in the pool's queue is reported "
        "unstarted; failing it (instead of releasing it, uncounted) lets a job die of "
        "attempts that never ran.  The tests' fake pool never reported an unstarted task.",
    ),
    Mutation(
        "17",
        "the no-runner check decides every line of a batch on the state as loaded",
        "impl/frontends/control.py `_check`",
        (
            Edit(
                "impl/frontends/control.py",
                "        for command in [Recover(now_ms=now), *_commands(op, params, now)]:\n"
                "            for event in decide(state, command):\n"
                "                state = evolve(state, event)\n"
                "                events += 1\n",
                "        for event in decide(state, Recover(now_ms=now)):\n"
                "            state = evolve(state, event)\n"
                "            events += 1\n"
                "        for command in _commands(op, params, now):\n"
                "            events += len(decide(state, command))\n",
            ),
        ),
        (NO_RUNNER,),
        "Each line is checked alone, so a batch refused only by an earlier line (two "
        "lines with the same id) passes the read-only check; the directory is opened "
        "(LOCK, a WAL segment, the Recover, a snapshot at the close) and the batch then "
        "refused: a refused command that wrote.",
    ),
    Mutation(
        "18",
        "a result the JSON encoder cannot take escapes into the worker thread",
        "impl/runtime/handlers.py `_outcome_of_result`",
        (
            Edit(
                "impl/runtime/handlers.py",
                "    except Exception as error:\n"
                "        # TypeError, ValueError (NaN), RecursionError",
                "    except (TypeError, ValueError) as error:\n"
                "        # TypeError, ValueError (NaN), RecursionError",
            ),
        ),
        (RESULTS, HANDLERS),
        "A result nested too deeply (RecursionError), or a container of the handler's "
        "whose items or iteration raise, ends the worker thread instead of the attempt: "
        "no result is reported, the lease hangs until it expires, and the pool has one "
        "worker fewer.  (Before issue 15 the code caught RecursionError but not the "
        "second kind: a live bug, fixed with the tests of this row.)",
    ),
    Mutation(
        "19",
        "the no-runner check does not model the recovery that opening does",
        "impl/frontends/control.py `_check`",
        (
            Edit(
                "impl/frontends/control.py",
                "        for command in [Recover(now_ms=now), *_commands(op, params, now)]:\n",
                "        for command in _commands(op, params, now):\n",
            ),
        ),
        (NO_RUNNER,),
        "The live bug of issue 15, as it was: in a directory a runner died in, the check "
        "sees the dead runner's lease still live, while opening abandons it first (the "
        "job may become dead).  `cancel` of such a job passes the check, the directory is "
        "opened and written, and the cancel is then refused with `job_finished`; and a "
        "`requeue` that opening would accept is refused.",
    ),
)

# -- running one mutation --------------------------------------------------------------------

IGNORED = shutil.ignore_patterns(
    ".venv",
    ".git",
    "__pycache__",
    ".hypothesis",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    "*.egg-info",
    "*.pyc",
)

PROBE_SOURCE = '''\
"""Loaded by tools/mutate.py with -p: fail unless beaverq is imported from the copy."""
import os

import pytest


def pytest_configure(config):
    import beaverq.impl
    import beaverq.model
    import beaverq.spec
    import beaverq.teaching

    root = os.path.realpath(os.environ["BEAVERQ_MUTANT_ROOT"])
    lines = []
    for module in (beaverq.model, beaverq.impl, beaverq.spec, beaverq.teaching):
        where = os.path.realpath(module.__file__)
        if not where.startswith(root + os.sep):
            raise pytest.UsageError(f"{module.__name__} imported from {where}, not {root}")
        lines.append(f"{module.__name__} {where}")
    from hypothesis import Phase, settings

    if os.environ.get("BEAVERQ_MUTANT_NO_SHRINK"):
        # Finding a failing example is all a mutation run needs; shrinking it can take
        # minutes.  Everything else stays as the chosen profile has it.
        phases = (Phase.explicit, Phase.reuse, Phase.generate)
        settings.register_profile("mutate-no-shrink", settings.default, phases=phases)
        settings.load_profile("mutate-no-shrink")
    current = settings.default
    phases = ",".join(phase.name for phase in current.phases)
    lines.append(f"hypothesis max_examples={current.max_examples} phases={phases}")
    with open(os.environ["BEAVERQ_MUTANT_PROBE"], "w") as probe:
        probe.write("\\n".join(lines) + "\\n")
'''


@dataclass(frozen=True)
class Result:
    key: str
    outcome: str  # "caught", "survived", "error"
    first_failure: str  # test node id, or "" if none
    reason: str  # first "E" line of the failure, or what went wrong
    seconds: float
    hypothesis: str = ""  # the Hypothesis settings in force, as the probe saw them
    failures: tuple[str, ...] = ()  # every failing test (all of them without -x)


def apply_edits(root: Path, edits: tuple[Edit, ...]) -> None:
    """Apply ``edits`` to the files under ``root``; each "before" text exactly once."""
    for edit in edits:
        path = root / edit.file
        text = path.read_text()
        count = text.count(edit.old)
        if count != 1:
            raise PatchError(f"{edit.file}: the text to replace occurs {count} times, not once")
        path.write_text(text.replace(edit.old, edit.new, 1))


class PatchError(Exception):
    pass


def check_patches(root: Path = ROOT) -> list[str]:
    """Problems with the mutation table against the source under ``root``: a "before"
    text not found exactly once, a mutant that does not compile, a missing test file.
    Empty when every mutation still applies."""
    problems = []
    keys = [mutation.key for mutation in MUTATIONS]
    if len(set(keys)) != len(keys):
        problems.append(f"duplicate mutation keys: {keys}")
    for mutation in MUTATIONS:
        texts: dict[str, str] = {}
        for edit in mutation.edits:
            path = root / edit.file
            if not path.is_file():
                problems.append(f"{mutation.key}: {edit.file} does not exist")
                continue
            text = texts.setdefault(edit.file, path.read_text())
            count = text.count(edit.old)
            if count != 1:
                problems.append(f"{mutation.key}: {edit.file}: 'before' text found {count} times")
                continue
            if edit.old == edit.new:
                problems.append(f"{mutation.key}: {edit.file}: the edit changes nothing")
            texts[edit.file] = text.replace(edit.old, edit.new, 1)
        for file, text in texts.items():
            try:
                compile(text, file, "exec")
            except SyntaxError as error:
                problems.append(f"{mutation.key}: {file}: the mutant does not compile: {error}")
        for test in mutation.tests:
            if not (root / test.split("::")[0]).is_file():
                problems.append(f"{mutation.key}: test file {test} does not exist")
    for test in KNOWN_FAILING:
        file, name = test.split("::")
        path = root / file
        if not path.is_file() or f"def {name}(" not in path.read_text():
            problems.append(f"known-failing test {test} does not exist")
    return problems


def make_copy(edits: tuple[Edit, ...]) -> Path:
    """A fresh copy of the repository with ``edits`` applied and its own import root."""
    base = Path(tempfile.mkdtemp(prefix="beaverq-mutant-"))
    copy = base / "repo"
    shutil.copytree(ROOT, copy, ignore=IGNORED, symlinks=True)
    apply_edits(copy, edits)
    package = copy / "_pkgroot" / "beaverq"
    package.mkdir(parents=True)
    for name in PACKAGES:
        (package / name).symlink_to(copy / name, target_is_directory=True)
    (copy / "_pkgroot" / f"{PROBE_MODULE}.py").write_text(PROBE_SOURCE)
    return copy


def run_tests(
    edits: tuple[Edit, ...],
    tests: tuple[str, ...],
    *,
    profile: str,
    seed: str,
    timeout_s: float,
    shrink: bool,
    key: str,
    deselect: tuple[str, ...] = tuple(KNOWN_FAILING),
    stop_at_first: bool = True,
) -> Result:
    copy = make_copy(edits)
    probe = copy.parent / "probe.txt"
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(copy / "_pkgroot"),
        PYTHONDONTWRITEBYTECODE="1",
        BEAVERQ_HYPOTHESIS_PROFILE=profile,
        BEAVERQ_MUTANT_ROOT=str(copy),
        BEAVERQ_MUTANT_PROBE=str(probe),
    )
    if not shrink:
        env["BEAVERQ_MUTANT_NO_SHRINK"] = "1"
    command = [
        sys.executable,
        "-m",
        "pytest",
        *(["-x"] if stop_at_first else []),
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        PROBE_MODULE,
        *([] if seed == "random" else [f"--hypothesis-seed={seed}"]),
        *(f"--deselect={test}" for test in deselect),
        *tests,
    ]
    started = time.monotonic()
    try:
        completed = subprocess.run(
            command,
            cwd=copy,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        seconds = time.monotonic() - started
        output = completed.stdout + completed.stderr
        return _judge(key, completed.returncode, output, probe, copy, edits, seconds)
    except subprocess.TimeoutExpired:
        return Result(key, "error", "", f"timed out after {timeout_s:.0f} s", timeout_s)
    finally:
        shutil.rmtree(copy.parent, ignore_errors=True)


def _judge(
    key: str, status: int, output: str, probe: Path, copy: Path, edits: tuple[Edit, ...], s: float
) -> Result:
    # The whole table rests on this: the code under test is the copy's.
    if not probe.is_file():
        return Result(key, "error", "", f"no import probe (exit {status}): {_tail(output)}", s)
    hypothesis = ""
    for line in probe.read_text().splitlines():
        name, where = line.split(" ", 1)
        if name == "hypothesis":
            hypothesis = where
            continue
        if not where.startswith(str(copy.resolve()) + os.sep):
            return Result(key, "error", "", f"{name} came from {where}", s)
    for edit in edits:
        if edit.new and edit.new not in (copy / edit.file).read_text():
            return Result(key, "error", "", f"{edit.file} is not mutated in the copy", s)
    failures = re.findall(r"^(?:FAILED|ERROR) (\S+)", output, re.MULTILINE)
    first = failures[0] if failures else ""
    if status == 0:
        return Result(key, "survived", "", "", s, hypothesis)
    if status == 1 and first:
        reason = re.search(r"^E\s+(.*\S)", output, re.MULTILINE)
        return Result(
            key,
            "caught",
            first,
            reason.group(1) if reason else "",
            s,
            hypothesis,
            tuple(failures),
        )
    return Result(key, "error", first, f"pytest exit {status}: {_tail(output)}", s, hypothesis)


def _tail(output: str, lines: int = 12) -> str:
    return " | ".join(output.strip().splitlines()[-lines:])


# -- the report ------------------------------------------------------------------------------


def baseline_tests(mutations: tuple[Mutation, ...]) -> tuple[str, ...]:
    """Every test file the mutations use, each once, in first-use order."""
    seen: dict[str, None] = {}
    for mutation in mutations:
        for test in mutation.tests:
            seen.setdefault(test, None)
    return tuple(seen)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def table(results: dict[str, Result], mutations: tuple[Mutation, ...]) -> str:
    lines = [
        "| # | mutation | where | caught? | first failing test | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for mutation in mutations:
        result = results.get(mutation.key)
        if result is None:
            continue
        verdict = {"caught": "yes", "survived": "**NO**", "error": "**error**"}[result.outcome]
        test = f"`{result.first_failure}`" if result.first_failure else "-"
        lines.append(
            f"| {mutation.key} | {_cell(mutation.title)} | {_cell(mutation.where)} | "
            f"{verdict} | {_cell(test)} | {result.seconds:.0f} |"
        )
    return "\n".join(lines)


DOC_INTRO = """\
# The tests have teeth: the mutation table

Issue 3 asks for proof that the storage tests notice the classic crash-safety mistakes.
`tools/mutate.py` applies known-bad changes to the source **one at a time**, each in a
fresh copy of the repository, runs a short list of test files against the copy (the
most direct first), and records whether the suite failed.  Rows 1 to 7 are the issue's
list, in its order (a letter marks variants of one mistake); rows 8 to 13 are further
mistakes that matter.  Rows 14 to 19 are issue 15's: kinds of plausible bug that a
mutation run against the whole suite once let through (one row per kind), and the live
bug found on the way.  Every row must read "yes".

This file is written by the script (`--write`): edit the script, not the file.

Reproduce (about {minutes:.0f} minutes on this machine):

```
.venv/bin/python tools/mutate.py [--only KEYS] [--write] [--jobs N]
```

Run on {date}: {count} mutations, Hypothesis profile `{profile}` with shrinking off
(a mutation run only needs *a* failing example; `--shrink` turns it back on),
`--hypothesis-seed={seed}` ({hypothesis}), `--jobs {jobs}` on a {cpus}-CPU machine.
The unmutated copy ran every test file of the table first and passed{baseline}.
"Seconds" is the wall time of a mutation's pytest run, up to its first failure (`-x`).

How it makes sure the mutants are what is tested: the package is installed editable
from the main checkout, so each copy gets its own import root
(`_pkgroot/beaverq/{{model,impl,spec,teaching}}`, symlinks into the copy, on `PYTHONPATH`; the
path finder comes before the editable finder), and a pytest plugin loaded with `-p`
checks at start-up that `beaverq.model`, `beaverq.impl` and `beaverq.spec` were
imported from the copy; the script refuses a result otherwise.  Each replacement's
"before" text must occur exactly once; `tests/test_mutate_script.py` checks in CI that
every patch still applies to the current source, so the table cannot rot silently.

"""


def render_doc(
    results: dict[str, Result],
    baseline: Result,
    *,
    profile: str,
    seed: str,
    jobs: int,
    total_s: float,
    known: dict[str, bool],
) -> str:
    parts = [
        DOC_INTRO.format(
            minutes=total_s / 60,
            date=datetime.date.today().isoformat(),
            count=len(results),
            profile=profile,
            seed=seed,
            hypothesis=baseline.hypothesis,
            baseline=f", in {baseline.seconds:.0f} s",
            jobs=jobs,
            cpus=os.cpu_count(),
        ),
        table(results, MUTATIONS),
        "",
        "## What each mutation is, and what caught it",
        "",
    ]
    for mutation in MUTATIONS:
        result = results.get(mutation.key)
        if result is None:
            continue
        parts.append(f"**{mutation.key}. {mutation.title}** ({mutation.where}).  {mutation.note}")
        reason = result.reason.replace("`", "'")
        if len(reason) > 200:
            reason = reason[:200] + "..."
        if result.outcome == "caught":
            parts.append(f"Caught by `{result.first_failure}`: `{reason}`")
        else:
            parts.append(f"Outcome: {result.outcome}. {reason}")
        parts.append("")
    parts.extend(EPILOGUE)
    if known:
        parts.extend(
            [
                "",
                "## Tests deselected: failing on main because of open bugs",
                "",
                "Every run above deselects these; the baseline reran them alone:",
                "",
            ]
        )
        for test, reason in KNOWN_FAILING.items():
            status = "still fails" if known[test] else "**passes now: take it off the list**"
            parts.append(f"- `{test}` ({status}): {reason}.")
    return "\n".join(parts).rstrip() + "\n"


EPILOGUE = [
    "## Tests added for this table",
    "",
    "- `tests/test_snapshot_durability.py`: `write_snapshot` returns only when the "
    "snapshot survives every crash state the fault model allows, and a crash during it "
    "leaves the whole snapshot or none (mutations 1 and 6c).  Mutation 1 is harmless "
    "end to end today (see its note), so only a test of `write_snapshot`'s own promise "
    "can catch it: before, only the order of its calls was checked.",
    "- `tests/test_storage_teeth.py`: group commit answers a producer only after the "
    "fsync that covers its events has returned, and what it answered survives a crash "
    "(mutation 2c: the controller's threaded tests run `GroupCommit`, but none checks "
    "when it answers); and a flush whose batch spans a rotation is durable in every "
    "segment when it returns (mutations 8 and 9; written while the exhaustive test, "
    "which covers this too, failed on main for an open bug since fixed).",
    "- `tests/test_mutate_script.py`: the patches still apply.",
    "- For issue 15 (rows 14 to 19): `tests/stateful/test_blind_spots_oracle.py` (one "
    "job's long life, past `ATTEMPTS_MAX` leases, through model and oracle, and a check "
    "that the state summary holds every job field the rules read), the field-by-field "
    "comparison in `tests/stateful/test_model_vs_oracle.py`, "
    "`tests/test_blind_spots_reads.py` (reads report only what is durable), "
    "`tests/test_blind_spots_results.py` (unstarted tasks; results hostile to the "
    "encoder) and `tests/test_blind_spots_control.py` (a refused command changes no "
    "byte: a batch refused by its own line, a directory a runner died in).",
    "",
    "## What the suite is known to catch, and what makes it so",
    "",
    "A test catches a bug only where it compares something the bug changes.  These are "
    "the comparisons the table rests on; a new rule, event field or read needs its place "
    "in them, or its bugs go unseen (as the five kinds of issue 15 did):",
    "",
    "- **Decisions: every field of every event.**  `tests/stateful/test_model_vs_oracle.py` "
    "runs the model and `spec/oracle.py` (an independent restatement of "
    "docs/semantics.md) side by side and compares each event as `attrs.asdict` gives it: "
    "a field added to an event is compared from then on, and the test fails, naming the "
    "field, until the oracle computes it too.  A field whose wording the page leaves "
    "open (a refused result's detail) is a `Prefix` in the oracle.  Before issue 15 only "
    "(event type, job id) was compared, so a wrong retry time, lease expiry or error was "
    "invisible until it changed a later event's type (rows 14a, 14b).",
    "- **State: everything the rules read.**  After every command the oracle's "
    "`observe()` must equal the model's summary: per job the spec, status, fence, "
    "attempts used, cancellation flag, and the ready LSN, ready time, lease expiry and "
    "finish time where the page gives them a meaning; the order jobs finished in; the "
    "paused queues; the last LSN.  "
    "`test_the_summary_holds_every_job_field_the_rules_read` scans the rule files "
    "(`model/decide.py`, `recovery.py`, `state.py`) for the job fields they read and "
    "fails if one is missing from the summary.  A new rule that reads a new field: add "
    "it to `SUMMARY_JOB_FIELDS`, to `job_summary` and to the oracle.",
    "- **Long lives.**  The state machine's alphabets are small, so that collisions "
    "happen; a job's counters stay small there too.  `test_blind_spots_oracle.py` drives "
    "one job through up to 250 leases (past `ATTEMPTS_MAX`) of every kind of ending.  A "
    "new counter or bound needs a life long enough to cross it.",
    "- **Durability: of effects, of answers, and of reads.**  A worker gets a job only "
    "once its lease is durable (the fake pool's check, rows 2d, 3a); a producer is "
    "answered only once its events are durable; and every read (`status`, `show`, "
    "`jobs`, on the controller, through the socket's handler and a real socket) must "
    "equal the same read of the durable log alone, replayed "
    "(`tests/test_blind_spots_reads.py`, row 15).  A new read or answer must wait for "
    "the LSN of the state it reads, and be added there.",
    "- **Crash states.**  The storage tests check what every crash the fault model "
    "allows leaves behind (rows 1 to 13).",
    "- **What the pool can report.**  The controller's tests feed it every kind of "
    "result the pool can send: success, failure, a result the model refuses, and a task "
    "never started (row 16); the handler layer turns any value a handler returns, "
    "however hostile to the encoder, into an outcome (row 18).  A new kind of result "
    "needs a fake that sends it.",
    "- **A refused command changes no byte.**  Without a runner, the read-only check "
    "must refuse exactly what opening the directory would: it folds each line of a "
    "batch into the state before the next (row 17) and decides the `Recover` that "
    "opening decides first (row 19).  `tests/test_blind_spots_control.py` compares its "
    "verdict with that of a controller opened on a copy, and a refusal with the bytes "
    "before.  A new command, or a new step of opening, must be decided by the check too.",
    "",
    "## Mutations that are not harmful (left out)",
    "",
    "Each was run once against the tests of the code it changes and survived; each is "
    "masked by another mechanism, named here, that the table shows is tested:",
    "",
    "- publishing the evolved state before framing its events (`Controller._apply`, the "
    'first half of R1, "if the WAL refuses, nothing is published"): the framing can '
    "only fail once the WAL has failed, and a failed WAL is fail-stop (row 10): every "
    "later append, flush and snapshot refuses, and every answer and effect waits for "
    "durability first (rows 2d, 3a), so the unlogged state is never seen outside the "
    "process;",
    "- `evolve`'s LSN guard alone (5a without its gap check): `apply_event` skips "
    "every event the state already reflects by itself, by the job's LSN or, for queue "
    "events and forgotten jobs, the state's (5b removes those too);",
    "- the reader's LSN-continuity check (`LSN n follows LSN m`) alone: a frame the "
    "writer did not put right there breaks the chain first (rows 4b, 4c), and the "
    "writer asserts consecutive LSNs.",
]


def known_failing_now(options: dict[str, object]) -> dict[str, bool]:
    """Rerun the known-failing tests alone on the unmutated copy: which still fail."""
    if not KNOWN_FAILING:
        return {}
    tests = tuple(KNOWN_FAILING)
    print(f"rerunning the {len(tests)} known-failing tests", flush=True)
    result = run_tests((), tests, key="known", deselect=(), stop_at_first=False, **options)
    if result.outcome == "error":
        raise SystemExit(f"the known-failing tests did not run: {result.reason}")
    known = {test: test in result.failures for test in tests}
    for test, failing in known.items():
        print(f"  {'still fails' if failing else 'PASSES NOW (take it off the list)'}: {test}")
    return known


# -- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated mutation keys (e.g. 1,2a,6b)")
    parser.add_argument("--write", action="store_true", help=f"write {DOC.relative_to(ROOT)}")
    parser.add_argument("--check", action="store_true", help="only check the patches apply")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--jobs", type=int, default=2, help="mutations run side by side")
    parser.add_argument("--profile", default="ci", help="BEAVERQ_HYPOTHESIS_PROFILE")
    parser.add_argument("--seed", default="0", help='--hypothesis-seed, or "random"')
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S_DEFAULT, help="seconds")
    parser.add_argument("--no-baseline", action="store_true", help="skip the baseline run")
    parser.add_argument(
        "--tests", help="comma-separated test files to run instead of each mutation's own"
    )
    parser.add_argument(
        "--shrink", action="store_true", help="let Hypothesis shrink failures (slower)"
    )
    args = parser.parse_args(argv)

    problems = check_patches()
    if problems:
        print("the mutation table no longer fits the source:", *problems, sep="\n  ")
        return 2
    if args.check:
        print(f"all {len(MUTATIONS)} mutations apply")
        return 0
    if args.list:
        for mutation in MUTATIONS:
            print(f"{mutation.key:>3}  {mutation.title}  [{mutation.where}]")
            print(textwrap.indent(" ".join(mutation.tests), "       "))
        return 0
    selected = MUTATIONS
    if args.only:
        keys = [key.strip() for key in args.only.split(",") if key.strip()]
        unknown = sorted(set(keys) - {mutation.key for mutation in MUTATIONS})
        if unknown:
            parser.error(f"unknown mutation keys: {unknown}")
        selected = tuple(mutation for mutation in MUTATIONS if mutation.key in keys)
    if args.write and (args.only or args.no_baseline or args.tests):
        parser.error("--write needs a full run (no --only, --no-baseline or --tests)")
    if args.tests:
        tests = tuple(test.strip() for test in args.tests.split(",") if test.strip())
        selected = tuple(
            Mutation(m.key, m.title, m.where, m.edits, tests, m.note) for m in selected
        )

    options = dict(profile=args.profile, seed=args.seed, timeout_s=args.timeout, shrink=args.shrink)
    started = time.monotonic()
    baseline: Result | None = None
    known: dict[str, bool] = {}
    if not args.no_baseline:
        tests = baseline_tests(selected)
        print(f"baseline: {' '.join(tests)}", flush=True)
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            baseline_run = pool.submit(run_tests, (), tests, key="baseline", **options)
            known_run = pool.submit(known_failing_now, options)
            baseline, known = baseline_run.result(), known_run.result()
        if baseline.outcome != "survived":
            print(f"the unmutated suite does not pass: {baseline}")
            return 2
        print(f"baseline passed in {baseline.seconds:.0f} s", flush=True)
    results: dict[str, Result] = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {
            pool.submit(run_tests, mutation.edits, mutation.tests, key=mutation.key, **options): (
                mutation
            )
            for mutation in selected
        }
        for future in concurrent.futures.as_completed(futures):
            mutation = futures[future]
            result = future.result()
            results[mutation.key] = result
            print(
                f"{mutation.key:>3} {result.outcome:<8} {result.seconds:6.0f} s  "
                f"{result.first_failure}\n      {result.reason[:300]}",
                flush=True,
            )
    total_s = time.monotonic() - started
    print()
    print(table(results, selected))
    print(f"\n{len(results)} mutations in {total_s / 60:.1f} minutes")
    if args.write:
        assert baseline is not None
        DOC.write_text(
            render_doc(
                results,
                baseline,
                profile=args.profile,
                seed=args.seed,
                jobs=args.jobs,
                total_s=total_s,
                known=known,
            )
        )
        print(f"wrote {DOC.relative_to(ROOT)}")
    return 0 if all(result.outcome == "caught" for result in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
