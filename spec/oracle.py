"""A deliberately naive oracle of the job queue, for differential testing.

The oracle is a second implementation of ``docs/semantics.md``, written from that page
alone, without reading ``model/decide.py``, ``model/evolve.py``, ``model/state.py`` or the
other modules that hold the model's decisions.  Independence is the point: a test that
runs the same commands through the model and through this file, and demands the same
events and the same resulting jobs, can only pass if both readings of the page agree.  A
misreading shared by both would go unseen, so the two share nothing but the vocabulary
(the command classes, ``Rejected``, the limits and the status names).

Naive on purpose, so that it is easy to believe:

- the state is a plain dict of small mutable records, a list of finished job ids in
  the order they finished, and a list of paused queue names;
- every choice (the next job to lease, the next lease to expire, the next delayed
  job to release, the job behind an idempotency key) is a linear scan of every job;
- every multi-event command re-scans after each event, which is literally "each event
  decided on the state left by the ones before" (semantics.md, Tick);
- a command first checks everything it may refuse, and only then changes anything, so
  a refusal changes nothing without needing copies or undo.

No event objects are built: ``execute`` returns each event as a plain dict, its type
name under ``"type"`` and every field the page gives it (the LSN, the time, the job
or queue, and what the event records: a lease's expiry, a failure's error and retry
time, ...), which the differential test compares field by field with the model's
events.  A field whose exact text the page leaves open holds a ``Prefix``: the part
the page does fix.  Nothing here is fast (most commands are O(jobs), a Tick
O(jobs * events)); the test keeps states small.
"""

from __future__ import annotations

import dataclasses
import json
import unicodedata

from beaverq.model import limits
from beaverq.model.commands import (
    AbandonNode,
    Cancel,
    Command,
    Complete,
    Enqueue,
    Fail,
    Lease,
    PauseQueue,
    Recover,
    Release,
    Requeue,
    ResumeQueue,
    Tick,
)
from beaverq.model.errors import BrokenInvariant, Rejected, Rejection
from beaverq.model.lifecycle import JobStatus

EventRecord = dict[str, object]  # "type" and every field of one event


@dataclasses.dataclass(frozen=True)
class Prefix:
    """An event field of which the page fixes only the start (an error's detail is the
    refusing rule's message, whose wording the page does not give)."""

    text: str


_FINISHED = (JobStatus.COMPLETED, JobStatus.DEAD, JobStatus.CANCELLED)
_ASCII_DIGITS = "0123456789"
_ASCII_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" + _ASCII_DIGITS
# semantics.md: a queue name matches [A-Za-z0-9][A-Za-z0-9_.:-]*.  Spelled out as
# character sets rather than a regular expression, to stay a separate reading of it.
_QUEUE_FIRST = _ASCII_ALNUM
_QUEUE_REST = _ASCII_ALNUM + "_.:-"
# semantics.md, AbandonNode: worker i of node n is called n + "-w" + i, i in decimal
# without leading zeros.  Restated here as text, not imported from model/nodes.py.
_NODE_WORKER_MARK = "-w"


class _Refusal(Exception):
    """Internal: a rule broken; ``execute`` turns it into ``Rejected``."""

    def __init__(self, rule: str, detail: str, job_id: str | None = None) -> None:
        super().__init__(rule)
        self.rule = rule
        self.detail = detail
        self.job_id = job_id


@dataclasses.dataclass
class _Job:
    """One job, mutable: the oracle edits it in place."""

    job_id: str
    queue: str
    handler: str
    args_json: str
    priority: int
    max_attempts: int
    timeout_ms: int
    backoff_base_ms: int
    backoff_cap_ms: int
    idempotency_key: str | None
    status: JobStatus
    ready_at_ms: int  # DELAYED: when it may be released
    ready_lsn: int  # the LSN of the event that made it PENDING, or scheduled it
    attempt: int = 0  # leases ever granted: the fence
    attempts_used: int = 0  # leases counted against max_attempts
    cancel_requested: bool = False
    lease_expires_at_ms: int | None = None
    lease_worker_id: str | None = None  # IN_FLIGHT: the worker the live lease went to
    finished_at_ms: int | None = None
    result_json: str | None = None  # COMPLETED: what the worker returned

    def spec(self) -> dict[str, object]:
        """What the enqueue asked for, as ``JobEnqueued`` records it."""
        return {
            "job_id": self.job_id,
            "queue": self.queue,
            "handler": self.handler,
            "args_json": self.args_json,
            "priority": self.priority,
            "max_attempts": self.max_attempts,
            "timeout_ms": self.timeout_ms,
            "backoff_base_ms": self.backoff_base_ms,
            "backoff_cap_ms": self.backoff_cap_ms,
            "idempotency_key": self.idempotency_key,
        }


