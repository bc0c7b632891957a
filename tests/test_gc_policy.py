"""The runner's GC policy (impl/gc_policy.py) and the fact it rests on.

The policy freezes the recovered state out of the cyclic collector's reach and runs
that collector rarely.  That is only sound because the model's values form no
reference cycles: reference counting alone frees every state, job and event the
moment nothing uses it.  The property test checks exactly that, on random histories.
"""

from __future__ import annotations

import gc

from hypothesis import given
from strategies import command_lists, run

from beaverq.impl.gc_policy import (
    FULL_EVERY,
    INTERPRETER_DEFAULTS,
    MIDDLE_EVERY,
    YOUNG_THRESHOLD,
    restore_interpreter_defaults,
    tune_for_long_lived_state,
)
from beaverq.model import Command


@given(command_lists(max_size=40))
def test_the_model_makes_no_reference_cycles(commands: list[Command]) -> None:
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        events, states = run(commands)
        del events, states
        # Whatever the cyclic collector finds now, reference counting could not free:
        # it would leak once frozen.  There must be nothing.
        assert gc.collect() == 0
    finally:
        if was_enabled:
            gc.enable()


def test_tuning_freezes_what_is_alive_and_spaces_collections_and_can_be_undone() -> None:
    before = gc.get_threshold()
    try:
        tune_for_long_lived_state()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (YOUNG_THRESHOLD, MIDDLE_EVERY, FULL_EVERY)
    finally:
        restore_interpreter_defaults()
        gc.set_threshold(*before)
    assert gc.get_freeze_count() == 0


def test_restoring_gives_the_interpreter_its_own_thresholds_back() -> None:
    before = gc.get_threshold()
    try:
        gc.set_threshold(1, 2, 3)
        restore_interpreter_defaults()
        assert gc.get_threshold() == INTERPRETER_DEFAULTS
    finally:
        gc.set_threshold(*before)


def test_a_runner_tunes_the_collector_while_it_runs_and_restores_it(tmp_path) -> None:
    from beaverq.impl.api import open_queue

    before = gc.get_threshold()
    queue = open_queue(str(tmp_path / "data"))
    queue.enqueue("noop")
    with queue.running(workers=1) as runner:
        assert gc.get_threshold() == (YOUNG_THRESHOLD, MIDDLE_EVERY, FULL_EVERY)
        assert gc.get_freeze_count() > 0
        assert runner.until_idle(30)
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == INTERPRETER_DEFAULTS
    gc.set_threshold(*before)
