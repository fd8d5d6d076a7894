"""The ingester's batch runs with the cyclic collector held off, and leaves it as it found it."""

from __future__ import annotations

import gc

import pytest

from k2_stream import gc_pause


def test_paused_holds_the_collector_off_and_restores_it_even_on_an_error() -> None:
    assert gc.isenabled()
    with gc_pause.paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), gc_pause.paused():
        raise RuntimeError("a failed batch")
    assert gc.isenabled()


def test_a_collector_already_off_stays_off() -> None:
    gc.disable()
    try:
        with gc_pause.paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_startup_objects_are_frozen_out_of_the_collector() -> None:
    kept = [[] for _ in range(1000)]  # tracked objects alive at "start-up"
    try:
        gc_pause.freeze_startup()
        assert gc.get_freeze_count() >= len(kept)
    finally:
        gc.unfreeze()
