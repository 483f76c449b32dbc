"""Handing freed memory back to the operating system, so that a long run or a sweep worker's
resident size follows what is alive.

Why: PyTorch frees a step's tensors, but glibc's allocator keeps the pages they occupied inside
its heap, fragmented among the blocks still in use: batches of varying shapes (every graph
batch) make a CPU run's resident size climb epoch after epoch to many times what is alive, and a
sweep worker's creep on from trial to trial. ``malloc_trim`` returns those pages. The pages the
next steps use again are then faulted back in, which costs time, so a run trims only once its
resident size has grown by :data:`TRIM_AFTER_GROWTH` since its last trim (:class:`HeapTrimmer`,
checked every :data:`TRIM_CHECK_STEPS` steps and after each epoch, so that one long epoch of a
large dataset is bounded too), and a sweep after each trial. On a GPU the caching allocator
likewise keeps a finished trial's blocks reserved, out of reach of the other workers sharing the
card, until ``torch.cuda.empty_cache``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import os
from collections.abc import Callable
from pathlib import Path

import torch

TRIM_AFTER_GROWTH = 2 << 30
"""Bytes of resident growth since a run's last trim that make it trim again. The epoch after a
trim faults back the pages it reuses, so a bound near one epoch's regrowth (the hybrid on
ogbg-molsider) makes a run trim every few epochs, not after each (``benchmarks/README.md``)."""

TRIM_CHECK_STEPS = 16
"""Training steps between a run's checks of its resident size. A check reads
``/proc/self/statm`` (microseconds), which would be a measurable share of a short GPU step if
taken at every step."""

_STATM = Path("/proc/self/statm")


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


def trim_host_heap() -> bool:
    """Return the host heap's free pages to the operating system; ``False`` where the C library
    cannot."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def resident_bytes() -> int | None:
    """This process's resident size (Linux), or ``None`` where ``/proc`` does not say."""
    try:
        return int(_STATM.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class HeapTrimmer:
    """Trims the host heap when the resident size has grown by ``growth`` bytes since the last
    trim (or since it was made)."""

    def __init__(self, growth: int = TRIM_AFTER_GROWTH) -> None:
        self.growth = growth
        self.baseline = resident_bytes()

    def __call__(self) -> bool:
        """Trim if grown; ``True`` if it trimmed."""
        resident = resident_bytes()
        if resident is None or self.baseline is None or resident - self.baseline < self.growth:
            return False
        trimmed = trim_host_heap()
        self.baseline = resident_bytes()
        return trimmed


def release_freed_memory() -> bool:
    """Between runs in one process: collect garbage, empty CUDA's cache if this process used
    CUDA, and :func:`trim_host_heap`; ``False`` where the last cannot."""
    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    return trim_host_heap()