# -- field checks (semantics.md, Enqueue step 1; rule names <field>_<problem>) --------


def _check_int(name: str, value: object, low: int, high: int, job_id: str | None = None) -> None:
    # bool is an int in Python, but never a meaningful count or time.
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Refusal(f"{name}_invalid", f"{name} is not an integer", job_id)
    if value < low or value > high:
        raise _Refusal(f"{name}_out_of_range", f"{name}={value} not in [{low}, {high}]", job_id)


def _has_utf8_form(text: str) -> bool:
    # A lone surrogate (a str can hold one) has no UTF-8 form: such text cannot be
    # logged, and its size in UTF-8 bytes is not even defined.  NOT in semantics.md:
    # adopted from model commit eabbd40 (text with lone surrogates is <field>_invalid,
    # checked before the size); reported.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _utf8_bytes(text: str) -> int:
    return len(text.encode("utf-8"))


def _is_space_or_control(ch: str) -> bool:
    # "white space or control characters": Unicode white space, and every character of
    # the Unicode general category C ("Other": Cc control, Cf format such as U+200B, Cs
    # surrogate, Co private use, Cn unassigned).  The first reading here was Cc alone;
    # the differential test showed the model refuses all of C, and semantics.md's words
    # are loose enough for both (reported; see test_regression_format_character_in_id).
    return ch.isspace() or unicodedata.category(ch).startswith("C")


def _check_token(name: str, value: object, bytes_max: int) -> None:
    if not isinstance(value, str) or value == "":
        raise _Refusal(f"{name}_invalid", f"{name} must be a non-empty string")
    if not _has_utf8_form(value):  # before the length, which needs a UTF-8 form
        raise _Refusal(f"{name}_invalid", f"{name} holds a lone surrogate")
    if _utf8_bytes(value) > bytes_max:
        raise _Refusal(f"{name}_too_long", f"{name} exceeds {bytes_max} bytes")
    for ch in value:
        if _is_space_or_control(ch):
            raise _Refusal(f"{name}_invalid", f"{name} contains white space or a control")


def _check_job_id(job_id: str) -> None:
    _check_token("job_id", job_id, limits.JOB_ID_BYTES_MAX)
    # "j" then one or more digits is the shape of derived ids; callers may not use it.
    rest = job_id[1:]
    if job_id.startswith("j") and rest != "" and all(ch in _ASCII_DIGITS for ch in rest):
        raise _Refusal("job_id_reserved", f"{job_id!r} has the shape of a derived id")


def _check_queue(queue: str) -> None:
    _check_token("queue", queue, limits.QUEUE_NAME_BYTES_MAX)
    if queue[0] not in _QUEUE_FIRST or any(ch not in _QUEUE_REST for ch in queue[1:]):
        raise _Refusal("queue_invalid", f"queue {queue!r} has a character not allowed")


def _check_node(node: str) -> None:
    _check_token("node", node, limits.NODE_NAME_BYTES_MAX)
    if _NODE_WORKER_MARK in node:
        raise _Refusal("node_invalid", f"node {node!r} holds {_NODE_WORKER_MARK!r}")


