"""WAL record framing (impl/storage/record.py): bytes in, a record or a precise verdict out.

The frame is what stands between a damaged disk and a wrong replay.  These tests
check its promises one by one: a frame decodes to exactly what was encoded; every
frame is a multiple of 8 bytes and its length sits in the first aligned 8-byte
word (so a torn write cannot tear it); any single damaged byte is detected; the
chain CRC detects frames deleted, duplicated, reordered or spliced in from another
log even when each frame is intact on its own; zeroed (preallocated) space is
never taken for a frame; and the search for evidence beyond damage finds the
intact frames after it.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from beaverq.impl.storage.record import (
    ALIGNMENT,
    HEADER,
    HEADER_BYTES,
    MAGIC,
    FrameProblem,
    Record,
    RecordKind,
    decode_frame,
    encode_frame,
    find_valid_frames_after,
    is_zero,
    padding_for,
)

SECTOR = 512

PAYLOADS = st.binary(max_size=100)
LSNS = st.integers(0, 2**63 - 1)
CHAINS = st.integers(0, 2**32 - 1)
KINDS = st.sampled_from(RecordKind)


@st.composite
def frames(draw):
    """(frame bytes, its chain value, previous chain, kind, lsn, synced_lsn, payload)."""
    kind = draw(KINDS)
    lsn = draw(LSNS)
    synced = draw(st.integers(0, lsn)) if kind is RecordKind.EVENT else draw(LSNS)
    payload = draw(PAYLOADS)
    previous = draw(CHAINS)
    frame, chain = encode_frame(kind, lsn, synced, payload, previous)
    return frame, chain, previous, kind, lsn, synced, payload


def encode_log(payloads, seed=0, first_lsn=1):
    """Consecutive event frames chained from ``seed``: (bytes, list of (offset, frame))."""
    chain = seed
    parts = []
    offset = 0
    for number, payload in enumerate(payloads):
        lsn = first_lsn + number
        frame, chain = encode_frame(RecordKind.EVENT, lsn, lsn - 1, payload, chain)
        parts.append((offset, frame))
        offset += len(frame)
    return b"".join(frame for _offset, frame in parts), parts


def walk(data, seed=0):
    """Decode frames from offset 0, chained from ``seed``: (records, first problem)."""
    records = []
    offset, chain = 0, seed
    while offset < len(data):
        decoded = decode_frame(data, offset, chain)
        if isinstance(decoded, FrameProblem):
            return records, decoded
        records.append(decoded)
        offset, chain = offset + decoded.size, decoded.chain_crc
    return records, None


# -- Round trip and layout. ------------------------------------------------------------


@given(frames(), st.integers(0, 4))
def test_a_frame_decodes_to_what_was_encoded(frame_and_fields, words_before):
    """Goal: decode(encode(record)) gives back every field, at any aligned offset.

    Method: encode a frame with drawn kind, LSN, synced LSN, payload and previous
    chain value; place it after some aligned filler and decode it there with the
    previous chain value.
    """
    frame, chain, previous, kind, lsn, synced, payload = frame_and_fields
    offset = words_before * ALIGNMENT
    decoded = decode_frame(b"\xaa" * offset + frame, offset, previous)
    assert decoded == Record(kind, lsn, synced, payload, offset, chain, len(frame))


@given(st.integers(0, 300), st.integers(0, 4))
def test_every_frame_is_aligned_and_padded_with_zeros(length, words_before):
    """Goal: a frame's size is a multiple of 8, with the fewest zero padding bytes.

    Method: encode payloads of every small length; the frame is header + payload +
    padding_for(length) bytes, padding < 8, all zero; so consecutive frames all
    start at multiples of 8.
    """
    payload = bytes([0xFF]) * length
    frame, _chain = encode_frame(RecordKind.EVENT, 1, 0, payload, 0)
    padding = padding_for(length)
    assert len(frame) % ALIGNMENT == 0
    assert 0 <= padding < ALIGNMENT
    assert len(frame) == HEADER_BYTES + length + padding
    assert frame[HEADER_BYTES + length :] == bytes(padding)
    _data, parts = encode_log([payload] * (words_before + 2))
    assert all(offset % ALIGNMENT == 0 for offset, _frame in parts)


def test_the_length_sits_in_the_first_aligned_word():
    """Goal: length, kind, padding and magic share the frame's first 8-byte word.

    A sector (512 bytes, a multiple of 8) boundary never falls inside an aligned
    8-byte word, so a torn write keeps or loses the length whole, never half of it.

    Method: read the header layout: the length is bytes 0..3, the magic bytes 6..7;
    change the payload length and see only bytes 0..3 and 5 of the first word move.
    """
    assert HEADER.format == "<IBBHQQII"
    short, _ = encode_frame(RecordKind.EVENT, 9, 8, b"x" * 3, 0)
    long, _ = encode_frame(RecordKind.EVENT, 9, 8, b"x" * 260, 0)
    assert int.from_bytes(short[0:4], "little") == 3
    assert int.from_bytes(long[0:4], "little") == 260
    assert short[6:8] == long[6:8] == MAGIC.to_bytes(2, "little")
    assert SECTOR % ALIGNMENT == 0


@given(st.lists(PAYLOADS, min_size=1, max_size=12), st.data())
def test_a_torn_write_never_tears_a_length(payloads, data):
    """Goal: whatever sectors of a write survive, no frame is read with a wrong length.

    Method: lay out a log; pick a sector boundary; keep the bytes before it and
    replace everything after it with zeros, garbage, or nothing (cut).  Walking the
    frames, every frame decoded is one of the originals (same offset, same bytes),
    and the first problem, if any, is never an implausible length caused by a
    half-written length field: the first word of every frame is whole or gone.
    """
    log, parts = encode_log(payloads)
    boundary = data.draw(st.integers(0, len(log) // SECTOR + 1)) * SECTOR
    tail_kind = data.draw(st.sampled_from(["zero", "garbage", "cut"]))
    kept = log[:boundary]
    rest = max(0, len(log) - boundary)
    if tail_kind == "zero":
        torn = kept + bytes(rest)
    elif tail_kind == "garbage":
        torn = kept + data.draw(st.binary(min_size=rest, max_size=rest))
    else:
        torn = kept
    records, problem = walk(torn)
    originals = {offset: frame for offset, frame in parts}
    for record in records:
        assert originals[record.offset] == torn[record.offset : record.offset + record.size]
    for offset, frame in parts:
        # The first word of each frame lies wholly on one side of the boundary.
        assert not offset < boundary < offset + 8
        if offset + len(frame) <= boundary:
            assert any(record.offset == offset for record in records)
    if problem is not None and tail_kind != "garbage":
        assert "implausible length" not in problem.reason


# -- Single-byte damage. ---------------------------------------------------------------


@given(frames(), st.data())
@example(
    (*encode_frame(RecordKind.EVENT, 5, 4, b"abc", 77), 77, RecordKind.EVENT, 5, 4, b"abc"),
    None,
)
def test_every_single_byte_corruption_is_detected(frame_and_fields, data):
    """Goal: changing any one byte of a frame makes it invalid (FrameProblem).

    CRC-32C detects every error burst of up to 32 bits, the padding is checked to
    be zero, and the chain value is checked against the previous frame's.

    Method: for a drawn frame, and (on the hand-picked example) for *every* byte
    offset, XOR the byte with a non-zero value and decode with the right previous
    chain value; the frame sits in a larger buffer so a damaged length cannot be
    caught merely by running past the end of the data.
    """
    frame, _chain, previous, *_ = frame_and_fields
    trailer = bytes(256)
    if data is None:
        cases = [(offset, 0x01) for offset in range(len(frame))]
        cases += [(offset, 0xFF) for offset in range(len(frame))]
    else:
        cases = [
            (
                data.draw(st.integers(0, len(frame) - 1), label="offset"),
                data.draw(st.integers(1, 255), label="xor"),
            )
        ]
    for offset, xor in cases:
        damaged = bytearray(frame + trailer)
        damaged[offset] ^= xor
        decoded = decode_frame(bytes(damaged), 0, previous)
        assert isinstance(decoded, FrameProblem), (offset, xor)
        assert decoded.offset == 0


@given(frames(), CHAINS)
def test_a_frame_decoded_with_the_wrong_previous_chain_is_rejected(frame_and_fields, wrong):
    """Goal: a frame only decodes after the frame it was chained to.

    Method: decode with any previous chain value other than the right one: a
    FrameProblem that names the chain.  Decoding with None (no chain check, the
    evidence search) accepts it.
    """
    frame, _chain, previous, *_ = frame_and_fields
    if wrong == previous:
        wrong ^= 1
    decoded = decode_frame(frame, 0, wrong)
    assert isinstance(decoded, FrameProblem)
    assert "chain" in decoded.reason
    assert isinstance(decode_frame(frame, 0, None), Record)


# -- The chain across a sequence of frames. ---------------------------------------------


def _edit(parts, how, index, other):
    frames_ = [frame for _offset, frame in parts]
    if how == "delete":
        del frames_[index]
    elif how == "duplicate":
        frames_.insert(index, frames_[index])
    elif how == "reorder":
        frames_[index], frames_[index + 1] = frames_[index + 1], frames_[index]
    else:  # splice: a frame from another log with the same LSN
        frames_[index] = other[index][1]
    return b"".join(frames_)


@given(
    st.lists(PAYLOADS, min_size=2, max_size=10),
    st.sampled_from(["delete", "duplicate", "reorder", "splice"]),
    st.data(),
)
def test_deleted_duplicated_reordered_or_spliced_frames_break_the_chain(payloads, how, data):
    """Goal: the chain detects a log edited by whole intact frames.

    Method: encode a log; delete a frame (not the last: removing the last frame is
    a truncation, which only the synced_lsn evidence can judge), duplicate one,
    swap two neighbours, or replace one by the frame of the same LSN from a log
    with a different history (different first payload, hence different chain).
    Walking the edited log from the start fails at the edit: every record before
    it decodes, the problem's offset is where the edit starts, and it is a chain
    mismatch because each frame on its own is intact.
    """
    _log, parts = encode_log(payloads)
    index = data.draw(st.integers(0, len(payloads) - 2))
    other_payloads = [b"other:" + payloads[0], *payloads[1:]]
    _other_log, other = encode_log(other_payloads)
    edited = _edit(parts, how, index, other)
    edit_at = index + 1 if how == "duplicate" else index
    expected_offset = sum(len(frame) for _offset, frame in parts[:edit_at])
    if how == "splice" and index == 0:
        # The spliced first frame is valid from seed 0 (both logs start there);
        # the frame after it is not.
        edit_at, expected_offset = 1, len(other[0][1])
    records, problem = walk(edited)
    assert problem is not None, how
    assert problem.offset == expected_offset
    assert "chain" in problem.reason
    assert [record.lsn for record in records] == list(range(1, edit_at + 1))


@given(st.lists(PAYLOADS, min_size=1, max_size=5), CHAINS)
def test_a_log_does_not_continue_another_chain(payloads, seed):
    """Goal: a run of frames only decodes after the chain value it was written after.

    Method: encode with one seed (the chain value a previous segment or snapshot
    ended with) and decode from a different seed: the first frame is refused.
    """
    log, _parts = encode_log(payloads, seed=seed)
    records, problem = walk(log, seed=seed ^ 0x5A5A5A5A)
    assert records == []
    assert problem is not None and problem.offset == 0 and "chain" in problem.reason
    records, problem = walk(log, seed=seed)
    assert problem is None and len(records) == len(payloads)


# -- Damage, zeroes, and the evidence search. -------------------------------------------


@given(st.integers(0, 64))
def test_zeroed_space_is_never_a_frame(words):
    """Goal: preallocated (zero) space is rejected at once, by its magic.

    Method: decode zeros of various lengths (and zeros after a valid frame): a
    FrameProblem reporting bad magic (or too few bytes for a header); ``is_zero``
    recognises the zero tail and not the frame before it.
    """
    zeros = bytes(words * ALIGNMENT)
    decoded = decode_frame(zeros, 0, 0)
    assert isinstance(decoded, FrameProblem)
    if len(zeros) >= HEADER_BYTES:
        assert "magic" in decoded.reason
    frame, chain = encode_frame(RecordKind.EVENT, 1, 0, b"payload", 0)
    data = frame + zeros
    assert is_zero(data, len(frame))
    assert not is_zero(data, 0)
    if zeros:
        after = decode_frame(data, len(frame), chain)
        assert isinstance(after, FrameProblem)
    assert find_valid_frames_after(data, len(frame)) == []


@given(
    st.lists(PAYLOADS, min_size=2, max_size=10),
    st.data(),
)
def test_find_valid_frames_after_finds_the_frames_beyond_damage(payloads, data):
    """Goal: after damage at a frame, the evidence search finds every intact frame
    after it, with their synced LSNs, and nothing at or before the damage.

    Method: garble one whole frame (its bytes replaced, the size kept) in a log;
    search from its offset; the result is exactly the frames after it, in order.
    """
    log, parts = encode_log(payloads)
    index = data.draw(st.integers(0, len(parts) - 2))
    offset, frame = parts[index]
    garbage = data.draw(st.binary(min_size=len(frame), max_size=len(frame)))
    damaged = log[:offset] + garbage + log[offset + len(frame) :]
    found = find_valid_frames_after(damaged, offset)
    expected = [(o, len(f)) for o, f in parts[index + 1 :]]
    # A garbage frame that happens to contain a valid frame is possible only with
    # a valid CRC-32C of random bytes; the expected list is exact otherwise.
    assert [(record.offset, record.size) for record in found] == expected
    assert [record.synced_lsn for record in found] == [
        lsn - 1 for lsn in range(index + 2, len(parts) + 1)
    ]


def test_the_evidence_search_only_looks_at_aligned_positions():
    """Goal: a frame placed at an unaligned offset is not evidence.

    Method: write a valid frame 4 bytes off alignment after garbage; the search
    from offset 0 finds nothing, the same frame moved to an aligned offset is found.
    """
    frame, _ = encode_frame(RecordKind.EVENT, 3, 2, b"abc", 0)
    unaligned = b"\x01" * 12 + frame
    aligned = b"\x01" * 16 + frame
    assert find_valid_frames_after(unaligned, 0) == []
    assert [record.offset for record in find_valid_frames_after(aligned, 0)] == [16]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "bytes left"),
        (b"\x00" * 31, "bytes left"),
        (b"\x00" * 32, "magic"),
    ],
)
def test_too_short_or_blank_data_is_a_problem(data, reason):
    """Goal: fewer bytes than a header, or a blank header, is a FrameProblem saying so.

    Method: decode hand-picked short and zero inputs and check the reason.
    """
    decoded = decode_frame(data, 0, 0)
    assert isinstance(decoded, FrameProblem)
    assert reason in decoded.reason
