"""A run of the embedded engine keeps the cyclic garbage collector quiet, and gives the process its collector back."""

from __future__ import annotations

import gc

import pytest

from floatbridge.embedded.runner import RUN_GC_THRESHOLDS, quiet_gc


def test_a_run_freezes_the_heap_it_starts_with_and_raises_the_thresholds_then_restores_both() -> None:
    before = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    with quiet_gc():
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == RUN_GC_THRESHOLDS
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_a_run_that_fails_still_gives_the_collector_back() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), quiet_gc():
        raise RuntimeError("boom")
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_a_heap_frozen_by_someone_else_stays_frozen() -> None:
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with quiet_gc():
            pass
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()


def test_cycles_made_during_a_run_are_still_collected() -> None:
    import weakref

    class Node:
        ref: Node | None = None

    with quiet_gc():
        a, b = Node(), Node()
        a.ref, b.ref = b, a
        alive = weakref.ref(a)
        del a, b
        gc.collect()
        assert alive() is None
