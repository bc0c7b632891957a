"""Retry delay: capped exponential backoff with deterministic "equal jitter".

The delay before retry n (n = attempts used so far, >= 1) grows as
``base * 2**(n-1)``, capped at ``cap``.  Jitter spreads retries of many jobs that
failed together over the upper half of that window, ``[d/2, d]``, so they do not
return in lockstep.  The randomness is the caller's: ``jitter_seed`` is any
integer, and the same inputs always give the same delay.
"""

from __future__ import annotations

from .errors import BrokenInvariant
from .limits import ATTEMPTS_MAX, BACKOFF_CAP_MS_MAX


def backoff_ms(attempts_used: int, base_ms: int, cap_ms: int, jitter_seed: int) -> int:
    if not 1 <= attempts_used <= ATTEMPTS_MAX:
        raise BrokenInvariant(f"backoff after {attempts_used} attempts (1..ATTEMPTS_MAX)")
    if not 0 <= base_ms <= cap_ms <= BACKOFF_CAP_MS_MAX:
        raise BrokenInvariant(f"backoff base {base_ms} ms, cap {cap_ms} ms: out of order")
    # Shift at most 62 places: beyond that the cap has long taken over.
    window_ms = min(cap_ms, base_ms << min(attempts_used - 1, 62))
    floor_ms = window_ms // 2
    delay_ms = floor_ms + jitter_seed % (window_ms - floor_ms + 1)
    if not floor_ms <= delay_ms <= window_ms <= cap_ms:
        raise BrokenInvariant(f"delay {delay_ms} ms outside [{floor_ms}, {window_ms}]")
    return delay_ms
