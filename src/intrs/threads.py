"""The one pool of worker threads that the compiled kernels and the noise samplers share.

Its size follows torch's intra-op setting (``torch.set_num_threads``), so one knob sets every thread intrs
starts. Work handed to it releases the GIL (ctypes calls, numpy's random_raw), so the threads run in parallel.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import torch

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def thread_count() -> int:
    """The threads intrs runs on: torch's intra-op setting."""
    return max(1, torch.get_num_threads())


def parallel_map(function, items: list) -> list:
    """``function`` over ``items`` on the shared threads, results in order. Callers on several threads at
    once share the pool."""
    global _pool
    threads = min(thread_count(), len(items))
    if threads <= 1:
        return [function(item) for item in items]
    with _pool_lock:
        if _pool is None or _pool._max_workers < threads:
            _pool = ThreadPoolExecutor(threads, thread_name_prefix="intrs")
        pool = _pool
    return list(pool.map(function, items))
