"""Partial snapshots in etcd: a bucketed checkpoint, and the log prefix it lets us drop.

Why (../shared/cluster-research.md, section 6): etcd holds the whole log, and its
backend quota (2 GiB by default, 8 GiB at most) fills in under half an hour at
peak.  A checkpoint in etcd lets the leader delete the log prefix it covers, and lets
a node that restarts (or lags past the deleted prefix) load it and read only the tail.

**Layout** (under ``/bq/<cluster>/snap/``)::

    manifest                       the newest complete checkpoint: its LSN, and every
                                   part below it names, with mod revision and crc
    part/<lsn:016x>/b<i:05x>.<p>   part p of job bucket i, as written at LSN lsn
    part/<lsn:016x>/rest.<p>       part p of the rest (FIFO bounds, timers, counts...)

A job's bucket is ``crc32(job id) mod bucket count``: stable across processes
(Python's ``hash`` is salted).  Each part is a codec-encoded checkpoint holding only
that bucket's jobs, zlib-compressed, and under ``VALUE_BYTES_MAX`` (etcd refuses
requests over 1.5 MiB): a bucket that compresses bigger is cut into more parts.

**Only dirty buckets are rewritten.**  A bucket's parts are keyed by the LSN they
were written at, so a new checkpoint writes fresh keys for the buckets that
changed and names the old keys of those that did not.  The manifest is put last, in
one txn that also deletes the parts it no longer names: a reader sees the previous
checkpoint or the new one, never a mix, and a writer that dies half-way leaves only
parts no manifest names (swept by the next writer: every key above the manifest's LSN).

**Torn or corrupt** (a part missing, a crc or a mod revision that disagrees with the
manifest): refused loudly (``SnapshotCorrupt``); the reader then tries the previous
manifest, which etcd's history still holds, because MVCC is compacted one snapshot
behind (``LogCompactor``); then the full log, if it is still whole.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Sequence

import attrs
from cattrs.preconf.msgpack import make_converter

from beaverq.impl.storage.codec import (
    SCHEMA_VERSION,
    CodecError,
    decode_checkpoint,
    encode_checkpoint,
)
from beaverq.model import Job, State
from beaverq.model.checkpoint import Checkpoint, checkpoint_of, restore
from beaverq.model.errors import BrokenInvariant
from beaverq.model.state import Counts

from .etcd_client import (
    Compare,
    DeleteRange,
    EtcdClient,
    EtcdError,
    KeyValue,
    LeaderKey,
    Operation,
    Put,
    TxnResult,
    prefix_end,
)
from .etcd_log import ClusterKeys

log = logging.getLogger(__name__)

#: A part's compressed size stays under this: etcd's request limit is 1.5 MiB, and
#: the txn's other keys and the manifest's compare ride on top.
VALUE_BYTES_MAX = 1024 * 1024 - 64 * 1024
#: Jobs per bucket the bucket count aims at.  Smaller buckets mean less rewritten per
#: dirty job, more keys in the manifest; ~1,000 jobs compress to ~30-60 KB.
JOBS_PER_BUCKET = 1024
#: Puts per txn while writing parts, and their bytes (the request limit again).
TXN_OPS_MAX = 100
TXN_BYTES_MAX = VALUE_BYTES_MAX
#: The leader's snapshot thresholds in a cluster (node.py): 20,000 events bound the
#: tail a restart replays; 60 s bounds how long a trickle keeps the log growing.
SNAPSHOT_EVERY_EVENTS = 20_000
SNAPSHOT_INTERVAL_S = 60.0
#: A starting node loads the checkpoint if it is this many events ahead of its state
#: (replaying an event costs about ten times loading a job: docs/performance.md).
RESTORE_GAIN_EVENTS = 1_000
#: Parts read per range request (each at most VALUE_BYTES_MAX).
READ_PAGE = 8
ZLIB_LEVEL = 1  # measured: level 6 is ~3x slower for ~10 % smaller parts


class SnapshotCorrupt(Exception):
    """A checkpoint in etcd that is torn or does not verify: never loaded."""


class SnapshotUnusable(Exception):
    """The node must load a checkpoint (the log prefix it needs is deleted) and none
    loads.  Nothing can rebuild its state: loud, never a silent fork."""


class SnapshotRefused(Exception):
    """The manifest was not put: another writer moved it, or leadership was lost."""


@attrs.frozen
class PartRef:
    key: bytes
    mod_revision: int  # the revision the part was put at: a rewritten key is torn
    crc: int  # of the uncompressed encoding


@attrs.frozen
class BucketRef:
    index: int
    lsn: int  # the checkpoint LSN the bucket was written at
    crc: int  # of the whole bucket's encoding: the diff against the next checkpoint
    jobs: int
    parts: tuple[PartRef, ...]


@attrs.frozen
class Manifest:
    schema_version: int
    lsn: int
    at_ms: int  # the time of the last event at or below ``lsn``: a restorer's clock floor
    bucket_count: int
    jobs: int
    buckets: tuple[BucketRef, ...]
    rest: tuple[PartRef, ...]

    def part_keys(self) -> set[bytes]:
        keys = {part.key for part in self.rest}
        keys.update(part.key for bucket in self.buckets for part in bucket.parts)
        return keys


@attrs.frozen
class Loaded:
    manifest: Manifest
    state: State
    revision: int  # the manifest's mod revision


_converter = make_converter()


def manifest_key(keys: ClusterKeys) -> bytes:
    return keys.root + b"snap/manifest"


def parts_prefix(keys: ClusterKeys) -> bytes:
    return keys.root + b"snap/part/"


def part_key(keys: ClusterKeys, lsn: int, name: str) -> bytes:
    return parts_prefix(keys) + f"{lsn:016x}/{name}".encode()


def bucket_of(job_id: str, count: int) -> int:
    return zlib.crc32(job_id.encode()) % count


def bucket_count_for(jobs: int, previous: int) -> int:
    """A power of two near ``jobs / JOBS_PER_BUCKET``.  It keeps the previous count
    unless that is 2x too small or 4x too big: a new count rehashes (rewrites) every
    job, so it must not flap when the job count hovers at a boundary."""
    wanted = 1
    while wanted * JOBS_PER_BUCKET < jobs:
        wanted *= 2
    if previous and wanted <= previous * 2 and previous <= wanted * 4:
        return previous
    return wanted


def _jobs_blob(jobs: Sequence[Job]) -> bytes:
    """A bucket's jobs in the codec's checkpoint encoding (a checkpoint with no other
    parts), so a part is read with the same code and checks as a local snapshot."""
    holder = Checkpoint(
        last_lsn=0,
        jobs=tuple(jobs),
        ready=(),
        finished_head=0,
        finished_tail=0,
        timers=(),
        paused=(),
        counts=Counts(),
    )
    return encode_checkpoint(holder)


def _cut(jobs: Sequence[Job]) -> list[tuple[bytes, bytes]]:
    """``jobs`` as (raw, compressed) parts, each compressed part under the limit."""
    pieces = 1
    while True:
        size = -(-len(jobs) // pieces)
        parts = []
        for start in range(0, max(len(jobs), 1), max(size, 1)):
            raw = _jobs_blob(jobs[start : start + size])
            parts.append((raw, zlib.compress(raw, ZLIB_LEVEL)))
        if all(len(packed) <= VALUE_BYTES_MAX for _raw, packed in parts):
            return parts
        if size <= 1:
            raise SnapshotRefused("one job compresses to more than an etcd value may hold")
        pieces *= 2


def _chunks(data: bytes) -> list[bytes]:
    return [data[i : i + VALUE_BYTES_MAX] for i in range(0, max(len(data), 1), VALUE_BYTES_MAX)]


@attrs.frozen
class WriteFigures:
    lsn: int
    buckets_written: int
    buckets_total: int
    puts: int
    bytes_written: int
    seconds: float


class CheckpointWriter:
    """The leader's writer of checkpoints (one at a time: LeaderSnapshots' thread)."""

    def __init__(self, client: EtcdClient, keys: ClusterKeys) -> None:
        self._client = client
        self._keys = keys
        self._manifest: Manifest | None = None
        self._manifest_revision = 0
        self._state: State | None = None  # the state of _manifest, for the identity diff
        self._loaded = False
        self._fence: list[Compare] = []
        self.previous_revision = 0  # the manifest revision before the newest one
        self.previous_lsn = 0  # and its LSN
        self.last: WriteFigures | None = None

    @property
    def manifest(self) -> Manifest | None:
        return self._manifest

    def _load_manifest(self) -> None:
        kv = self._client.get(manifest_key(self._keys))
        if kv is not None:
            self._manifest = decode_manifest(kv)
            self._manifest_revision = kv.mod_revision
        self._loaded = True

    def write(self, state: State, at_ms: int, leader: LeaderKey | None = None) -> WriteFigures:
        started = time.perf_counter()
        if not self._loaded:
            self._load_manifest()
        previous = self._manifest
        if previous is not None and state.last_lsn <= previous.lsn:
            raise SnapshotRefused(f"a checkpoint at LSN {previous.lsn} is already in etcd")
        # Parts above the manifest's LSN belong to no checkpoint: a writer died before
        # its manifest.  One delete-range, no listing.
        floor = 0 if previous is None else previous.lsn
        prefix = parts_prefix(self._keys)
        # Every txn of a write is fenced by the epoch: a deposed leader still writing
        # must not sweep away (or add to) the parts of its successor's checkpoint.
        self._fence = [] if leader is None else [Compare(leader.key, "CREATE", leader.revision)]
        self._txn([DeleteRange(part_key(self._keys, floor + 1, ""), prefix_end(prefix))])
        count = bucket_count_for(len(state.jobs), 0 if previous is None else previous.bucket_count)
        grouped: list[list[Job]] = [[] for _ in range(count)]
        checkpoint = checkpoint_of(state)  # jobs in id order: parts encode deterministically
        for job in checkpoint.jobs:
            grouped[bucket_of(job.spec.job_id, count)].append(job)
        old_refs = (
            {}
            if previous is None or previous.bucket_count != count
            else {ref.index: ref for ref in previous.buckets}
        )
        dirty = self._dirty(state, grouped, old_refs)
        lsn = state.last_lsn
        puts: list[tuple[bytes, bytes]] = []
        pending: dict[int, tuple[int, int, list[tuple[bytes, int]]]] = {}
        for index in range(count):
            if index not in dirty:
                continue
            jobs = grouped[index]
            parts = _cut(jobs)
            names = []
            for number, (raw, packed) in enumerate(parts):
                key = part_key(self._keys, lsn, f"b{index:05x}.{number}")
                puts.append((key, packed))
                names.append((key, zlib.crc32(raw)))
            pending[index] = (zlib.crc32(_joined(parts)), len(jobs), names)
        rest_raw = encode_checkpoint(attrs.evolve(checkpoint, jobs=()))
        rest_names = []
        for number, chunk in enumerate(_chunks(zlib.compress(rest_raw, ZLIB_LEVEL))):
            key = part_key(self._keys, lsn, f"rest.{number}")
            puts.append((key, chunk))
            rest_names.append(key)
        revisions = self._put_all(puts)
        buckets = []
        for index in range(count):
            if index in pending:
                crc, jobs_n, names = pending[index]
                refs = tuple(PartRef(key, revisions[key], part_crc) for key, part_crc in names)
                buckets.append(BucketRef(index, lsn, crc, jobs_n, refs))
            else:
                buckets.append(old_refs[index])
        rest_crc = zlib.crc32(rest_raw)
        manifest = Manifest(
            schema_version=SCHEMA_VERSION,
            lsn=lsn,
            at_ms=at_ms,
            bucket_count=count,
            jobs=len(state.jobs),
            buckets=tuple(buckets),
            rest=tuple(PartRef(key, revisions[key], rest_crc) for key in rest_names),
        )
        revision = self._put_manifest(manifest, previous)
        self.previous_revision = self._manifest_revision
        self.previous_lsn = 0 if previous is None else previous.lsn
        self._manifest, self._manifest_revision, self._state = manifest, revision, state
        self.last = WriteFigures(
            lsn=lsn,
            buckets_written=len(dirty),
            buckets_total=count,
            puts=len(puts) + 1,
            bytes_written=sum(len(value) for _key, value in puts),
            seconds=time.perf_counter() - started,
        )
        return self.last

    def _dirty(self, state: State, grouped: list[list[Job]], old: dict[int, BucketRef]) -> set[int]:
        """The buckets to rewrite.  With the previous checkpoint's state in memory, by
        identity: the model's state is persistent, so an unchanged job is the very
        same object (measured ~25 ms per 100,000 jobs).  Without it (a new leader),
        by crc against the manifest: every bucket is encoded (~1 s per 100,000), but
        nothing unchanged is rewritten across a change of leader."""
        count = len(grouped)
        if not old:
            return set(range(count))
        previous = self._state
        if previous is None:
            return {
                index
                for index, jobs in enumerate(grouped)
                if zlib.crc32(_jobs_blob(jobs)) != old[index].crc
            }
        before = previous.jobs
        dirty = {index for index, jobs in enumerate(grouped) if len(jobs) != old[index].jobs}
        for job_id, job in state.jobs.items():
            if before.get(job_id) is not job:
                dirty.add(bucket_of(job_id, count))
        return dirty

    def _txn(self, operations: Sequence[Operation]) -> TxnResult:
        result = self._client.txn(self._fence, operations)
        if not result.succeeded:
            raise SnapshotRefused("leadership lost while writing a checkpoint")
        return result

    def _put_all(self, puts: list[tuple[bytes, bytes]]) -> dict[bytes, int]:
        """Put the parts in txns of bounded size; the revision each landed at."""
        revisions: dict[bytes, int] = {}
        batch: list[tuple[bytes, bytes]] = []
        size = 0
        for key, value in [*puts, (b"", b"")]:
            if batch and (
                not key or len(batch) >= TXN_OPS_MAX or size + len(value) > TXN_BYTES_MAX
            ):
                result = self._txn([Put(k, v) for k, v in batch])
                revisions.update((k, result.revision) for k, _v in batch)
                batch, size = [], 0
            if key:
                batch.append((key, value))
                size += len(value)
        return revisions

    def _put_manifest(self, manifest: Manifest, previous: Manifest | None) -> int:
        key = manifest_key(self._keys)
        compares = [
            Compare(key, "MOD", self._manifest_revision)
            if previous is not None
            else Compare(key, "VERSION", 0),
            *self._fence,
        ]
        stale = sorted((previous.part_keys() if previous else set()) - manifest.part_keys())
        inline, later = stale[: TXN_OPS_MAX - 1], stale[TXN_OPS_MAX - 1 :]
        operations: list[Operation] = [Put(key, encode_manifest(manifest))]
        operations.extend(DeleteRange(stale_key) for stale_key in inline)
        result = self._client.txn(compares, operations)
        if not result.succeeded:
            self._loaded = False  # someone else wrote: read theirs next time
            self._state = None
            raise SnapshotRefused("the manifest moved or leadership was lost: not written")
        # Parts beyond one txn's reach go after it; if this dies half-way they linger
        # until their bucket is rewritten (they are named by no manifest, read by none).
        for start in range(0, len(later), TXN_OPS_MAX):
            self._txn([DeleteRange(k) for k in later[start : start + TXN_OPS_MAX]])
        return result.revision


def _joined(parts: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(raw for raw, _packed in parts)


def encode_manifest(manifest: Manifest) -> bytes:
    data: bytes = _converter.dumps(manifest)
    return data


def decode_manifest(kv: KeyValue) -> Manifest:
    try:
        manifest = _converter.loads(kv.value, Manifest)
    except Exception as error:  # any decoding failure means the same: not a manifest
        raise SnapshotCorrupt(f"{kv.key!r} does not hold a manifest: {error}") from None
    if manifest.schema_version != SCHEMA_VERSION:
        raise SnapshotCorrupt(f"manifest of schema {manifest.schema_version}, not {SCHEMA_VERSION}")
    return manifest


# -- reading ----------------------------------------------------------------------------


def read_checkpoint(client: EtcdClient, keys: ClusterKeys, *, revision: int = 0) -> Loaded | None:
    """The checkpoint the manifest names (at ``revision`` if given), verified part by
    part; None if there is no manifest.  ``SnapshotCorrupt`` if it is torn."""
    found = client.range(manifest_key(keys), revision=revision)
    if not found.kvs:
        return None
    kv = found.kvs[0]
    manifest = decode_manifest(kv)
    # Every part at the revision the manifest was read at: one consistent cut, even if
    # a newer checkpoint is being written meanwhile.
    at = revision or found.revision
    values = _read_parts(client, keys, at, manifest.part_keys())
    jobs: list[Job] = []
    for bucket in manifest.buckets:
        bucket_jobs: list[Job] = []
        for part in bucket.parts:
            bucket_jobs.extend(_verified(values, part).jobs)
        if len(bucket_jobs) != bucket.jobs:
            raise SnapshotCorrupt(
                f"bucket {bucket.index}: {len(bucket_jobs)} jobs, not {bucket.jobs}"
            )
        for job in bucket_jobs:
            if bucket_of(job.spec.job_id, manifest.bucket_count) != bucket.index:
                raise SnapshotCorrupt(f"job {job.spec.job_id!r} is in bucket {bucket.index}")
        jobs.extend(bucket_jobs)
    rest_packed = b"".join(_value(values, part).value for part in manifest.rest)
    rest = _decoded(rest_packed, manifest.rest[0] if manifest.rest else None, b"rest")
    jobs.sort(key=lambda job: job.spec.job_id)
    try:
        state = restore(attrs.evolve(rest, jobs=tuple(jobs), last_lsn=manifest.lsn))
    except BrokenInvariant as error:
        raise SnapshotCorrupt(
            f"checkpoint at LSN {manifest.lsn} does not restore: {error}"
        ) from None
    return Loaded(manifest, state, kv.mod_revision)


def _read_parts(
    client: EtcdClient, keys: ClusterKeys, revision: int, wanted: set[bytes]
) -> dict[bytes, KeyValue]:
    values: dict[bytes, KeyValue] = {}
    start, end = parts_prefix(keys), prefix_end(parts_prefix(keys))
    while True:
        page = client.range(start, end, limit=READ_PAGE, revision=revision)
        values.update((kv.key, kv) for kv in page.kvs if kv.key in wanted)
        if not page.more or not page.kvs:
            return values
        start = page.kvs[-1].key + b"\x00"


def _value(values: dict[bytes, KeyValue], part: PartRef) -> KeyValue:
    kv = values.get(part.key)
    if kv is None:
        raise SnapshotCorrupt(f"part {part.key!r} is missing")
    if kv.mod_revision != part.mod_revision:
        raise SnapshotCorrupt(
            f"part {part.key!r} was rewritten at revision {kv.mod_revision} "
            f"(the manifest names {part.mod_revision})"
        )
    return kv


def _verified(values: dict[bytes, KeyValue], part: PartRef) -> Checkpoint:
    return _decoded(_value(values, part).value, part, part.key)


def _decoded(packed: bytes, part: PartRef | None, name: bytes) -> Checkpoint:
    try:
        raw = zlib.decompress(packed)
    except zlib.error as error:
        raise SnapshotCorrupt(f"part {name!r} does not decompress: {error}") from None
    if part is not None and zlib.crc32(raw) != part.crc:
        raise SnapshotCorrupt(f"part {name!r}: crc mismatch")
    try:
        return decode_checkpoint(raw)
    except CodecError as error:
        raise SnapshotCorrupt(f"part {name!r}: {error}") from None


def load_checkpoint(client: EtcdClient, keys: ClusterKeys, *, revision: int = 0) -> Loaded | None:
    """The newest checkpoint that verifies: the manifest's, else (loudly) the previous
    manifest's, which etcd's history keeps (MVCC is compacted one checkpoint behind).
    None if there is none; ``SnapshotCorrupt`` if neither verifies."""
    try:
        return read_checkpoint(client, keys, revision=revision)
    except SnapshotCorrupt as error:
        log.error("beaverq: the checkpoint in etcd is refused (%s); trying the previous one", error)
        found = client.range(manifest_key(keys), revision=revision)
        if not found.kvs or found.kvs[0].version <= 1:
            raise
        try:
            return read_checkpoint(client, keys, revision=found.kvs[0].mod_revision - 1)
        except (SnapshotCorrupt, EtcdError) as older:
            raise SnapshotCorrupt(f"{error}; and the previous checkpoint: {older}") from None


class CheckpointSource:
    """A follower's way back when the log it needs is deleted, or far ahead (follower.py)."""

    def __init__(self, client: EtcdClient, keys: ClusterKeys) -> None:
        self._client = client
        self._keys = keys
        self.loads = 0

    def restore_if_behind(self, last_lsn: int, revision: int) -> tuple[State, int] | None:
        """At etcd ``revision``: (state, time of its last event) to continue from, or
        None to go on from the log.  ``SnapshotUnusable`` if the log prefix after
        ``last_lsn`` is deleted and no checkpoint verifies."""
        compacted_kv = self._client.range(self._keys.compacted, revision=revision).kvs
        compacted = int(compacted_kv[0].value) if compacted_kv else 0
        found = self._client.range(manifest_key(self._keys), revision=revision).kvs
        must = compacted > last_lsn
        if not found:
            if must:
                raise SnapshotUnusable(
                    f"the log up to LSN {compacted} is deleted and no checkpoint exists"
                )
            return None
        try:
            ahead = decode_manifest(found[0]).lsn - last_lsn
        except SnapshotCorrupt as error:
            if must:  # load_checkpoint below falls back to the previous manifest
                ahead = 0
            else:  # the log is whole: a checkpoint is only a shortcut
                log.error("beaverq: replaying the log instead (%s)", error)
                return None
        if not must and ahead < RESTORE_GAIN_EVENTS:
            return None
        try:
            loaded = load_checkpoint(self._client, self._keys, revision=revision)
        except SnapshotCorrupt as error:
            if must:
                raise SnapshotUnusable(
                    f"the log up to LSN {compacted} is deleted and no checkpoint loads: {error}"
                ) from None
            log.error("beaverq: replaying the whole log instead (%s)", error)
            return None
        if loaded is None or loaded.state.last_lsn <= last_lsn:
            return None
        if loaded.state.last_lsn < compacted:
            raise SnapshotUnusable(
                f"the newest checkpoint that loads is at LSN {loaded.state.last_lsn}, "
                f"the log is deleted up to {compacted}"
            )
        self.loads += 1
        return loaded.state, loaded.manifest.at_ms
