"""This process's CPU threads: one pool that every part's CPU work shares.

numpy, numba (``nogil``) and pyarrow release the GIL in their loops, so row tiles run in
parallel on Python threads. One pool for all of it keeps the process to one thread per core
(or per CPU slot: a Ray worker holding one slot of a many-core node uses one).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

from threadpoolctl import ThreadpoolController

_BLAS = ThreadpoolController()
_PREFIX = "mega-taxonomy-cpu"
_POOL = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix=_PREFIX)


def set_cpu_threads(n: int) -> None:
    """Threads of this process's CPU work (default: one per core)."""
    global _POOL
    if n < 1:
        raise ValueError(f"need at least one thread, not {n}")
    previous, _POOL = _POOL, ThreadPoolExecutor(max_workers=n, thread_name_prefix=_PREFIX)
    previous.shutdown(wait=False)


def cpu_threads() -> int:
    """How many threads :func:`map_in_threads` spreads work over."""
    return _POOL._max_workers


def _in_pool() -> bool:
    """Whether the calling thread is one of the pool's: waiting for the pool from inside it could
    wait forever, so the callers below then run their items in turn, in that thread."""
    return threading.current_thread().name.startswith(_PREFIX)


def map_in_threads(work, items) -> list:
    """``[work(item) for item in items]``, the items spread over this process's CPU threads.

    Safe to call from several threads at once (a reader thread and the driver): their items
    share the pool. Called from one of the pool's own threads, it runs the items there, in turn."""
    if _in_pool():
        return [work(item) for item in items]
    return list(_POOL.map(work, items))


def parallel_map(work, items) -> None:
    """``work(item)`` for every item, in this process's CPU threads, each with a single-threaded
    BLAS (numpy releases the GIL in its products and most array work). The BLAS setting is the
    process's: call it from one thread at a time (the driver's compute), unlike
    :func:`map_in_threads`."""
    if _in_pool():
        for item in items:
            work(item)
        return
    with _BLAS.limit(limits=1, user_api="blas"):
        for _ in _POOL.map(work, items):
            pass
