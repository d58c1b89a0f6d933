"""While a kernel serves, the objects alive when it booted are left out of Python's cyclic
garbage collector (`gc.freeze`).

A process that has loaded a model holds ~200k tracked objects (the modules of torch,
transformers and llmos, the model's): a full collection walks them all, ~100 ms on a 2-core
Zen 3, and a kernel's agents allocate enough to set one off now and then in the middle of
serving, while every agent's decode step waits for the interpreter (one cost a 16-agent run
2.3% of its time). Frozen, a full collection walks only what was made since. The last kernel
to stop thaws them, so garbage among them is collected then, as it would have been.

    with frozen_heap():
        ...  # serve
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_serving = 0  # kernels inside `frozen_heap` now, in any thread


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Freeze the heap as the first of the kernels serving at once starts; thaw it as the last
    one stops (kernels boot in several threads and event loops, and `gc.freeze` is global)."""
    global _serving
    with _lock:
        if _serving == 0:
            gc.freeze()
        _serving += 1
    try:
        yield
    finally:
        with _lock:
            _serving -= 1
            if _serving == 0:
                gc.unfreeze()
