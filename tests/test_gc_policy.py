"""The runner's GC policy (impl/runtime/gc_policy.py) and the fact it rests on.

The policy freezes the recovered state out of the cyclic collector's reach and runs
that collector rarely.  That is only sound because the model's values form no
reference cycles: reference counting alone frees every state, job and event the
moment nothing uses it.  The property test checks exactly that, on random histories.
"""

from __future__ import annotations

import gc

from hypothesis import given
from strategies import command_lists, run

from beaverq.impl.runtime.gc_policy import (
    FULL_EVERY,
    MIDDLE_EVERY,
    YOUNG_THRESHOLD,
    release_tuning,
    tune_for_long_lived_state,
    tuning_holders,
)
from beaverq.impl.storage.codec import decode_checkpoint, encode_checkpoint
from beaverq.model import Command
from beaverq.model.checkpoint import checkpoint_of, restore


@given(command_lists(max_size=40))
def test_the_model_makes_no_reference_cycles(commands: list[Command]) -> None:
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        events, states = run(commands)
        # What a runner actually freezes is a state decoded from a snapshot: that too.
        decoded = restore(decode_checkpoint(encode_checkpoint(checkpoint_of(states[-1]))))
        assert decoded == states[-1]
        del events, states, decoded
        # Whatever the cyclic collector finds now, reference counting could not free:
        # it would leak once frozen.  There must be nothing.
        assert gc.collect() == 0
    finally:
        if was_enabled:
            gc.enable()


def test_tuning_freezes_what_is_alive_and_spaces_collections_until_released() -> None:
    before = gc.get_threshold()
    tune_for_long_lived_state()
    try:
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (YOUNG_THRESHOLD, MIDDLE_EVERY, FULL_EVERY)
    finally:
        release_tuning()
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before  # what was there, not a guess at defaults


def test_nested_tunings_restore_only_when_the_last_is_released() -> None:
    before = gc.get_threshold()
    gc.set_threshold(1234, 5, 6)  # a program's own setting
    try:
        tune_for_long_lived_state()
        tune_for_long_lived_state()  # a second runner in the same process
        release_tuning()  # the first stops: the second still runs tuned
        assert tuning_holders() == 1
        assert gc.get_threshold() == (YOUNG_THRESHOLD, MIDDLE_EVERY, FULL_EVERY)
        assert gc.get_freeze_count() > 0
        release_tuning()
        assert tuning_holders() == 0
        assert gc.get_threshold() == (1234, 5, 6)
        assert gc.get_freeze_count() == 0
    finally:
        gc.set_threshold(*before)


def test_a_runner_tunes_the_collector_while_it_runs_and_restores_it(tmp_path) -> None:
    from beaverq.impl.frontends.api import open_queue

    before = gc.get_threshold()
    queue = open_queue(str(tmp_path / "data"))
    queue.enqueue("noop")
    with queue.running(workers=1) as runner:
        assert gc.get_threshold() == (YOUNG_THRESHOLD, MIDDLE_EVERY, FULL_EVERY)
        assert gc.get_freeze_count() > 0
        assert runner.until_idle(30)
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before
