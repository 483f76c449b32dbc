"""Handing a finished trial's freed memory back, so that a long-lived worker does not grow.

Why: a sweep worker runs trial after trial in one process. When a trial ends its tensors are
freed, but glibc's allocator keeps the pages they occupied inside its heaps, fragmented among
the few blocks still in use, so the worker's resident size creeps up trial by trial while
nothing is alive; on a machine shared by several workers that creep, not any one trial, is what
runs it out of memory. ``malloc_trim`` returns those pages to the operating system. On a GPU the
caching allocator likewise keeps a wide trial's blocks reserved, out of reach of the other
workers sharing the card, until ``torch.cuda.empty_cache``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
from collections.abc import Callable

import torch


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or ``None`` where the C library has none (macOS, musl, Windows)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None)
    except OSError:
        return None


def release_freed_memory() -> bool:
    """Collect garbage, empty CUDA's cache if this process used CUDA, and return the freed heap
    pages to the operating system; ``False`` where the C library cannot (only the first two
    happen there)."""
    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
