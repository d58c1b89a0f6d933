"""llmos.frozen_heap: while kernels serve, what was alive when the first booted is out of the
cyclic collector's reach; after the last stops, garbage among it is collected again."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

import llmos
from llmos import frozen_heap as heap
from llmos.frozen_heap import frozen_heap


class Cycle:
    def __init__(self) -> None:
        self.me = self


@pytest.fixture(autouse=True)
def no_kernel_serving(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """As in a fresh process: no kernel serving and the heap thawed. (A kernel of an earlier
    test in this process may still serve, a session's runtime: its freeze is put back after.)"""
    serving = heap._serving
    if serving:
        gc.unfreeze()
    monkeypatch.setattr(heap, "_serving", 0)
    yield
    if serving:
        gc.freeze()


def test_the_heap_stays_frozen_until_the_last_of_overlapping_kernels_stops():
    # Judged by what the collector reaches, not by gc.get_freeze_count(): frozen objects that
    # other threads free while this runs lower that count.
    cycle = Cycle()
    alive = weakref.ref(cycle)
    assert gc.get_freeze_count() == 0
    with frozen_heap():
        assert gc.get_freeze_count() > 0
        with frozen_heap():
            pass
        del cycle
        gc.collect()
        assert alive() is not None  # the outer kernel still serves: still frozen
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert alive() is None


def test_garbage_alive_at_boot_is_collected_once_the_kernel_stops():
    cycle = Cycle()
    alive = weakref.ref(cycle)
    with frozen_heap():
        del cycle
        gc.collect()
        assert alive() is not None  # frozen: the collector does not reach it
    gc.collect()
    assert alive() is None


async def test_a_booted_kernel_serves_with_the_heap_frozen_and_thaws_it_on_exit(llmos_home):
    async with llmos.boot(None, memory=None, durable=None) as kernel:
        assert gc.get_freeze_count() > 0
        assert kernel is not None
    assert gc.get_freeze_count() == 0