def _is_worker_of(worker_id: str, node: str) -> bool:
    """Whether ``worker_id`` is ``node + "-w" + i`` for an index i in [0, IN_FLIGHT_MAX)
    written in decimal without leading zeros (semantics.md, AbandonNode)."""
    head = node + _NODE_WORKER_MARK
    if not worker_id.startswith(head):
        return False
    index = worker_id[len(head) :]
    if index == "" or any(ch not in _ASCII_DIGITS for ch in index):
        return False
    if index != "0" and index.startswith("0"):
        return False
    return int(index) < limits.IN_FLIGHT_MAX


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _check_json(name: str, text: object, bytes_max: int, job_id: str | None = None) -> None:
    if not isinstance(text, str):
        raise _Refusal(f"{name}_invalid", f"{name} must be JSON text", job_id)
    if not _has_utf8_form(text):  # JSON text is Unicode text; see _has_utf8_form
        raise _Refusal(f"{name}_invalid", f"{name} holds a lone surrogate", job_id)
    if _utf8_bytes(text) > bytes_max:
        raise _Refusal(f"{name}_too_large", f"{name} exceeds {bytes_max} bytes", job_id)
    if _nesting_depth(text) > limits.JSON_DEPTH_MAX:
        raise _Refusal(f"{name}_too_deep", f"{name} nests too deep", job_id)
    try:
        # parse_constant is called for NaN, Infinity and -Infinity only.
        json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as error:
        raise _Refusal(f"{name}_invalid", f"{name} is not JSON: {error}", job_id) from None


def _nesting_depth(text: str) -> int:
    """semantics.md, "JSON payloads": outside strings, [ and { open a level, ] and }
    close one; the depth is the most levels open at once.  A string runs from a
    quote to the next quote no backslash escapes.  Read one character at a time."""
    depth = deepest = 0
    in_string = False
    position = 0
    while position < len(text):
        ch = text[position]
        if in_string and ch == "\\":
            position += 2  # the backslash and the character it escapes
            continue
        if ch == '"':
            in_string = not in_string
        elif not in_string and ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif not in_string and ch in "]}":
            depth -= 1
        position += 1
    return deepest


def _storable_error(text: str) -> str:
    """semantics.md: "an error message has [lone surrogates] replaced by U+FFFD", and
    "the error is cut to 4 KiB".  NOT in semantics.md (adopted from the model, found
    when the differential test began comparing every event field; reported): a lone
    surrogate becomes three U+FFFD, one per byte of its 3-byte form, and the cut drops
    a character that would straddle the 4,096th byte."""
    replaced = "".join("\ufffd" * 3 if 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in text)
    kept: list[str] = []
    size = 0
    for ch in replaced:
        size += _utf8_bytes(ch)
        if size > limits.ERROR_BYTES_MAX:
            break
        kept.append(ch)
    return "".join(kept)


def _backoff_ms(attempts_used: int, base_ms: int, cap_ms: int, jitter_seed: int) -> int:
    """semantics.md, Fail: with w = min(cap, base * 2**(attempts_used-1)),
    backoff = w//2 + seed % (w - w//2 + 1): "equal jitter" over the upper half of w."""
    # Python integers do not overflow, so the power is computed as written (1 << n is 2**n
    # typed as int; attempts_used >= 1 here, as a failing job was leased at least once).
    window = min(cap_ms, base_ms * (1 << (attempts_used - 1)))
    half = window // 2
    return half + jitter_seed % (window - half + 1)


