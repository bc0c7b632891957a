"""Retry backoff: capped exponential growth with deterministic "equal jitter".

The prose (docs/semantics.md, Fail): with ``w = min(cap, base * 2**(n-1))`` for
the n-th attempt, ``backoff = w//2 + jitter_seed % (w - w//2 + 1)``.  The tests
recompute ``w`` with plain (unbounded) integer arithmetic, independently of the
model's shift-and-clamp.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from beaverq.model import backoff_ms, limits
from beaverq.model.errors import BrokenInvariant

ATTEMPTS = st.integers(1, limits.ATTEMPTS_MAX)
SEEDS = st.integers(0, 2**64 - 1)


@st.composite
def base_and_cap(draw: st.DrawFn) -> tuple[int, int]:
    cap = draw(st.integers(0, limits.BACKOFF_CAP_MS_MAX))
    return draw(st.integers(0, cap)), cap


def window_ms(attempts_used: int, base_ms: int, cap_ms: int) -> int:
    return min(cap_ms, base_ms * 2 ** (attempts_used - 1))


@given(ATTEMPTS, base_and_cap(), SEEDS)
@example(1, (0, 0), 0)
@example(limits.ATTEMPTS_MAX, (limits.BACKOFF_CAP_MS_MAX, limits.BACKOFF_CAP_MS_MAX), 2**64 - 1)
@example(64, (1, limits.BACKOFF_CAP_MS_MAX), 12345)  # past the model's 62-place shift
def test_the_delay_is_in_the_upper_half_of_the_window_and_matches_the_prose(n, bc, seed):
    """Goal: the delay lies in [w/2, w] (w never above the cap) and equals the
    prose's formula exactly.

    Method: compute w with unbounded integers and compare, over the whole ranges of
    attempts, base <= cap and 64-bit seeds.
    """
    base, cap = bc
    w = window_ms(n, base, cap)
    delay = backoff_ms(n, base, cap, seed)
    assert w // 2 <= delay <= w <= cap
    assert delay == w // 2 + seed % (w - w // 2 + 1)


@given(ATTEMPTS, base_and_cap(), SEEDS, st.lists(st.tuples(ATTEMPTS, SEEDS), max_size=5))
def test_the_delay_is_deterministic(n, bc, seed, others):
    """Goal: the same inputs always give the same delay (no hidden state, no clock).

    Method: compute the delay, then other delays in between, then the first again.
    """
    base, cap = bc
    first = backoff_ms(n, base, cap, seed)
    for other_n, other_seed in others:
        backoff_ms(other_n, base, cap, other_seed)
    assert backoff_ms(n, base, cap, seed) == first


@given(ATTEMPTS, st.integers(0, limits.BACKOFF_CAP_MS_MAX), SEEDS)
@example(limits.ATTEMPTS_MAX, limits.BACKOFF_CAP_MS_MAX, 2**64 - 1)
def test_the_delay_never_exceeds_the_cap(n, cap, seed):
    """Goal: however many attempts, the delay is at most the cap, even with base = cap.

    Method: take the largest base the cap allows (base = cap) and any seed.
    """
    assert backoff_ms(n, cap, cap, seed) <= cap
    assert backoff_ms(n, 0, cap, seed) == 0  # no base, no wait


@given(base_and_cap())
def test_the_window_grows_with_the_attempt_number(bc):
    """Goal: the window is monotone in n: a later retry never has a smaller range.

    Method: the smallest delay is at seed 0 (w//2), the largest at seed w - w//2
    (w); both are non-decreasing in n over all attempts.
    """
    base, cap = bc
    lows, highs = [], []
    for n in range(1, limits.ATTEMPTS_MAX + 1):
        w = window_ms(n, base, cap)
        lows.append(backoff_ms(n, base, cap, 0))
        highs.append(backoff_ms(n, base, cap, w - w // 2))
        assert (lows[-1], highs[-1]) == (w // 2, w)
    assert lows == sorted(lows)
    assert highs == sorted(highs)


@given(ATTEMPTS, st.integers(0, 2_000), st.integers(0, 2**64 - 1))
def test_the_jitter_seed_spreads_delays_over_the_whole_upper_half(n, base, offset):
    """Goal: jitter spreads retries: consecutive seeds give every value of [w/2, w].

    Method: for a window of at most a few thousand ms, take w - w//2 + 1
    consecutive seeds from any offset; the delays are exactly the integers of
    [w//2, w], each once.
    """
    cap = 2 * base + 1
    w = window_ms(n, base, cap)
    count = w - w // 2 + 1
    delays = [backoff_ms(n, base, cap, offset + i) for i in range(count)]
    assert sorted(delays) == list(range(w // 2, w + 1))


@pytest.mark.parametrize(
    "args",
    [
        (0, 1, 1, 0),  # attempts start at 1
        (limits.ATTEMPTS_MAX + 1, 1, 1, 0),
        (1, 2, 1, 0),  # base above cap
        (1, -1, 1, 0),
        (1, 0, limits.BACKOFF_CAP_MS_MAX + 1, 0),
    ],
)
def test_arguments_outside_the_contract_are_a_broken_invariant(args):
    """Goal: ``backoff_ms`` asserts its preconditions (decide validated them already).

    Method: call it with each precondition broken; it raises BrokenInvariant.
    """
    with pytest.raises(BrokenInvariant):
        backoff_ms(*args)