class Oracle:
    """The queue as plain mutable data; ``execute`` one command at a time."""

    def __init__(self) -> None:
        self.jobs: dict[str, _Job] = {}
        self.finished_order: list[str] = []  # finished job ids, oldest finish first
        self.paused: list[str] = []
        self.last_lsn = 0
        self._events: list[EventRecord] = []
        self._now_ms = 0

    # -- the interface ---------------------------------------------------------------

    def execute(self, command: Command) -> list[EventRecord]:
        """The events ``command`` produces, in order; or raise ``Rejected``."""
        self._events = []
        try:
            # NOW_MS_MAX (2**52): half of TIME_MS_MAX, so now + any bounded delay is exact.
            _check_int("now_ms", command.now_ms, 0, limits.NOW_MS_MAX)
            self._now_ms = command.now_ms
            self._dispatch(command)
        except _Refusal as refusal:
            # Every handler checks before it changes anything, so nothing to undo.
            if self._events != []:
                raise BrokenInvariant("a refusal after an event was emitted") from refusal
            raise Rejected(
                Rejection(
                    command=type(command).__name__,
                    rule=refusal.rule,
                    detail=refusal.detail,
                    job_id=refusal.job_id,
                )
            ) from None
        return list(self._events)

    def observe(self) -> dict[str, object]:
        """A summary to compare with the model's state (see the differential test)."""
        pending_or_delayed = (JobStatus.PENDING, JobStatus.DELAYED)
        return {
            "jobs": {
                job.job_id: {
                    "spec": job.spec(),
                    "status": job.status.value,
                    "attempt": job.attempt,
                    "attempts_used": job.attempts_used,
                    "cancel_requested": job.cancel_requested,
                    # Each time below only where the page gives it a meaning.
                    "ready_lsn": job.ready_lsn if job.status in pending_or_delayed else None,
                    "ready_at_ms": job.ready_at_ms if job.status is JobStatus.DELAYED else None,
                    "lease_expires_at_ms": job.lease_expires_at_ms
                    if job.status is JobStatus.IN_FLIGHT
                    else None,
                    "lease_worker_id": job.lease_worker_id
                    if job.status is JobStatus.IN_FLIGHT
                    else None,
                    "finished_at_ms": job.finished_at_ms if job.status in _FINISHED else None,
                    "result_json": job.result_json if job.status is JobStatus.COMPLETED else None,
                }
                for job in self.jobs.values()
            },
            "finished_order": list(self.finished_order),
            "paused_queues": frozenset(self.paused),
            "last_lsn": self.last_lsn,
        }

    # -- plumbing --------------------------------------------------------------------

    def _dispatch(self, command: Command) -> None:
        if isinstance(command, Enqueue):
            self._enqueue(command)
        elif isinstance(command, Lease):
            self._lease(command)
        elif isinstance(command, Complete):
            self._complete(command)
        elif isinstance(command, Fail):
            self._fail(command)
        elif isinstance(command, Release):
            self._release(command)
        elif isinstance(command, Tick):
            self._tick(command)
        elif isinstance(command, Cancel):
            self._cancel(command)
        elif isinstance(command, Requeue):
            self._requeue(command)
        elif isinstance(command, PauseQueue):
            self._pause(command)
        elif isinstance(command, ResumeQueue):
            self._resume(command)
        elif isinstance(command, Recover):
            self._recover()
        elif isinstance(command, AbandonNode):
            self._abandon_node(command)
        else:  # pragma: no cover - the Command union is exhaustive
            raise AssertionError(f"unknown command {command!r}")

    def _emit(self, event_type: str, **fields: object) -> int:
        """Record an event with its fields; return its LSN (the previous one + 1)."""
        self.last_lsn += 1
        self._events.append(
            {"type": event_type, "lsn": self.last_lsn, "at_ms": self._now_ms, **fields}
        )
        return self.last_lsn

    def _job(self, job_id: str) -> _Job:
        # NOT in semantics.md (found by the differential test, reported): a command that
        # names a job first checks the id as a token (non-empty, JOB_ID_BYTES_MAX bytes,
        # no white space or control), refusing with job_id_invalid / job_id_too_long
        # rather than job_not_found.  The j<digits> shape is allowed: derived ids have it.
        _check_token("job_id", job_id, limits.JOB_ID_BYTES_MAX)
        job = self.jobs.get(job_id)
        if job is None:
            raise _Refusal("job_not_found", f"no job {job_id!r}", job_id)
        return job

    def _finish(self, job: _Job, status: JobStatus) -> None:
        job.status = status
        job.finished_at_ms = self._now_ms
        job.lease_expires_at_ms = None
        job.lease_worker_id = None
        self.finished_order.append(job.job_id)

    def _end_attempt(self, job: _Job, event_type: str, retry_at_ms: int, **fields: object) -> None:
        """An attempt ended without success (failure, expiry, abandonment, release):
        decide its fate, record it in the event (``target``, ``retry_at_ms``), apply it."""
        job.lease_expires_at_ms = None
        job.lease_worker_id = None
        if job.cancel_requested:
            target, retry = JobStatus.CANCELLED, None
        elif job.attempts_used >= job.max_attempts:
            target, retry = JobStatus.DEAD, None
        else:
            # Delayed until the retry time, or pending at once if that is now.
            target = JobStatus.DELAYED if retry_at_ms > self._now_ms else JobStatus.PENDING
            retry = retry_at_ms
        lsn = self._emit(
            event_type,
            job_id=job.job_id,
            attempt=job.attempt,
            **fields,
            target=target,
            retry_at_ms=retry,
        )
        if retry is None:
            self._finish(job, target)
        else:
            job.status = target
            job.ready_at_ms = retry
            job.ready_lsn = lsn

    def _fate_would_retry(self, job: _Job) -> bool:
        return not job.cancel_requested and job.attempts_used < job.max_attempts

    # -- commands --------------------------------------------------------------------

    def _enqueue(self, c: Enqueue) -> None:
        # Step 1: the field checks, in the order semantics.md lists them.
        if c.job_id is not None:
            _check_job_id(c.job_id)
        _check_queue(c.queue)
        _check_token("handler", c.handler, limits.HANDLER_NAME_BYTES_MAX)
        _check_json("args_json", c.args_json, limits.ARGS_JSON_BYTES_MAX)
        _check_int("priority", c.priority, limits.PRIORITY_MIN, limits.PRIORITY_MAX)
        _check_int("max_attempts", c.max_attempts, 1, limits.ATTEMPTS_MAX)
        _check_int("timeout_ms", c.timeout_ms, limits.TIMEOUT_MS_MIN, limits.TIMEOUT_MS_MAX)
        _check_int("delay_ms", c.delay_ms, 0, limits.DELAY_MS_MAX)
        _check_int("backoff_cap_ms", c.backoff_cap_ms, 0, limits.BACKOFF_CAP_MS_MAX)
        _check_int("backoff_base_ms", c.backoff_base_ms, 0, c.backoff_cap_ms)
        if c.idempotency_key is not None:
            _check_token("idempotency_key", c.idempotency_key, limits.IDEMPOTENCY_KEY_BYTES_MAX)
        # Step 2: a job holding the key stands for this enqueue, whatever else differs.
        if c.idempotency_key is not None:
            for job in self.jobs.values():
                if job.idempotency_key == c.idempotency_key:
                    return
        # Step 3: the id, given or derived from the LSN this event will take.
        lsn = self.last_lsn + 1
        job_id = c.job_id if c.job_id is not None else f"j{lsn}"
        if job_id in self.jobs:
            raise _Refusal("job_id_taken", f"job {job_id!r} exists", job_id)
        if len(self.jobs) >= limits.JOBS_MAX:
            raise _Refusal("jobs_max_reached", "JOBS_MAX jobs in the state", job_id)
        # Step 4.
        ready_at = c.now_ms + c.delay_ms
        job = _Job(
            job_id=job_id,
            queue=c.queue,
            handler=c.handler,
            args_json=c.args_json,
            priority=c.priority,
            max_attempts=c.max_attempts,
            timeout_ms=c.timeout_ms,
            backoff_base_ms=c.backoff_base_ms,
            backoff_cap_ms=c.backoff_cap_ms,
            idempotency_key=c.idempotency_key,
            status=JobStatus.PENDING if ready_at <= c.now_ms else JobStatus.DELAYED,
            ready_at_ms=ready_at,
            ready_lsn=lsn,
        )
        emitted_lsn = self._emit(
            "JobEnqueued", spec=job.spec(), ready_at_ms=ready_at, target=job.status
        )
        if emitted_lsn != lsn:
            raise BrokenInvariant(f"JobEnqueued of {job_id!r} at LSN {emitted_lsn}, not {lsn}")
        self.jobs[job_id] = job

    def _lease(self, c: Lease) -> None:
        _check_token("worker_id", c.worker_id, limits.WORKER_ID_BYTES_MAX)
        best: _Job | None = None
        for job in self.jobs.values():
            if job.status is not JobStatus.PENDING or job.queue in self.paused:
                continue
            # Highest priority first; among equals, the smallest ready LSN.
            if best is None or (-job.priority, job.ready_lsn) < (-best.priority, best.ready_lsn):
                best = job
        if best is None:
            return
        in_flight = sum(1 for job in self.jobs.values() if job.status is JobStatus.IN_FLIGHT)
        if in_flight >= limits.IN_FLIGHT_MAX:
            raise _Refusal("in_flight_max_reached", "IN_FLIGHT_MAX jobs in flight")
        best.status = JobStatus.IN_FLIGHT
        best.attempt += 1
        best.attempts_used += 1
        best.lease_expires_at_ms = c.now_ms + best.timeout_ms
        best.lease_worker_id = c.worker_id
        self._emit(
            "LeaseGranted",
            job_id=best.job_id,
            attempt=best.attempt,
            worker_id=c.worker_id,
            expires_at_ms=best.lease_expires_at_ms,
        )

    def _live_attempt(self, job_id: str, attempt: int) -> _Job:
        """The job, which must be in flight under exactly this attempt."""
        job = self._job(job_id)
        # An attempt must be an integer (True or 1.0 must not pass for 1); any integer
        # other than the live attempt is stale, however large.
        if isinstance(attempt, bool) or not isinstance(attempt, int):
            raise _Refusal("attempt_invalid", f"attempt {attempt!r} is not an integer", job_id)
        if job.status is not JobStatus.IN_FLIGHT or job.attempt != attempt:
            raise _Refusal(
                "stale_attempt", f"attempt {attempt} is not the live lease of {job_id!r}", job_id
            )
        return job

    def _complete(self, c: Complete) -> None:
        # semantics.md names the job checks first, then the seed, then the result: a
        # result for a stale attempt is refused as stale whatever it holds.
        job = self._live_attempt(c.job_id, c.attempt)
        _check_int("jitter_seed", c.jitter_seed, 0, 2**64 - 1, job.job_id)
        try:
            _check_json("result_json", c.result_json, limits.RESULT_JSON_BYTES_MAX, job.job_id)
        except _Refusal:
            # A result that cannot be stored fails the attempt, exactly as a Fail
            # with the command's seed would (semantics.md, Complete).
            # The error is "the result was refused: <detail>", the detail being the
            # result_json rule's message, whose wording the page leaves open.
            self._fail_attempt(job, c.jitter_seed, Prefix("the result was refused: "))
            return
        self._emit(
            "JobCompleted", job_id=job.job_id, attempt=job.attempt, result_json=c.result_json
        )
        # Completed even if a cancellation was requested: the work was done.
        self._finish(job, JobStatus.COMPLETED)
        job.result_json = c.result_json

    def _fail(self, c: Fail) -> None:
        job = self._live_attempt(c.job_id, c.attempt)  # job first, as for Complete
        _check_int("jitter_seed", c.jitter_seed, 0, 2**64 - 1, job.job_id)
        self._fail_attempt(job, c.jitter_seed, _storable_error(c.error))

    def _fail_attempt(self, job: _Job, jitter_seed: int, error: str | Prefix) -> None:
        retry_at = self._now_ms  # unused when there is no retry (dead or cancelled)
        if self._fate_would_retry(job):
            retry_at += _backoff_ms(
                job.attempts_used, job.backoff_base_ms, job.backoff_cap_ms, jitter_seed
            )
        self._end_attempt(job, "JobFailed", retry_at, error=error)

    def _release(self, c: Release) -> None:
        # The same fence as a result: only the live attempt may be given back.
        job = self._live_attempt(c.job_id, c.attempt)
        # The attempt is handed back uncounted, so its fate is never dead; the fence
        # (job.attempt) stays, so the released worker's late result is stale.  Ready
        # at once, at the end of its FIFO, as after any return to pending.
        job.attempts_used -= 1
        self._end_attempt(job, "LeaseReleased", self._now_ms)

    def _tick(self, c: Tick) -> None:
        # NOT in semantics.md (seen in model/decide.py after this oracle was written;
        # reported, pinned by a regression test): the model refuses a retention outside
        # [0, TIME_MS_MAX] and a retained maximum outside [0, JOBS_MAX], with the usual
        # <field>_out_of_range rules.
        _check_int("retention_ms", c.retention_ms, 0, limits.TIME_MS_MAX)
        _check_int("finished_jobs_retained_max", c.finished_jobs_retained_max, 0, limits.JOBS_MAX)
        now = c.now_ms
        # Phase 1: expire leases due by now, by (expires_at, job id).
        for _ in range(limits.TICK_EXPIRIES_MAX):
            due = [
                job
                for job in self.jobs.values()
                if job.status is JobStatus.IN_FLIGHT
                and job.lease_expires_at_ms is not None
                and job.lease_expires_at_ms <= now
            ]
            if not due:
                break
            job = min(due, key=lambda j: (j.lease_expires_at_ms, j.job_id))
            self._end_attempt(job, "LeaseExpired", now)  # a retry after expiry is immediate
        # Phase 2: release delayed jobs due by now, by (ready_at, ready LSN).
        for _ in range(limits.TICK_PROMOTIONS_MAX):
            ripe = [
                job
                for job in self.jobs.values()
                if job.status is JobStatus.DELAYED and job.ready_at_ms <= now
            ]
            if not ripe:
                break
            job = min(ripe, key=lambda j: (j.ready_at_ms, j.ready_lsn))
            job.ready_lsn = self._emit("DelayElapsed", job_id=job.job_id)
            job.status = JobStatus.PENDING
        # Phase 3: forget the oldest finished job while it is too many or too old.
        for _ in range(limits.TICK_FORGETS_MAX):
            if not self.finished_order:
                break
            oldest = self.jobs[self.finished_order[0]]
            if oldest.finished_at_ms is None:
                raise BrokenInvariant(f"finished job {oldest.job_id!r} has no finish time")
            too_many = len(self.finished_order) > c.finished_jobs_retained_max
            too_old = oldest.finished_at_ms + c.retention_ms <= now
            if not (too_many or too_old):
                break
            self._emit("JobForgotten", job_id=oldest.job_id)
            # The idempotency key lives in the job record, so it leaves with it.
            del self.jobs[oldest.job_id]
            self.finished_order.pop(0)

    def _cancel(self, c: Cancel) -> None:
        job = self._job(c.job_id)
        if job.status in (JobStatus.PENDING, JobStatus.DELAYED):
            self._emit("JobCancelled", job_id=job.job_id)
            self._finish(job, JobStatus.CANCELLED)
        elif job.status is JobStatus.IN_FLIGHT:
            if not job.cancel_requested:
                self._emit("CancelRequested", job_id=job.job_id)
                job.cancel_requested = True
        elif job.status is JobStatus.CANCELLED:
            pass
        else:
            raise _Refusal("job_finished", f"job {c.job_id!r} is {job.status.value}", c.job_id)

    def _requeue(self, c: Requeue) -> None:
        job = self._job(c.job_id)
        if job.status is not JobStatus.DEAD:
            raise _Refusal("job_not_dead", f"job {c.job_id!r} is {job.status.value}", c.job_id)
        lsn = self._emit("JobRequeued", job_id=job.job_id)
        self.finished_order.remove(job.job_id)
        job.status = JobStatus.PENDING
        job.attempts_used = 0
        job.cancel_requested = False
        job.finished_at_ms = None
        job.ready_at_ms = c.now_ms
        job.ready_lsn = lsn

    def _pause(self, c: PauseQueue) -> None:
        _check_queue(c.queue)
        if c.queue in self.paused:
            return
        if len(self.paused) >= limits.PAUSED_QUEUES_MAX:
            raise _Refusal("paused_queues_max_reached", "PAUSED_QUEUES_MAX queues paused")
        self._emit("QueuePaused", queue=c.queue)
        self.paused.append(c.queue)

    def _resume(self, c: ResumeQueue) -> None:
        _check_queue(c.queue)
        if c.queue not in self.paused:
            return
        self._emit("QueueResumed", queue=c.queue)
        self.paused.remove(c.queue)

    def _recover(self) -> None:
        # Every in-flight lease, by (expires_at, job id), in one decision.
        while True:
            held = [job for job in self.jobs.values() if job.status is JobStatus.IN_FLIGHT]
            if not held:
                break
            job = min(held, key=lambda j: (j.lease_expires_at_ms, j.job_id))
            # An immediate retry, as for an expiry.
            self._end_attempt(job, "LeaseAbandoned", self._now_ms)

    def _abandon_node(self, c: AbandonNode) -> None:
        # Recover, narrowed to the leases whose worker is one of the node's.  Written
        # out again rather than sharing Recover's loop: the model shares one path, and
        # the oracle's job is to be a second reading.
        _check_node(c.node)
        while True:
            held = [
                job
                for job in self.jobs.values()
                if job.status is JobStatus.IN_FLIGHT
                and job.lease_worker_id is not None
                and _is_worker_of(job.lease_worker_id, c.node)
            ]
            if not held:
                break
            job = min(held, key=lambda j: (j.lease_expires_at_ms, j.job_id))
            # An immediate retry, as for an expiry.
            self._end_attempt(job, "LeaseAbandoned", self._now_ms)
